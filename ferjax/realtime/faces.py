"""A recognised face (`Face`: detection, label, probabilities, track) and how it is drawn: the
types every front-end returns (ferjax.analyze, the CLI, the service, the video loop)."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import cv2
import numpy as np

from ferjax.realtime.detect import Detection

COLOURS = {"angry": (0, 0, 255), "disgust": (0, 128, 0), "fear": (128, 0, 128), "happy": (0, 215, 255),
           "sad": (255, 0, 0), "surprise": (255, 255, 0), "neutral": (200, 200, 200)}


@dataclasses.dataclass(frozen=True)
class Face:
    """One recognised face: the detection, the top label and the probability of every class."""

    detection: Detection
    label: str
    probs: dict[str, float]
    track: int | None = None

    @property
    def box(self) -> tuple[float, float, float, float]:
        return self.detection.box

    @property
    def score(self) -> float:
        return self.detection.score

    def to_json(self) -> dict:
        """{"box", "score", ["landmarks"], "label", "probs", ["track"]}: plain JSON types."""
        out = {**self.detection.to_json(), "label": self.label,
               "probs": {c: round(float(v), 4) for c, v in self.probs.items()}}
        if self.track is not None:
            out["track"] = self.track
        return out


def make_faces(dets: Sequence[Detection], probs: np.ndarray, class_names: Sequence[str],
               track_ids: Sequence[int] | None = None) -> list[Face]:
    """`Face` records from detections and their [N, C] class probabilities."""
    return [Face(d, class_names[int(np.argmax(p))], dict(zip(class_names, map(float, p))),
                 None if track_ids is None else int(track_ids[i])) for i, (d, p) in enumerate(zip(dets, probs))]


def draw_faces(frame: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
    """A copy of a BGR frame with each face's box, label, top probability and landmarks."""
    out = frame.copy()
    for f in faces:
        colour = COLOURS.get(f.label, (0, 255, 0))
        x1, y1, x2, y2 = (int(round(v)) for v in f.box)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, 2)
        text = f"{f.label} {f.probs[f.label]:.2f}"
        cv2.putText(out, text, (x1, max(12, y1 - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
        if f.detection.landmarks is not None:
            for x, y in f.detection.landmarks:
                cv2.circle(out, (int(x), int(y)), 2, (0, 255, 0), -1)
    return out
