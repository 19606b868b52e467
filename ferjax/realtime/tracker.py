"""Temporal smoothing: a greedy IoU tracker that keeps an EMA of each face's probabilities."""
from __future__ import annotations

import dataclasses

import numpy as np

from ferjax.realtime.detect import box_iou


@dataclasses.dataclass
class _Track:
    box: np.ndarray
    probs: np.ndarray
    missed: int = 0


class IoUTracker:
    """Matches boxes to tracks of the previous frames by IoU (greedy, best first); a matched
    track's probabilities become `alpha * new + (1 - alpha) * old`; unmatched boxes start tracks;
    tracks unseen for more than `max_missed` frames are dropped."""

    def __init__(self, iou_threshold: float = 0.3, alpha: float = 0.4, max_missed: int = 5):
        self.iou_threshold, self.alpha, self.max_missed = iou_threshold, alpha, max_missed
        self.reset()

    def reset(self) -> None:
        """Forgets every track (a new stream); ids start again at 0."""
        self.tracks: dict[int, _Track] = {}
        self._next = 0

    @property
    def created(self) -> int:
        """Track identities created since the last reset."""
        return self._next

    def update(self, boxes: np.ndarray, probs: np.ndarray) -> tuple[list[int], np.ndarray]:
        """boxes [N,4], probs [N,C] -> (track id per box, smoothed probs [N,C])."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        probs = np.asarray(probs, np.float64)
        ids = list(self.tracks)
        ious = box_iou(boxes, np.stack([self.tracks[i].box for i in ids])) if ids and len(boxes) else \
            np.zeros((len(boxes), len(ids)))
        assigned: list[int | None] = [None] * len(boxes)
        used: set[int] = set()
        for flat in np.argsort(-ious, axis=None):
            r, c = divmod(int(flat), max(len(ids), 1))
            if ious[r, c] < self.iou_threshold:
                break
            if assigned[r] is None and c not in used:
                assigned[r], _ = ids[c], used.add(c)
        out = np.empty_like(probs)
        for r, tid in enumerate(assigned):
            if tid is None:
                tid = assigned[r] = self._next
                self._next += 1
                self.tracks[tid] = _Track(boxes[r], probs[r].copy())
            else:
                t = self.tracks[tid]
                t.box, t.missed = boxes[r], 0
                t.probs = self.alpha * probs[r] + (1 - self.alpha) * t.probs
            out[r] = self.tracks[tid].probs
        for tid in [t for t in self.tracks if t not in assigned]:
            self.tracks[tid].missed += 1
            if self.tracks[tid].missed > self.max_missed:
                del self.tracks[tid]
        return [int(t) for t in assigned], out
