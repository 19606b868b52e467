"""Fuzzing support shared by the fuzz tests: byte mutations of real seed files, a fixed-seed quick run
for the default suite and a long random run under `-m slow`, and a cap on the memory a parser may take.

The only acceptable outcomes of a fuzzed parser are a result or the module's own error type: any
other exception fails the test (Hypothesis shrinks it and prints the input), a crash kills the test
process, and resident memory above `MEMORY_CAP_MB` over the run's start fails it.
"""
from __future__ import annotations

import os
import threading
from typing import Any, Callable, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

MEMORY_CAP_MB = 512  # resident memory a fuzzed parser may add to the test process
QUICK, LONG = "quick", "long"
# Every fuzz test runs once per mode: quick (fixed seed, default suite), long (random, -m slow).
MODES = [QUICK, pytest.param(LONG, marks=pytest.mark.slow)]
_INTERESTING = (b"\x00", b"\xff", b"\x7f\xff\xff\xff", b"\xff\xff\xff\xff", b"\x80\x00\x00\x00",
                b"\x00\x00\x00\x80", b"\xff" * 8, b"\x00" * 8, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class MemoryWatch:
    """Samples this process's resident memory every 5 ms; `grown_mb` is the peak over the start."""

    def __init__(self) -> None:
        self.start = _rss_mb()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_mb())

    def __enter__(self) -> "MemoryWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())

    @property
    def grown_mb(self) -> float:
        return self.peak - self.start


@st.composite
def mutated(draw: st.DrawFn, seeds: Sequence[bytes], max_ops: int = 6) -> bytes:
    """A seed file changed by a few byte-level operations: flips, overwrites with boundary
    values, truncation, insertion, duplication of a range; or, sometimes, random bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=512))
    data = bytearray(draw(st.sampled_from(list(seeds))))
    for _ in range(draw(st.integers(1, max_ops))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        op = draw(st.integers(0, 5))
        if op == 0:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == 1:
            value = draw(st.sampled_from(_INTERESTING))
            data[at:at + len(value)] = value
        elif op == 2:
            del data[at:]
        elif op == 3:
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == 4:
            end = min(len(data), at + draw(st.integers(1, 64)))
            data[at:at] = data[at:end]
        else:
            data[at] = draw(st.integers(0, 255))
    return bytes(data)


def fuzz(parse: Callable[[Any], Any], inputs: st.SearchStrategy, allowed: tuple[type[BaseException], ...],
         mode: str, examples: int) -> MemoryWatch:
    """Feeds `examples` inputs (10x as many in the long mode) to `parse`; each must return or raise
    one of `allowed`. Fails when the process grew by more than MEMORY_CAP_MB; returns the watch."""
    long = mode == LONG

    @settings(max_examples=examples * (10 if long else 1), derandomize=not long, deadline=None,
              database=None, suppress_health_check=list(HealthCheck), print_blob=True)
    @given(inputs)
    def one(data: Any) -> None:
        try:
            parse(data)
        except allowed:
            pass

    with MemoryWatch() as watch:
        one()
    assert watch.grown_mb < MEMORY_CAP_MB, (
        f"fuzzing grew resident memory by {watch.grown_mb:.0f} MB (cap {MEMORY_CAP_MB} MB)")
    return watch
