"""The working width a video detector runs at: fixed (`detect_width=320`) or adaptive per stream
(`detect_width="auto"`, `AdaptiveWidth`).

The adaptive policy, per stream:

- the first frame, and every `rescan_every`-th frame after the last full-width pass, is detected
  at the full width (the frame's, capped by the Analyzer's `max_side`), so new small faces are found;
- the other frames are detected at the working width: the smallest multiple of `STEP` (at least
  `FLOOR`; the full width where that is more than `FULL_ABOVE` of it) at which the smallest face
  of the last full scan is `HEADROOM` times the detector's `reliable_face` (the smallest face side,
  in pixels of the image it detects on, that it finds reliably); `DEFAULT_WIDTH` while the last
  full scan found none. A working pass whose smallest face comes closer than that widens it at
  once; it narrows only at full scans;
- a working pass that finds fewer faces than the stream expects is retried at full width on the
  same frame, so frames are never lost to the narrow width; the full scans set the expected count,
  so a face that left costs one retry.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Protocol, Sequence

import numpy as np


class FaceBox(Protocol):
    """What the policy reads of a `ferjax.realtime.detect.Detection` (which imports this module)."""

    @property
    def width(self) -> float: ...

    @property
    def height(self) -> float: ...

AUTO = "auto"
DEFAULT_WIDTH = 320   # the working width with no face found yet, and of a detector called alone
FLOOR = 160           # narrower copies lose box precision faster than they save time
STEP = 32             # working widths are multiples of this (few distinct sizes to set up)
HEADROOM = 1.25       # the smallest face stays this much above `reliable_face` between full scans
RESCAN_EVERY = 30     # frames between full-width scans (about a second of video)
FULL_ABOVE = 0.8      # a working width above this share of the full width runs at full width: it
                      # would save under 36% of the pixels, and a retry costs a full pass on top


def parse_detect_width(value: int | str | None, field: str = "detect_width") -> int | str | None:
    """`value` as a detector holds it: None (full size), "auto", or an integer > 0 (a digit string
    from the command line counts). Raises ValueError naming `field` otherwise."""
    if value is None or value == AUTO:
        return value
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise ValueError(f"{field}={value!r}: expected 'auto', an integer > 0 (pixels) or None (full size)")


def fixed_width(detect_width: int | str | None) -> int | None:
    """The width a detector runs at outside a stream: its number, `DEFAULT_WIDTH` for "auto",
    None for full size."""
    return DEFAULT_WIDTH if detect_width == AUTO else detect_width


def capped_width(shape: tuple[int, ...], max_side: int | None) -> int:
    """The width of a frame of `shape` (h, w, ...) scaled so that its longer side is at most
    `max_side` (None: no cap)."""
    h, w = shape[:2]
    if not max_side or max(h, w) <= max_side:
        return w
    return max(1, round(w * max_side / max(h, w)))


def width_for_faces(dets: Sequence[FaceBox], frame_width: int, full_width: int, reliable_face: float,
                    headroom: float = HEADROOM, floor: int = FLOOR, step: int = STEP) -> int | None:
    """The smallest multiple of `step` (>= `floor`) at which the smallest of `dets` (boxes in
    frame pixels) is `headroom * reliable_face` pixels, or `full_width` where that is more than
    `FULL_ABOVE` of it; None without faces."""
    if not dets:
        return None
    side = min(min(d.width, d.height) for d in dets)
    need = max(floor, step * math.ceil(frame_width * headroom * reliable_face / max(side, 1e-6) / step))
    return full_width if need > FULL_ABOVE * full_width else int(need)


@dataclasses.dataclass(frozen=True)
class WidthStep:
    """What the width policy did on one frame: the widths detected at, in order, and why."""

    widths: tuple[int, ...]
    full_scan: bool = False   # a full-width pass ran (periodic or retry)
    retried: bool = False     # the working pass found too few faces and full width ran after it

    @property
    def working(self) -> int | None:
        """The working width this frame ran at; None on a periodic full scan."""
        return None if self.full_scan and not self.retried else self.widths[0]


def summarize(steps: list[WidthStep]) -> dict:
    """A stream's widths: mean working width (frames that ran a working pass), full-width scans
    (periodic and retries) and retries."""
    working = [s.working for s in steps if s.working is not None]
    return {"working_width_mean": round(sum(working) / len(working), 1) if working else 0.0,
            "full_scans": sum(s.full_scan for s in steps), "retries": sum(s.retried for s in steps)}


class AdaptiveWidth:
    """Per-stream working width for `detect_width="auto"` (see the module docstring).

    `detect(frame, detect_at, full_width)` runs `detect_at(frame, width)` once or twice and
    returns the detections kept and a `WidthStep`.
    """

    def __init__(self, reliable_face: float, rescan_every: int = RESCAN_EVERY,
                 default_width: int = DEFAULT_WIDTH, floor: int = FLOOR, step: int = STEP,
                 headroom: float = HEADROOM):
        if not (isinstance(rescan_every, int) and rescan_every > 0):
            raise ValueError(f"rescan_every={rescan_every!r}: expected an integer > 0 (frames)")
        if not reliable_face > 0:
            raise ValueError(f"reliable_face={reliable_face!r}: expected a face side > 0 (pixels)")
        self.reliable_face, self.rescan_every = float(reliable_face), rescan_every
        self.default_width, self.floor, self.step, self.headroom = default_width, floor, step, headroom
        self.width: int | None = None    # the working width; None until the first full scan
        self.expected = 0                # faces the stream holds, from the last full scan
        self.since_full = 0              # frames since the last full-width pass

    def _needed(self, dets: list[FaceBox], frame: np.ndarray, full: int) -> int | None:
        return width_for_faces(dets, frame.shape[1], full, self.reliable_face, self.headroom, self.floor,
                               self.step)

    def _learn(self, dets: list[FaceBox], frame: np.ndarray, full: int) -> None:
        """After a full-width pass: the working width for its faces and the count to expect."""
        self.width = self._needed(dets, frame, full) or min(self.default_width, full)
        self.expected, self.since_full = len(dets), 0

    def detect(self, frame: np.ndarray, detect_at: Callable[[np.ndarray, int], list[FaceBox]],
               full_width: int) -> tuple[list[FaceBox], WidthStep]:
        """Detections of `frame` (in frame pixels) by `detect_at`, at the working width or full width."""
        self.since_full += 1
        if self.width is None or self.since_full >= self.rescan_every:
            dets = detect_at(frame, full_width)
            self._learn(dets, frame, full_width)
            return dets, WidthStep((full_width,), full_scan=True)
        width = min(self.width, full_width)
        dets = detect_at(frame, width)
        if width >= full_width:  # the working pass is a full pass: learn from it as from one
            self._learn(dets, frame, full_width)
        elif len(dets) < self.expected:  # a face lost at the working width: retry this frame
            dets = detect_at(frame, full_width)
            self._learn(dets, frame, full_width)
            return dets, WidthStep((width, full_width), full_scan=True, retried=True)
        else:
            self.expected = len(dets)
            self.width = max(width, self._needed(dets, frame, full_width) or width)
        return dets, WidthStep((width,))
