"""Pretrained weights shipped with ferjax (or registered by plugins), loaded without training.

A pretrained entry (registry kind "pretrained model") is a function returning a `WeightsSpec`.
Weights are a flax msgpack file; beside it a JSON model card says data, protocol, accuracy and
the command that reproduces them.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import flax.serialization
import importlib_resources
import jax
import jax.numpy as jnp

from ferjax import __version__
from ferjax.atomic import atomic_write_bytes, file_sha256
from ferjax.nn import init_variables as _init_compiled
from ferjax.registry import CLASSIFIERS, PRETRAINED

DEFAULT = "fer2013_distilled_adjusted"
# The model of the video paths (the realtime experiment, `ferjax analyze` on videos); photos keep
# DEFAULT. Another model takes this place only when `python -m ferjax.model_bench` finds it within
# issue 42's rule (cost per face, accuracy, disgust recall) beside DEFAULT.
VIDEO_DEFAULT = DEFAULT


@dataclasses.dataclass(frozen=True)
class WeightsSpec:
    classifier: str
    weights: Path
    card: Path
    kwargs: dict = dataclasses.field(default_factory=dict)


def packaged(filename: str) -> Path:
    """Path of a file shipped inside the ``ferjax.pretrained`` package."""
    return Path(str(importlib_resources.files("ferjax.pretrained").joinpath(filename)))


def init_variables(model: Any, seed: int = 0) -> Any:
    """Variables of `model` for a [1,48,48,1] input (the template that weights are read into)."""
    return _init_compiled(model, jax.random.key(seed), jnp.zeros((1, 48, 48, 1), jnp.float32))


def weights_sha256(name: str | None = None) -> str:
    """sha256 of registered pretrained model `name`'s weights file: what its outputs depend on
    (a retrained or replaced file keeps its name). Computed once per file version
    (`ferjax.atomic.file_sha256`)."""
    name = name or DEFAULT
    spec: WeightsSpec = PRETRAINED.get(name)()
    if not spec.weights.is_file():
        raise FileNotFoundError(f"weights of pretrained model {name!r} not found at {spec.weights}")
    return file_sha256(spec.weights)


def load(name: str | None = None) -> tuple[Any, Any, dict]:
    """(model, variables, card) for a registered pretrained model."""
    name = name or DEFAULT
    spec: WeightsSpec = PRETRAINED.get(name)()
    if not spec.weights.is_file():
        raise FileNotFoundError(
            f"weights of pretrained model {name!r} not found at {spec.weights}; train them with the "
            f"command in its model card or reinstall ferjax")
    model = CLASSIFIERS.create(spec.classifier, **spec.kwargs)
    # An abstract template (shapes only): random initialisation would cost seconds to minutes.
    template = jax.eval_shape(lambda: init_variables(model))
    variables = jax.device_put(flax.serialization.from_bytes(template, spec.weights.read_bytes()))
    card = json.loads(spec.card.read_text()) if spec.card.is_file() else {}
    card.setdefault("name", name)
    return model, variables, card


WEIGHTS_SUFFIX = ".msgpack"


def card_path(weights_path: str | os.PathLike) -> Path:
    """The model card's path beside `weights_path` (same name, .json). Weights must end in
    `.msgpack`: any other name could make the card's path the weights' own (`x.json`)."""
    weights_path = Path(weights_path)
    if weights_path.suffix != WEIGHTS_SUFFIX or weights_path.name == WEIGHTS_SUFFIX:
        raise ValueError(f"export path {weights_path}: expected a file name ending in {WEIGHTS_SUFFIX} "
                         f"(its model card is written beside it as {weights_path.with_suffix('.json').name})")
    return weights_path.with_suffix(".json")


def export(variables: Any, card: dict, weights_path: str | os.PathLike) -> None:
    """Writes `variables` (params + batch_stats) and the card beside them, each atomically;
    refuses a weights path other than `*.msgpack` (see `card_path`) before writing anything. The
    card records the ferjax version that wrote it (`ferjax_version`)."""
    card_file = card_path(weights_path)
    card = {**card, "ferjax_version": card.get("ferjax_version", __version__)}
    atomic_write_bytes(Path(weights_path), flax.serialization.to_bytes(jax.device_get(variables)))
    atomic_write_bytes(card_file, json.dumps(card, indent=2).encode())
