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

With track windows (`Windows`, ferjax/realtime/windows.py: the detectors with `detect_window`), a
face too small for the working width does not widen it: each working pass also detects, on a
small square around each such tracked face's predicted box (`CONTEXT` times its side, taken from
the full-resolution frame and scaled down to `window_size` pixels when larger: the face is then
the detector's `window_face`, by default `WINDOW_HEADROOM * reliable_face`), and merges what the
windows find with the working pass's faces. The working width is then the one that costs least
(`width_with_windows`): each face's own width, the floor and `WINDOW_FLOOR` are the candidates,
a pass costs its pixels and a window `window_cost` times its own (`WINDOW_COST`, or the detector's). The periodic
full scans stay, so new small faces are still found. A frame is retried at full width when a
face seen on the frame before, and too big for a window, is missing, or when no face is left of
those expected; a window that misses its face does not retry it (the window looked at the
face's pixels at full resolution already, where a retry would look again). Window misses
bring the next full scan forward instead, once the windows since the last one have cost as much
as a full scan would (a crowd of small faces: about every 9 frames with 7 YuNet windows of 128
px in 1920x1080), so that faces a full scan missed, moved out of their window or appeared after
it wait less; windows that keep finding their faces wait for the periodic scan.
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
WINDOW_FLOOR = 128    # the working width may go this low where windows hold the small faces (their
                      # boxes come from the windows): Haar's one-face 640x360 clips then leave the
                      # tracked face under minSize in the working pass, which stops spending time on it
CONTEXT = 3.0         # a track window's side over its face's side: room for the face to move
WINDOW_STEP = 32      # window sizes are multiples of this
WINDOW_HEADROOM = 2.0  # a window scaled down keeps its face this much above `reliable_face`: YuNet
                      # finds 85% of the faces of many_faces_1080p.mp4 (those it finds at full
                      # width) in 96-px windows (32 px faces), 93% in 128-px windows (43 px)
WINDOW_COST = 2.0     # a window costs about this many times its own pixels (a call's fixed
                      # overhead), unless the detector has its own `window_cost`: on frames of
                      # many_faces_1080p.mp4, a full pass took as long as 58 YuNet windows of
                      # 128 px (2.2 x their pixels), 71 MTCNN windows of 128 px (1.8 x)


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


def window_size(window_face: float, context: float = CONTEXT, step: int = WINDOW_STEP) -> int:
    """The side (pixels) track windows are detected at: a face of 1 / `context` of it is
    `window_face` pixels (a detector's `window_face`, else `WINDOW_HEADROOM * reliable_face`),
    rounded up to a multiple of `step`."""
    return int(step * math.ceil(context * window_face / step))


def width_with_windows(dets: Sequence[FaceBox], frame_shape: tuple[int, ...], full_width: int,
                       reliable_face: float, window: int, headroom: float = HEADROOM, floor: int = FLOOR,
                       step: int = STEP, window_cost: float = WINDOW_COST) -> int | None:
    """The working width that costs least when every face of `dets` too small at it gets a track
    window of `window` pixels: the candidates are `WINDOW_FLOOR`, the floor and each face's own
    `width_for_faces`;
    a pass costs its pixels, a window `window_cost` times its own (ties: the narrower). None
    without faces."""
    if not dets:
        return None
    h, w = frame_shape[:2]
    needs = [width_for_faces([d], w, full_width, reliable_face, headroom, floor, step) for d in dets]
    cost = lambda width: width * width * h / w + window_cost * window * window * sum(n > width for n in needs)
    return min(sorted({min(WINDOW_FLOOR, full_width), min(floor, full_width), *needs}), key=cost)


class Windows(Protocol):
    """Track windows for `AdaptiveWidth` (ferjax/realtime/windows.py `TrackWindows`)."""

    size: int

    def detect(self, frame: np.ndarray, found: list, small_side: float) -> tuple[list, int]:
        """`found` (a working pass's faces, frame pixels) merged with what windows around the
        tracked faces smaller than `small_side` (frame pixels) find; and how many windows ran."""
        ...

    def lost(self, dets: list) -> tuple[int, int]:
        """Faces seen on the last frame, without a window on this one, missing from `dets`; and
        the windows whose face is missing from `dets`."""
        ...

    def update(self, dets: list) -> None:
        """The faces kept on this frame (the tracks the next windows follow)."""
        ...

    def reset(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class WidthStep:
    """What the width policy did on one frame: the widths detected at, in order, and why."""

    widths: tuple[int, ...]
    full_scan: bool = False   # a full-width pass ran (periodic or retry)
    retried: bool = False     # the working pass lost a face and full width ran after it
    windows: int = 0          # track windows detected on (with the working pass)

    @property
    def working(self) -> int | None:
        """The working width this frame ran at; None on a periodic full scan."""
        return None if self.full_scan and not self.retried else self.widths[0]


def summarize(steps: list[WidthStep]) -> dict:
    """A stream's widths: mean working width (frames that ran a working pass), full-width scans
    (periodic and retries), retries and track windows detected on."""
    working = [s.working for s in steps if s.working is not None]
    return {"working_width_mean": round(sum(working) / len(working), 1) if working else 0.0,
            "full_scans": sum(s.full_scan for s in steps), "retries": sum(s.retried for s in steps),
            "windows": sum(s.windows for s in steps)}


class AdaptiveWidth:
    """Per-stream working width for `detect_width="auto"` (see the module docstring).

    `detect(frame, detect_at, full_width)` runs `detect_at(frame, width)` once or twice (and,
    with `windows`, the track windows beside the working pass) and returns the detections kept and
    a `WidthStep`.
    """

    def __init__(self, reliable_face: float, rescan_every: int = RESCAN_EVERY,
                 default_width: int = DEFAULT_WIDTH, floor: int = FLOOR, step: int = STEP,
                 headroom: float = HEADROOM, windows: Windows | None = None,
                 window_cost: float = WINDOW_COST):
        if not (isinstance(rescan_every, int) and rescan_every > 0):
            raise ValueError(f"rescan_every={rescan_every!r}: expected an integer > 0 (frames)")
        if not reliable_face > 0:
            raise ValueError(f"reliable_face={reliable_face!r}: expected a face side > 0 (pixels)")
        self.reliable_face, self.rescan_every = float(reliable_face), rescan_every
        self.default_width, self.floor, self.step, self.headroom = default_width, floor, step, headroom
        self.windows, self.window_cost = windows, float(window_cost)
        self.width: int | None = None    # the working width; None until the first full scan
        self.expected = 0                # faces the stream holds, from the last full scan
        self.since_full = 0              # frames since the last full-width pass
        self.window_spent = 0.0          # what the windows since then cost (pixels, `window_cost` x theirs)
        self.window_misses = 0           # and how many of them missed their face
        if windows is not None:
            windows.reset()

    def _needed(self, dets: list[FaceBox], frame: np.ndarray, full: int) -> int | None:
        if self.windows is not None:
            return width_with_windows(dets, frame.shape, full, self.reliable_face, self.windows.size,
                                      self.headroom, self.floor, self.step, self.window_cost)
        return width_for_faces(dets, frame.shape[1], full, self.reliable_face, self.headroom, self.floor,
                               self.step)

    def _learn(self, dets: list[FaceBox], frame: np.ndarray, full: int) -> None:
        """After a full-width pass: the working width for its faces and the count to expect."""
        self.width = self._needed(dets, frame, full) or min(self.default_width, full)
        self.expected, self.since_full, self.window_spent, self.window_misses = len(dets), 0, 0.0, 0

    def _kept(self, dets: list[FaceBox]) -> list[FaceBox]:
        if self.windows is not None:
            self.windows.update(dets)
        return dets

    def detect(self, frame: np.ndarray, detect_at: Callable[[np.ndarray, int], list[FaceBox]],
               full_width: int) -> tuple[list[FaceBox], WidthStep]:
        """Detections of `frame` (in frame pixels) by `detect_at`, at the working width or full width
        (and in the track windows)."""
        self.since_full += 1
        h, w = frame.shape[:2]
        windows_did_a_scan = self.window_misses > 0 and self.window_spent >= full_width ** 2 * h / w
        if self.width is None or self.since_full >= self.rescan_every or windows_did_a_scan:
            dets = detect_at(frame, full_width)
            self._learn(dets, frame, full_width)
            return self._kept(dets), WidthStep((full_width,), full_scan=True)
        width = min(self.width, full_width)
        dets = detect_at(frame, width)
        windows = 0
        if self.windows is not None and width < full_width:  # faces below this side get a window
            small = self.headroom * self.reliable_face * frame.shape[1] / width
            dets, windows = self.windows.detect(frame, dets, small)
        if windows:
            self.window_spent += windows * self.window_cost * self.windows.size ** 2
            lost, missed = self.windows.lost(dets)
            self.window_misses += missed
            # a face too big for a window missing, or no face left of those expected
            lost = lost > 0 or (not dets and self.expected > 0)
        else:
            lost = len(dets) < self.expected
        if width >= full_width:  # the working pass is a full pass: learn from it as from one
            self._learn(dets, frame, full_width)
        elif lost:  # a face lost at the working width: retry this frame
            dets = detect_at(frame, full_width)
            self._learn(dets, frame, full_width)
            return self._kept(dets), WidthStep((width, full_width), full_scan=True, retried=True, windows=windows)
        else:
            self.expected = max(self.expected, len(dets))
            if self.windows is None:  # without windows a face come too close widens the width at once
                self.width = max(width, self._needed(dets, frame, full_width) or width)
        return self._kept(dets), WidthStep((width,), windows=windows)
