"""The `fer` package's pipeline (Haar + mini-Xception in Keras), timed like ferjax's loop.

Run by `realtime_bench` with another environment's Python (`--config.peer_python=...`), where
`fer` and TensorFlow are installed; this file imports neither ferjax nor JAX. Prints JSON:
one row per video with ms per stage (decode, detect+preprocess+predict, draw) and FPS.
"""
from __future__ import annotations

import json
import sys
import time


def run(videos: list[str], max_frames: int, warmup: int) -> list[dict]:
    import cv2  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415
    from fer.fer import FER  # noqa: PLC0415
    from fer.utils import draw_annotations  # noqa: PLC0415

    detector = FER(mtcnn=False)
    rows = []
    for video in videos:
        cap = cv2.VideoCapture(video)
        dec, det, drw, wall, hits, n = [], [], [], [], 0, 0
        while not max_frames or n < max_frames:
            t0 = time.perf_counter()
            ok, frame = cap.read()
            t1 = time.perf_counter()
            if not ok:
                break
            faces = detector.detect_emotions(frame)
            t2 = time.perf_counter()
            draw_annotations(frame.copy(), faces)
            t3 = time.perf_counter()
            n += 1
            hits += bool(faces)
            if n > warmup:
                dec.append(t1 - t0), det.append(t2 - t1), drw.append(t3 - t2), wall.append(t3 - t0)
        ms = lambda v: round(1e3 * float(np.mean(v)), 3) if v else 0.0
        rows.append({"detector": "fer package (haar + mini-Xception, Keras)", "video": video.rsplit("/", 1)[-1],
                     "frames": n, "decode_ms": ms(dec), "detect_ms": ms(det), "preprocess_ms": 0.0,
                     "predict_ms": 0.0, "draw_ms": ms(drw), "fps": round(len(wall) / sum(wall), 2) if wall else 0.0,
                     "detection_rate": round(hits / n, 4) if n else 0.0})
    return rows


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[3:], int(sys.argv[1]), int(sys.argv[2]))))
