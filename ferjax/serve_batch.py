"""Micro-batching and memory budgets for the HTTP service.

Two lanes, each a worker thread with its own detector (OpenCV detectors are not thread-safe): a
fast lane for camera frames and small photos, and a heavy lane, at a lower thread priority, for
photos detected at high resolution. A worker takes every request waiting in its queue (up to
`max_batch`), detects faces in each decoded image, then classifies all their faces in one batched
call. With one client nothing waits; under load, requests that arrive while a batch runs form the
next batch, and a big photo never holds up a camera frame.

`Budget` bounds what requests hold at once (decoded pixels, body bytes): a request reserves its
share before it allocates it and gives it back when done; one that does not fit waits a short,
bounded time and is then refused with `Busy` (the service answers 503 with Retry-After).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import queue
import threading

import numpy as np

from ferjax.analyzer import Analyzer
from ferjax.realtime.faces import Face

_log = logging.getLogger(__name__)


class Busy(RuntimeError):
    """The queue or a budget is full: the caller should answer 503 and let the client retry."""


class Budget:
    """A number of units (decoded pixels, body bytes) that the requests in flight share.

    `acquire(n)` takes `n` units at once when they are free; otherwise it waits up to `wait_s`
    (waiters are served first-fit in arrival order, so small requests pass a large one that
    does not fit yet) and then raises `Busy`. The last `reserve` units are for light requests
    (at most `light` units) only: large ones can never crowd out camera frames. Every successful `acquire` needs one `release` of
    the same amount. Used from one asyncio event loop (the server's); `release_soon` may be
    called from any thread.
    """

    def __init__(self, capacity: int, wait_s: float, unit: str = "pixels", reserve: int = 0, light: int = 0):
        if capacity <= 0 or wait_s < 0 or not 0 <= reserve < capacity:
            raise ValueError(f"budget of {capacity} {unit} (reserve {reserve}) with a wait of {wait_s} s: "
                             f"expected a positive capacity, a reserve below it and a wait >= 0")
        self.capacity, self.wait_s, self.unit = int(capacity), float(wait_s), unit
        self.reserve, self.light = int(reserve), int(light)
        self.in_use = self.peak = self.waited = self.refused = self.granted = 0
        self._waiters: list[tuple[int, asyncio.Future]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def limit_for(self, n: int) -> int:
        """What a request of `n` units may fill up to: the whole capacity for light requests
        (n <= `light`), all but `reserve` for the others, so light ones always find room."""
        return self.capacity if n <= self.light else self.capacity - self.reserve

    def stats(self) -> dict:
        return {"limit": self.capacity, "reserve": self.reserve, "in_flight": self.in_use, "peak": self.peak, "granted": self.granted,
                "waited": self.waited, "refused": self.refused}

    def _take(self, n: int) -> None:
        self.in_use += n
        self.granted += n
        self.peak = max(self.peak, self.in_use)

    async def acquire(self, n: int) -> None:
        """Takes `n` units, waiting at most `wait_s` for them; raises `Busy` if they never fit."""
        self._loop = asyncio.get_running_loop()
        if n > self.limit_for(n):
            self.refused += 1
            raise Busy(f"needs {n} {self.unit}, more than the whole budget of {self.limit_for(n)} for it")
        if self.in_use + n <= self.limit_for(n):
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
            if self.in_use + need <= self.limit_for(need):
                self._waiters.remove(entry)
                self._take(need)
                fut.set_result(None)

    def release_soon(self, n: int) -> None:
        """`release` from any thread (e.g. when a worker finished with the frame)."""
        if self._loop is None or self._loop.is_closed():
            self.in_use -= n
        else:
            self._loop.call_soon_threadsafe(self.release, n)


FAST_LANE_PIXELS = 640 * 480   # photos detected on more pixels than this go to the heavy lane
LIGHT_FRAME_PIXELS = 2_100_000  # frames larger than a 1080p camera frame go to the heavy lane in any mode


def lower_thread_priority(niceness: int = 10) -> None:
    """Lowers the calling thread's CPU priority (Linux: per-thread nice); elsewhere does nothing.
    Heavy work (big photos) then yields the CPU to the fast lane's camera frames."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (AttributeError, OSError):
        pass


@dataclasses.dataclass
class BatchStats:
    requests: int = 0
    batches: int = 0
    max_batch: int = 0
    refused: int = 0   # submits refused because the queue was full


class _Lane:
    """One queue and one worker thread over one Analyzer (its detector is used by this thread only)."""

    def __init__(self, name: str, analyzer: Analyzer, max_batch: int, max_queue: int,
                 lock: threading.Lock | None, niceness: int = 0):
        self.name, self.analyzer, self.max_batch, self.lock = name, analyzer, max_batch, lock
        self.queue: queue.Queue = queue.Queue(max_queue)
        self.stats = BatchStats()
        self._niceness = niceness
        self.thread = threading.Thread(target=self._run, name=f"ferjax-{name}-lane", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        if self._niceness:
            lower_thread_priority(self._niceness)
        while True:
            item = self.queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    nxt = self.queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self.queue.put(None)  # stop after this batch
                    break
                batch.append(nxt)
            batch = [entry for entry in batch if entry[2].set_running_or_notify_cancel()]  # caller gone: drop
            if batch:
                self._process(batch)

    def _analyze(self, frames: list[np.ndarray], video: list[bool]) -> list[list[Face]]:
        if self.lock is None:
            return self.analyzer.analyze_frames(frames, video)
        with self.lock:  # one detector shared by both lanes
            return self.analyzer.analyze_frames(frames, video)

    def _process(self, batch: list[tuple[np.ndarray, bool, concurrent.futures.Future]]) -> None:
        self.stats.batches += 1
        self.stats.requests += len(batch)
        self.stats.max_batch = max(self.stats.max_batch, len(batch))
        try:
            results = self._analyze([f for f, _, _ in batch], [v for _, v, _ in batch])
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


class Batcher:
    """Runs `Analyzer.analyze_frames` over batches of concurrently submitted frames, in two lanes.

    The fast lane takes frames up to `LIGHT_FRAME_PIXELS` that are video frames or photos detected
    on at most `FAST_LANE_PIXELS`; the heavy lane takes the rest (a 16 Mpx photo costs ~0.5-1 s of
    YuNet at 2048 px), at a lower thread priority, so that camera frames never wait behind them. Each lane has its own detector
    (`Analyzer.replica`); an Analyzer built on a detector object shares one, under a lock.
    """

    def __init__(self, analyzer: Analyzer, max_batch: int = 16, max_queue: int = 64,
                 fast_lane_pixels: int = FAST_LANE_PIXELS):
        self.analyzer, self.max_batch, self.fast_lane_pixels = analyzer, max_batch, fast_lane_pixels
        try:
            heavy, lock = analyzer.replica(), None
        except (TypeError, AttributeError):
            heavy, lock = analyzer, threading.Lock()
        self.lanes = {"fast": _Lane("fast", analyzer, max_batch, max_queue, lock),
                      "heavy": _Lane("heavy", heavy, max_batch, max_queue, lock, niceness=10)}

    def lane_of(self, frame: np.ndarray, video: bool) -> str:
        """'fast' for frames up to 1080p detected on few pixels (camera frames, small photos);
        'heavy' for the rest (scaling a 16 Mpx frame down costs ~0.1 s even in video mode)."""
        h, w = frame.shape[:2]
        if h * w > LIGHT_FRAME_PIXELS:
            return "heavy"
        return "fast" if video or self.analyzer.detection_pixels(frame) <= self.fast_lane_pixels else "heavy"

    def submit(self, frame: np.ndarray, video: bool = False) -> concurrent.futures.Future:
        """A future of the frame's faces (`video`: the detector's fast path, see
        `Analyzer.analyze_frames`); raises `Busy` when too many requests wait in its lane."""
        lane = self.lanes[self.lane_of(frame, video)]
        fut: concurrent.futures.Future = concurrent.futures.Future()
        try:
            lane.queue.put_nowait((frame, video, fut))
        except queue.Full:
            lane.stats.refused += 1
            raise Busy(f"{lane.queue.maxsize} requests are already waiting in the {lane.name} lane") from None
        return fut

    @property
    def stats(self) -> BatchStats:
        """Counters summed over the lanes (max_batch: the largest batch of either)."""
        parts = [lane.stats for lane in self.lanes.values()]
        return BatchStats(sum(p.requests for p in parts), sum(p.batches for p in parts),
                          max(p.max_batch for p in parts), sum(p.refused for p in parts))

    def lane_stats(self) -> dict:
        return {name: {**dataclasses.asdict(lane.stats), "queued": lane.queue.qsize()}
                for name, lane in self.lanes.items()}

    @property
    def queued(self) -> int:
        """Frames waiting for the workers."""
        return sum(lane.queue.qsize() for lane in self.lanes.values())

    def close(self) -> None:
        for lane in self.lanes.values():
            lane.queue.put(None)
        for lane in self.lanes.values():
            lane.thread.join(timeout=10)
