"""Track windows: between full-width scans, each tracked face too small for the working width is
detected on a small square around its predicted box, cut from the full-resolution frame
(`ferjax.realtime.width.AdaptiveWidth` with `windows=TrackWindows(...)`).

A window is `CONTEXT` times the face's side (at least the window size: never scaled up), centred
on the track's box moved on by its velocity, shifted to lie inside the frame, and detected on
scaled down to `size` x `size` pixels (one input size, so the OpenCV detectors set up once).
Detections cut by a window edge inside the frame are dropped (the face beside it has its own
window, or the working pass); the rest are merged with the working pass's faces by IoU, the
window's box first (it saw the face at more pixels).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ferjax.realtime.detect import Detection, box_iou
from ferjax.realtime.tracker import IoUTracker
from ferjax.realtime.width import CONTEXT

Window = tuple[int, int, int, int]
# (frame, window, size, expected face side in frame pixels) -> detections in frame pixels
DetectWindow = Callable[[np.ndarray, Window, int, float], list[Detection]]
MERGE_IOU = 0.3     # a window's face and a working pass's face overlapping more are one face


def square_window(box: np.ndarray, side: float, shape: tuple[int, ...]) -> Window:
    """The square of `side` pixels (at most the frame's shorter side) centred on `box`, shifted to
    lie inside a frame of `shape` (h, w, ...); integer pixels."""
    h, w = shape[:2]
    side = int(min(round(side), h, w))
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    x1 = int(min(max(round(cx - side / 2), 0), w - side))
    y1 = int(min(max(round(cy - side / 2), 0), h - side))
    return x1, y1, x1 + side, y1 + side


def cut_by_edge(box: Sequence[float], window: Window, shape: tuple[int, ...], tol: float) -> bool:
    """Whether `box` reaches within `tol` pixels of an edge of `window` that is inside the frame."""
    h, w = shape[:2]
    x1, y1, x2, y2 = window
    return ((x1 > 0 and box[0] <= x1 + tol) or (y1 > 0 and box[1] <= y1 + tol)
            or (x2 < w and box[2] >= x2 - tol) or (y2 < h and box[3] >= y2 - tol))


def merge(windowed: Sequence[Detection], found: Sequence[Detection], iou: float = MERGE_IOU) -> list[Detection]:
    """Window detections (best score first, overlaps dropped), then the working pass's faces that
    overlap none of them; best score first."""
    kept: list[Detection] = []
    for d in sorted(windowed, key=lambda d: -d.score):
        if not kept or box_iou([d.box], [k.box for k in kept]).max() <= iou:
            kept.append(d)
    if kept and found:
        overlap = box_iou([d.box for d in found], [k.box for k in kept]).max(axis=1)
        found = [d for d, o in zip(found, overlap) if o <= iou]
    return sorted([*kept, *found], key=lambda d: -d.score)


class TrackWindows:
    """The track windows of one stream (`ferjax.realtime.width.Windows`).

    `detect_window(frame, window, size, face)`: a detector's `detect_window` (detections in frame
    pixels). Tracks are the faces kept on earlier frames (`update`), followed by an `IoUTracker`
    of their own: a face missed on up to `max_missed` frames keeps its window (faces near a
    detector's limit come and go from frame to frame: on many_faces_1080p.mp4, 5 rather than 2
    kept 744 faces of the 778 YuNet finds at full width on every frame, against 725, and Haar
    432 against 414).
    """

    def __init__(self, detect_window: DetectWindow, size: int, context: float = CONTEXT, max_missed: int = 5):
        self.detect_window, self.size, self.context = detect_window, int(size), float(context)
        self.tracker = IoUTracker(max_missed=max_missed)
        self.reset()

    def reset(self) -> None:
        self.tracker.reset()
        self._windowed: set[int] = set()  # the tracks given a window on the current frame

    def update(self, dets: Sequence[Detection]) -> None:
        boxes = np.array([d.box for d in dets], np.float64).reshape(-1, 4)
        self.tracker.update(boxes, np.zeros((len(boxes), 0)))
        self._windowed = set()

    def plan(self, shape: tuple[int, ...], small_side: float) -> list[tuple[int, Window, float]]:
        """(track id, window, face side) for each tracked face whose predicted side (the larger of
        width and height, frame pixels) is under `small_side`."""
        out = []
        for tid, t in self.tracker.tracks.items():
            box = t.predicted()
            side = float(max(box[2] - box[0], box[3] - box[1]))
            if 0 < side < small_side:
                out.append((tid, square_window(box, max(self.context * side, self.size), shape), side))
        return out

    def detect(self, frame: np.ndarray, found: list[Detection], small_side: float) -> tuple[list[Detection], int]:
        """`found` merged with the faces the windows find; and how many windows ran."""
        planned = self.plan(frame.shape, small_side)
        self._windowed = {tid for tid, _, _ in planned}
        windowed = []
        for _, window, side in planned:
            tol = max(1.0, (window[2] - window[0]) / self.size)  # one pixel of the copy detected on
            windowed += [d for d in self.detect_window(frame, window, self.size, side)
                         if not cut_by_edge(d.box, window, frame.shape, tol)]
        return (merge(windowed, found) if planned else found), len(planned)

    def lost(self, dets: Sequence[Detection]) -> tuple[int, int]:
        """Faces seen on the last frame, without a window on this one, that `dets` do not continue;
        and tracked faces whose window `dets` do not continue (window misses)."""
        matched = self.tracker.matched(np.array([d.box for d in dets]))
        seen = {tid for tid, t in self.tracker.tracks.items() if t.missed == 0} - self._windowed
        return len(seen - matched), len(self._windowed - matched)
