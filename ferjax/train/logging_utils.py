"""Metric sinks: a JSON-lines file and TensorBoard event files (tensorboardX, no TensorFlow)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import jax
from tensorboardX import SummaryWriter


class MetricWriter:
    """Writes on process 0 only: under jax.distributed every process runs the loop, and two
    writers of one workdir would duplicate lines and race to create the TensorBoard folder."""

    def __init__(self, workdir: str | Path):
        self._enabled = jax.process_index() == 0
        if not self._enabled:
            return
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(workdir / "metrics.jsonl", "a", buffering=1)
        self._tb = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, step: int, metrics: dict) -> None:
        if not self._enabled:
            return
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        self._jsonl.write(json.dumps({"step": int(step), "time": time.time(), **scalars}) + "\n")
        for k, v in scalars.items():
            self._tb.add_scalar(k, v, int(step))

    def close(self) -> None:
        if not self._enabled:
            return
        self._jsonl.close()
        self._tb.close()
