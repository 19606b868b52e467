"""Host input pipeline: deterministic, random-access batches (grain) with background prefetch.

The order of batch `k` depends only on (seed, k), so a resumed run reads exactly the batches the
interrupted run would have read.
"""
from __future__ import annotations

from typing import Iterator

import grain
import numpy as np


class TrainBatches:
    """Shuffled, drop-remainder batches of in-memory arrays; `iterate(start_step)` resumes."""

    def __init__(self, arrays: dict[str, np.ndarray], batch_size: int, seed: int,
                 prefetch: int = 4, threads: int = 1):
        self.arrays = arrays
        n = len(next(iter(arrays.values())))
        if n < batch_size:
            raise ValueError(f"training split has {n} examples, fewer than batch_size={batch_size}")
        self.steps_per_epoch = n // batch_size
        self.batch_size = batch_size
        epoch = (grain.MapDataset.range(n).shuffle(seed=seed)
                 .batch(batch_size, drop_remainder=True))
        self._dataset = epoch.repeat(None).map(self._gather)
        self._read_options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch)

    def _gather(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v[idx] for k, v in self.arrays.items()}

    def iterate(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Batches from global step `start_step` on, forever (epochs reshuffle with new seeds)."""
        ds = self._dataset.slice(slice(start_step, None))
        return iter(ds.to_iter_dataset(self._read_options))


def eval_batches(arrays: dict[str, np.ndarray], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Fixed-size batches covering every example once; the last is padded and carries a mask."""
    n = len(next(iter(arrays.values())))
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        batch = {k: v[idx] for k, v in arrays.items()}
        pad = batch_size - len(idx)
        mask = np.ones(batch_size, bool)
        if pad:
            batch = {k: np.concatenate([v, np.repeat(v[-1:], pad, 0)]) for k, v in batch.items()}
            mask[len(idx):] = False
        batch["mask"] = mask
        yield batch
