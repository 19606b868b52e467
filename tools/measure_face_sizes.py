"""Measures the smallest face side each detector finds reliably (the `reliable_face` values that
`detect_width="auto"` plans with, see `ferjax/realtime/width.py`).

Real frames of the shared videos are scaled down whole (faces keep their context: hair, body,
the street) and pasted into the middle of a face-free real frame (640x360, a still of the cartoon
clip) when smaller than it; each detector then runs on that image at its own size. The faces are
YuNet's boxes (score >= 0.8, side >= 40 px) on the full-size frame, scaled with it; one counts as
found when a detection overlaps it with IoU >= 0.3. Recall is binned by the face's side in the
image detected on; each detector's own box side over YuNet's is printed too (the policy reads
the detector's own boxes). FER2013's tight 48x48 crops were tried and left out: without hair and
background even YuNet finds at most ~78% of them at any size.

    python tools/measure_face_sizes.py --media=../shared/media --models=../shared/models
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from ferjax.realtime.detect import box_iou
from ferjax.registry import DETECTORS

BINS = (8, 10, 12, 14, 16, 18, 20, 24, 28, 32, 40, 48, 64, 96)  # face side bins, pixels detected on
SOURCES = (("one_face_pexels_640x360.mp4", 24), ("one_face_short.mp4", 8), ("many_faces_1080p.mp4", 15))
BACKGROUND = ("no_face_cartoon.mp4", 40, (640, 360))  # a real frame without faces
DETECTORS_MEASURED = {"haar": {"scale_factor": 1.1, "min_neighbors": 5, "min_size": 50, "equalize": False,
                               "use_cuda": False},
                      "yunet": {"threshold": 0.6, "use_cuda": False}, "mtcnn": {"min_face_size": 20, "threshold": 0.9}}


def _frames(path: Path, step: int):
    cap = cv2.VideoCapture(str(path))
    i = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            return
        if i % step == 0:
            yield frame
        i += 1


def sources(media: Path, yunet) -> list[tuple[np.ndarray, np.ndarray]]:
    """(frame, face boxes [K,4]) of every sampled frame: YuNet at full size, score >= 0.8, side >= 40."""
    out = []
    for name, step in SOURCES:
        for frame in _frames(media / name, step):
            boxes = [d.box for d in yunet.detect_at(frame, None) if d.score >= 0.8 and min(d.width, d.height) >= 40]
            if boxes:
                out.append((frame, np.array(boxes)))
    return out


def scenes(frame: np.ndarray, boxes: np.ndarray, background: np.ndarray, sides=BINS):
    """The frame scaled so that its smallest face takes each side of `sides` (no upscaling),
    pasted into `background` when smaller than it: (image, face boxes in its pixels)."""
    small = float(np.min(np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])))
    for side in sides:
        k = side / small
        if k > 1:
            continue
        size = (max(1, round(frame.shape[1] * k)), max(1, round(frame.shape[0] * k)))
        scaled = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        bh, bw = background.shape[:2]
        if size[0] > bw or size[1] > bh:
            yield scaled, boxes * k
            continue
        image = background.copy()
        x0, y0 = (bw - size[0]) // 2, (bh - size[1]) // 2
        image[y0:y0 + size[1], x0:x0 + size[0]] = scaled
        yield image, boxes * k + [x0, y0, x0, y0]


def measure(detector, data, background) -> dict:
    """Per side bin: faces, found share; and the median own-box / YuNet-box side of found faces."""
    found: dict[int, list[bool]] = {b: [] for b in BINS}
    ratios = []
    for frame, boxes in data:
        for image, truth in scenes(frame, boxes, background):
            dets = detector.detect_at(image, None)
            iou = box_iou(truth, np.array([d.box for d in dets])) if dets else np.zeros((len(truth), 0))
            for t, row in zip(truth, iou):
                side = min(t[2] - t[0], t[3] - t[1])
                b = max([x for x in BINS if x <= side + 1e-6], default=BINS[0])
                hit = row.size > 0 and row.max() >= 0.3
                found[b].append(bool(hit))
                if hit:
                    d = dets[int(row.argmax())]
                    ratios.append(min(d.width, d.height) / side)
    return {"recall": {b: (len(v), round(float(np.mean(v)), 3) if v else None) for b, v in found.items()},
            "own_over_yunet": round(float(np.median(ratios)), 2) if ratios else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--media", default="../shared/media")
    p.add_argument("--models", default="../shared/models")
    p.add_argument("--detectors", default=",".join(DETECTORS_MEASURED))
    p.add_argument("--json", default="")
    a = p.parse_args()
    media = Path(a.media)
    make = lambda name: DETECTORS.create(name, models_dir=a.models, **DETECTORS_MEASURED[name])
    name, index, size = BACKGROUND
    background = cv2.resize(next(f for i, f in enumerate(_frames(media / name, 1)) if i == index), size,
                            interpolation=cv2.INTER_AREA)
    data = sources(media, make("yunet"))
    print(f"{len(data)} frames, {sum(len(b) for _, b in data)} faces; side bin: faces found (faces)")
    table = {}
    for name in a.detectors.split(","):
        table[name] = m = measure(make(name), data, background)
        print(f"{name:6s} " + "  ".join(f"{b}:{100 * r:.0f}%({n})" for b, (n, r) in m["recall"].items() if n)
              + f"  own/yunet box {m['own_over_yunet']}", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
