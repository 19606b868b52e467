"""Micro-batching for the HTTP service: concurrent requests share one detect + one jitted predict.

One worker thread owns the Analyzer (OpenCV detectors are not thread-safe). It takes every
request waiting in the queue (up to `max_batch`), detects faces in each decoded image, then
classifies all their faces in one batched call. With one client nothing waits; under load,
requests that arrive while a batch runs form the next batch.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import queue
import threading

import numpy as np

from ferjax.analyzer import Analyzer
from ferjax.realtime.pipeline import Face

_log = logging.getLogger(__name__)


class Busy(RuntimeError):
    """The queue is full: the caller should answer 503 and let the client retry."""


@dataclasses.dataclass
class BatchStats:
    requests: int = 0
    batches: int = 0
    max_batch: int = 0


class Batcher:
    """Runs `Analyzer.analyze_frames` over batches of concurrently submitted frames."""

    def __init__(self, analyzer: Analyzer, max_batch: int = 16, max_queue: int = 256):
        self.analyzer, self.max_batch = analyzer, max_batch
        self._queue: queue.Queue = queue.Queue(max_queue)
        self.stats = BatchStats()
        self._thread = threading.Thread(target=self._run, name="ferjax-batcher", daemon=True)
        self._thread.start()

    def submit(self, frame: np.ndarray, video: bool = False) -> concurrent.futures.Future:
        """A future of the frame's faces (`video`: the detector's fast path, see
        `Analyzer.analyze_frames`); raises `Busy` when too many requests wait."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        try:
            self._queue.put_nowait((frame, video, fut))
        except queue.Full:
            raise Busy(f"{self._queue.maxsize} requests are already waiting") from None
        return fut

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(nxt)
            self._process(batch)

    def _process(self, batch: list[tuple[np.ndarray, bool, concurrent.futures.Future]]) -> None:
        self.stats.batches += 1
        self.stats.requests += len(batch)
        self.stats.max_batch = max(self.stats.max_batch, len(batch))
        try:
            results: list[list[Face]] = self.analyzer.analyze_frames([f for f, _, _ in batch],
                                                                     [v for _, v, _ in batch])
        except Exception as e:  # one bad frame must not fail the others: retry one by one
            if len(batch) == 1:
                _log.warning("analysis failed: %s", e)
                batch[0][2].set_exception(e)
                return
            for one in batch:
                self._process([one])
            return
        for (_, _, fut), faces in zip(batch, results):
            fut.set_result(faces)
