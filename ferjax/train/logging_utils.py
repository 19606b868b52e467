"""Metric sinks: a JSON-lines file and TensorBoard event files (tensorboardX, no TensorFlow)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from tensorboardX import SummaryWriter


class MetricWriter:
    def __init__(self, workdir: str | Path):
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(workdir / "metrics.jsonl", "a", buffering=1)
        self._tb = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, step: int, metrics: dict) -> None:
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        self._jsonl.write(json.dumps({"step": int(step), "time": time.time(), **scalars}) + "\n")
        for k, v in scalars.items():
            self._tb.add_scalar(k, v, int(step))

    def close(self) -> None:
        self._jsonl.close()
        self._tb.close()
