"""The detector protocol: a callable from a BGR frame to a list of `Detection`s in frame pixels."""
from __future__ import annotations

import dataclasses
import logging
from typing import Protocol

import cv2
import numpy as np

from ferjax.realtime.width import fixed_width, parse_detect_width

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Detection:
    """One face: box (x1, y1, x2, y2) in frame pixels, a score in [0, 1], optional landmarks.

    Landmarks are [5, 2] (x, y): image-left eye, image-right eye, nose, image-left and
    image-right mouth corner.
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray | None = None

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    def scaled(self, s: float) -> "Detection":
        """The same detection with coordinates multiplied by `s` (maps a resized frame back)."""
        lm = None if self.landmarks is None else self.landmarks * s
        return Detection(tuple(float(v) * s for v in self.box), self.score, lm)

    def shifted(self, dx: float, dy: float) -> "Detection":
        """The same detection moved by (dx, dy) pixels (maps a crop back to its frame)."""
        lm = None if self.landmarks is None else self.landmarks + np.array([dx, dy], np.float64)
        x1, y1, x2, y2 = self.box
        return Detection((x1 + dx, y1 + dy, x2 + dx, y2 + dy), self.score, lm)

    def to_json(self) -> dict:
        out = {"box": [round(float(v), 1) for v in self.box], "score": round(float(self.score), 4)}
        if self.landmarks is not None:
            out["landmarks"] = np.round(self.landmarks, 1).tolist()
        return out


class Detector(Protocol):
    name: str
    backend: str

    def __call__(self, frame: np.ndarray) -> list[Detection]: ...


class ResizingDetector:
    """Base class: runs `detect_small` on the frame downscaled to `detect_width` and maps back.

    Detecting on a 320-wide copy of a 640-wide frame costs a quarter of the pixels and still
    finds faces larger than ~40 px; `detect_width=None` (or >= the frame width) keeps full size.
    `detect_width="auto"`: a video `Pipeline` picks the width per stream from the faces it finds
    (`ferjax.realtime.width`); called directly, the detector runs at `width.DEFAULT_WIDTH`.
    `reliable_face`: the smallest face side (pixels of the image detected on, the detector's own
    box) found reliably, which the adaptive width keeps faces above.
    """

    name = "detector"
    backend = "cpu"
    reliable_face: float = 32.0

    def __init__(self, detect_width: int | str | None = 320):
        self.detect_width = parse_detect_width(detect_width)

    def detect_small(self, frame: np.ndarray) -> list[Detection]:
        raise NotImplementedError

    def resized(self, frame: np.ndarray, width: int | None = -1) -> tuple[np.ndarray, float]:
        """The frame the detector sees at `width` (default: `detect_width`; None: full size)
        and its scale relative to `frame`."""
        width = fixed_width(self.detect_width) if width == -1 else width
        w = frame.shape[1]
        if not width or width >= w:
            return frame, 1.0
        s = width / w
        size = (width, max(1, round(frame.shape[0] * s)))
        return cv2.resize(frame, size, interpolation=cv2.INTER_AREA), s

    def detect_at(self, frame: np.ndarray, width: int | None) -> list[Detection]:
        """Detections in `frame` pixels, detecting on a copy `width` pixels wide (None: full size)."""
        small, s = self.resized(frame, width)
        dets = self.detect_small(small)
        return dets if s == 1.0 else [d.scaled(1.0 / s) for d in dets]

    def detect_window(self, frame: np.ndarray, window: tuple[int, int, int, int], size: int,
                      face: float | None = None) -> list[Detection]:
        """Detections in `frame` pixels inside `window` (x1, y1, x2, y2: a square of frame pixels
        within the frame), detecting on it scaled down to `size` x `size` (as it is when not
        larger: never scaled up). `face`: the face side expected in the frame (a hint that
        `detect_window_small` may narrow its scan to)."""
        x1, y1, x2, y2 = (int(v) for v in window)
        crop = frame[y1:y2, x1:x2]
        side = max(crop.shape[:2])
        s = size / side if side > size else 1.0
        if s != 1.0:
            crop = cv2.resize(crop, (max(1, round(crop.shape[1] * s)), max(1, round(crop.shape[0] * s))),
                              interpolation=cv2.INTER_AREA)
        dets = self.detect_window_small(crop, None if face is None else face * s)
        return [(d if s == 1.0 else d.scaled(1.0 / s)).shifted(x1, y1) for d in dets]

    def detect_window_small(self, image: np.ndarray, face: float | None) -> list[Detection]:
        """`detect_small` on a window copy; `face` is the face side expected in it (ignored here)."""
        return self.detect_small(image)

    def __call__(self, frame: np.ndarray) -> list[Detection]:
        return self.detect_at(frame, fixed_width(self.detect_width))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes a [N,4] and b [M,4] (x1, y1, x2, y2) -> [N, M]."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=-1)
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
