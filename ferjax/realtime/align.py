"""Face crops for the classifier: square, eye-aligned when landmarks exist, 48x48 grey uint8."""
from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

from ferjax.realtime.detect import Detection


def eye_angle(landmarks: np.ndarray) -> float:
    """Roll angle in degrees of the line through the two eyes (landmarks rows 0 and 1)."""
    a, b = sorted(landmarks[:2].tolist())  # image-left eye first, whatever the detector's order
    return math.degrees(math.atan2(b[1] - a[1], b[0] - a[0]))


def crop_face(grey: np.ndarray, det: Detection, size: int = 48, margin: float = 0.0,
              align: bool = True, max_roll: float = 45.0) -> np.ndarray:
    """A `size`x`size` crop centred on the box, side max(w, h) * (1 + margin); rotated so the
    eyes are level when `align` and the detector gave landmarks. Borders replicate the edge."""
    x1, y1, x2, y2 = det.box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    side = max(x2 - x1, y2 - y1, 1.0) * (1 + margin)
    angle = eye_angle(det.landmarks) if align and det.landmarks is not None else 0.0
    if abs(angle) > max_roll:  # implausible landmarks: do not spin the face
        angle = 0.0
    if abs(angle) < 1.0:  # axis-aligned: crop then INTER_AREA resize (no aliasing)
        h, w = grey.shape
        l, t = int(round(cx - side / 2)), int(round(cy - side / 2))
        s = max(int(round(side)), 1)
        pad = max(0, -l, -t, l + s - w, t + s - h)
        src = cv2.copyMakeBorder(grey, pad, pad, pad, pad, cv2.BORDER_REPLICATE) if pad else grey
        crop = src[t + pad:t + pad + s, l + pad:l + pad + s]
        return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    m = cv2.getRotationMatrix2D((cx, cy), angle, size / side)
    m[:, 2] += (size / 2 - cx, size / 2 - cy)
    return cv2.warpAffine(grey, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def crop_faces(grey: np.ndarray, dets: Sequence[Detection], size: int = 48, margin: float = 0.0,
               align: bool = True) -> np.ndarray:
    """[N, size, size] uint8 crops of every detection (N may be 0)."""
    if not dets:
        return np.zeros((0, size, size), np.uint8)
    return np.stack([crop_face(grey, d, size, margin, align) for d in dets])
