"""Temporal smoothing: a greedy tracker (IoU, then centre distance for faces missed a while) that
keeps an EMA of each face's probabilities."""
from __future__ import annotations

import dataclasses

import numpy as np

from ferjax.realtime.detect import box_iou


@dataclasses.dataclass
class _Track:
    box: np.ndarray
    probs: np.ndarray
    missed: int = 0
    velocity: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(2))  # centre px per frame

    def predicted(self) -> np.ndarray:
        """The box moved on by its velocity over the frames since it was last seen."""
        return self.box + np.tile(self.velocity * (self.missed + 1), 2)


def _centres(b: np.ndarray) -> np.ndarray:
    return (b[:, :2] + b[:, 2:]) / 2


def _sides(b: np.ndarray) -> np.ndarray:
    return np.sqrt(np.clip(b[:, 2] - b[:, 0], 1e-6, None) * np.clip(b[:, 3] - b[:, 1], 1e-6, None))


def _greedy(score: np.ndarray, valid: np.ndarray, assigned: list, used: set) -> None:
    """Assigns rows to columns best score first among `valid` pairs, skipping taken ones."""
    for flat in np.argsort(-score, axis=None):
        r, c = divmod(int(flat), score.shape[1])
        if valid[r, c] and assigned[r] is None and c not in used:
            assigned[r] = c
            used.add(c)


class IoUTracker:
    """Matches boxes to tracks of the previous frames, greedily, best first: by IoU with each
    track's box moved on by its velocity (>= `iou_threshold`), then the boxes and tracks left by
    centre distance (at most `centre_gate` track sides, sides within `max_scale` of each other), so
    a face missed for a few frames or moving fast keeps its id. A matched track's probabilities
    become `alpha * new + (1 - alpha) * old`; unmatched boxes start tracks; tracks unseen for more
    than `max_missed` frames are dropped."""

    def __init__(self, iou_threshold: float = 0.3, alpha: float = 0.4, max_missed: int = 15,
                 centre_gate: float = 1.0, max_scale: float = 1.5):
        self.iou_threshold, self.alpha, self.max_missed = iou_threshold, alpha, max_missed
        self.centre_gate, self.max_scale = centre_gate, max_scale
        self.reset()

    def reset(self) -> None:
        """Forgets every track (a new stream); ids start again at 0."""
        self.tracks: dict[int, _Track] = {}
        self._next = 0

    @property
    def created(self) -> int:
        """Track identities created since the last reset."""
        return self._next

    def matched(self, boxes: np.ndarray) -> set[int]:
        """The ids of the tracks that `boxes` [N,4] would continue (as `update` matches them; no
        change to the tracks)."""
        ids = list(self.tracks)
        return {ids[c] for c in self._match(np.asarray(boxes, np.float64).reshape(-1, 4), ids) if c is not None}

    def _match(self, boxes: np.ndarray, ids: list[int]) -> list[int | None]:
        """Column of `ids` matched to each box, or None."""
        assigned: list[int | None] = [None] * len(boxes)
        if not ids or not len(boxes):
            return assigned
        pred = np.stack([self.tracks[i].predicted() for i in ids])
        used: set[int] = set()
        ious = box_iou(boxes, pred)
        _greedy(ious, ious >= self.iou_threshold, assigned, used)
        sb, st = _sides(boxes), _sides(pred)
        dist = np.linalg.norm(_centres(boxes)[:, None] - _centres(pred)[None], axis=-1) / st[None]
        scale = np.maximum(sb[:, None] / st[None], st[None] / sb[:, None])
        _greedy(-dist, (dist <= self.centre_gate) & (scale <= self.max_scale), assigned, used)
        return assigned

    def update(self, boxes: np.ndarray, probs: np.ndarray) -> tuple[list[int], np.ndarray]:
        """boxes [N,4], probs [N,C] -> (track id per box, smoothed probs [N,C])."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        probs = np.asarray(probs, np.float64)
        ids = list(self.tracks)
        out, result = np.empty_like(probs), []
        for r, col in enumerate(self._match(boxes, ids)):
            if col is None:
                tid = self._next
                self._next += 1
                self.tracks[tid] = _Track(boxes[r], probs[r].copy())
            else:
                tid, t = ids[col], self.tracks[ids[col]]
                step = (_centres(boxes[r:r + 1]) - _centres(t.box[None]))[0] / (t.missed + 1)
                t.velocity = step if not t.velocity.any() else 0.5 * (t.velocity + step)
                t.box, t.missed = boxes[r], 0
                t.probs = self.alpha * probs[r] + (1 - self.alpha) * t.probs
            out[r] = self.tracks[tid].probs
            result.append(tid)
        for tid in [t for t in self.tracks if t not in result]:
            self.tracks[tid].missed += 1
            if self.tracks[tid].missed > self.max_missed:
                del self.tracks[tid]
        return [int(t) for t in result], out
