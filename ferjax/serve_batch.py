"""Micro-batching and memory budgets for the HTTP service.

One worker thread owns the Analyzer (OpenCV detectors are not thread-safe). It takes every
request waiting in the queue (up to `max_batch`), detects faces in each decoded image, then
classifies all their faces in one batched call. With one client nothing waits; under load,
requests that arrive while a batch runs form the next batch.

`Budget` bounds what requests hold at once (decoded pixels, body bytes): a request reserves its
share before it allocates it and gives it back when done; one that does not fit waits a short,
bounded time and is then refused with `Busy` (the service answers 503 with Retry-After).
"""
from __future__ import annotations

import asyncio
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
    """The queue or a budget is full: the caller should answer 503 and let the client retry."""


class Budget:
    """A number of units (decoded pixels, body bytes) that the requests in flight share.

    `acquire(n)` takes `n` units at once when they are free; otherwise it waits up to `wait_s`
    (waiters are served first-fit in arrival order, so small requests pass a large one that
    does not fit yet) and then raises `Busy`. Every successful `acquire` needs one `release` of
    the same amount. Used from one asyncio event loop (the server's); `release_soon` may be
    called from any thread.
    """

    def __init__(self, capacity: int, wait_s: float, unit: str = "pixels"):
        if capacity <= 0 or wait_s < 0:
            raise ValueError(f"budget of {capacity} {unit} with a wait of {wait_s} s: expected a positive "
                             f"capacity and a wait >= 0")
        self.capacity, self.wait_s, self.unit = int(capacity), float(wait_s), unit
        self.in_use = self.peak = self.waited = self.refused = self.granted = 0
        self._waiters: list[tuple[int, asyncio.Future]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def stats(self) -> dict:
        return {"limit": self.capacity, "in_flight": self.in_use, "peak": self.peak, "granted": self.granted,
                "waited": self.waited, "refused": self.refused}

    def _take(self, n: int) -> None:
        self.in_use += n
        self.granted += n
        self.peak = max(self.peak, self.in_use)

    async def acquire(self, n: int) -> None:
        """Takes `n` units, waiting at most `wait_s` for them; raises `Busy` if they never fit."""
        self._loop = asyncio.get_running_loop()
        if n > self.capacity:
            self.refused += 1
            raise Busy(f"needs {n} {self.unit}, more than the whole budget of {self.capacity}")
        if self.in_use + n <= self.capacity:
            self._take(n)
            return
        fut = self._loop.create_future()
        entry = (n, fut)
        self._waiters.append(entry)
        self.waited += 1
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.wait_s)
        except BaseException as e:  # timed out or cancelled: leave the line, or hand back a late grant
            if fut.done() and not fut.cancelled():
                self.release(n)
            else:
                fut.cancel()
                self._waiters.remove(entry)
            if isinstance(e, asyncio.TimeoutError):
                self.refused += 1
                raise Busy(f"{self.in_use} of {self.capacity} {self.unit} in flight; waited "
                           f"{self.wait_s:g} s for {n}") from None
            raise

    def release(self, n: int) -> None:
        """Gives back `n` units and admits the waiters that now fit (event-loop thread only)."""
        self.in_use -= n
        for entry in list(self._waiters):
            need, fut = entry
            if self.in_use + need <= self.capacity:
                self._waiters.remove(entry)
                self._take(need)
                fut.set_result(None)

    def release_soon(self, n: int) -> None:
        """`release` from any thread (e.g. when a worker finished with the frame)."""
        if self._loop is None or self._loop.is_closed():
            self.in_use -= n
        else:
            self._loop.call_soon_threadsafe(self.release, n)


@dataclasses.dataclass
class BatchStats:
    requests: int = 0
    batches: int = 0
    max_batch: int = 0
    refused: int = 0   # submits refused because the queue was full


class Batcher:
    """Runs `Analyzer.analyze_frames` over batches of concurrently submitted frames."""

    def __init__(self, analyzer: Analyzer, max_batch: int = 16, max_queue: int = 64):
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
            self.stats.refused += 1
            raise Busy(f"{self._queue.maxsize} requests are already waiting") from None
        return fut

    @property
    def queued(self) -> int:
        """Frames waiting for the worker."""
        return self._queue.qsize()

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
            batch = self._start(batch)
            if batch:
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

    def _start(self, batch: list) -> list:
        """The entries whose caller still waits (a cancelled future is dropped, never set)."""
        return [item for item in batch if item[2].set_running_or_notify_cancel()]
