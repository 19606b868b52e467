"""Timing helpers shared by the benchmarks (no flags, so any command can import them): the CPU's
model name and side-by-side medians of interleaved calls."""
from __future__ import annotations

import platform
import statistics
import time
from typing import Callable


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def interleaved(calls: dict[str, Callable[[], object]], repeats: int, iters: int) -> dict[str, float]:
    """Median seconds per call of each contender; rounds alternate between contenders, so slow
    phases of a noisy machine hit all of them alike."""
    import jax

    for fn in calls.values():
        jax.block_until_ready(fn())
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(max(3, repeats)):
        for name, fn in calls.items():
            start = time.perf_counter()
            for _ in range(iters):
                out = fn()
            jax.block_until_ready(out)
            times[name].append((time.perf_counter() - start) / iters)
    return {k: statistics.median(v) for k, v in times.items()}
