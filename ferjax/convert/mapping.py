"""The one checked step from converted arrays to a Flax variable tree.

Every converter produces a flat {"collection/module/.../leaf": array} dict already in Flax layout;
`assign` compares it with the model's own variable template (names and shapes from
`jax.eval_shape` of `init`) and fails on a missing or extra name or a shape mismatch, naming it.
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.traverse_util
import numpy as np


class ConversionError(ValueError):
    """A weight file does not fit the target model (names, shapes, format or truncation)."""


def flat_shapes(template: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """{"params/conv1_1/kernel": shape, ...} of a (possibly abstract) Flax variable tree."""
    flat = flax.traverse_util.flatten_dict(dict(template), sep="/")
    return {k: tuple(v.shape) for k, v in flat.items()}


def assign(template: Mapping[str, Any], arrays: Mapping[str, np.ndarray], source: str) -> dict:
    """Checks `arrays` against `template` name by name and shape by shape; returns the nested tree.

    Arrays are cast to float32 (the dtype ferjax keeps parameters in).
    """
    expected = flat_shapes(template)
    missing = sorted(set(expected) - set(arrays))
    extra = sorted(set(arrays) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing layer weights {missing}")
        if extra:
            parts.append(f"weights the model has no place for {extra}")
        raise ConversionError(f"{source}: {'; '.join(parts)}")
    out = {}
    for name, shape in expected.items():
        a = np.asarray(arrays[name])
        if a.shape != shape:
            raise ConversionError(f"{source}: {name}: shape {a.shape} in the file, the model expects {shape}")
        if not np.issubdtype(a.dtype, np.floating):
            raise ConversionError(f"{source}: {name}: dtype {a.dtype}, expected floating point")
        out[name] = np.ascontiguousarray(a, np.float32)
    return flax.traverse_util.unflatten_dict(out, sep="/")
