"""Jitted batch prediction with fixed batch buckets, so that no compilation happens mid-stream."""
from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np

from ferjax.images import face_batch

_log = logging.getLogger(__name__)
DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32)


class Predictor:
    """Classifies [N,48,48] or [N,48,48,1] grey faces (0..255) into class probabilities.

    The batch is padded up to the nearest bucket size; batches larger than the largest bucket
    are split. `warmup()` compiles every bucket ahead of time and returns the seconds it took.
    """

    def __init__(self, model: nn.Module, variables: Any, buckets: Sequence[int] = DEFAULT_BUCKETS,
                 class_names: Sequence[str] | None = None, name: str = "classifier"):
        self.model = model
        self.name = name
        self.variables = jax.device_put(variables)
        self.buckets = tuple(sorted(set(int(b) for b in buckets)))
        self.class_names = tuple(class_names) if class_names else None
        self._apply = jax.jit(lambda v, x: jax.nn.softmax(model.apply(v, x, train=False), axis=-1))

    @property
    def backend(self) -> str:
        """What classifies, for benchmark rows: `jax-` and JAX's platform (cpu, gpu)."""
        return f"jax-{jax.default_backend()}"

    def warmup(self) -> float:
        start = time.perf_counter()
        for b in self.buckets:
            self._apply(self.variables, np.zeros((b, 48, 48, 1), np.float32)).block_until_ready()
        return time.perf_counter() - start

    def _bucket(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    def __call__(self, faces: np.ndarray) -> np.ndarray:
        faces = face_batch(faces)
        n = faces.shape[0]
        if n == 0:
            return np.zeros((0, 7), np.float32)
        out = []
        biggest = self.buckets[-1]
        for start in range(0, n, biggest):
            chunk = faces[start:start + biggest]
            b = self._bucket(len(chunk))
            padded = np.zeros((b, 48, 48, 1), np.float32)
            padded[: len(chunk)] = chunk
            out.append(np.asarray(self._apply(self.variables, padded))[: len(chunk)])
        return np.concatenate(out, 0)


def load_predictor(name: str | None = None, buckets: Sequence[int] = DEFAULT_BUCKETS) -> Predictor:
    """A Predictor for a registered pretrained model (default: the model shipped with ferjax)."""
    from ferjax import pretrained

    model, variables, card = pretrained.load(name)
    return Predictor(model, variables, buckets, card.get("classes"), name=card["name"])
