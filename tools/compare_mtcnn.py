"""Compares ferjax's JAX MTCNN with PyPI's `mtcnn==1.0.0` (TensorFlow) on real video frames.

The package runs in a separate environment (never a ferjax dependency):

    python3 -m venv /tmp/mtcnn_env && /tmp/mtcnn_env/bin/pip install mtcnn==1.0.0 tensorflow-cpu opencv-python-headless'<5'
    python tools/compare_mtcnn.py --peer-python=/tmp/mtcnn_env/bin/python [--media=../shared/media] \
        [--write-reference=tests/data/mtcnn_reference.json]

It extracts frames with OpenCV, runs the package on them in the other environment (this same
script with --peer-mode), runs ferjax's MTCNN here, and prints per-video IoU of matched faces,
faces found by only one side, and the speed ratio (package ms / ferjax ms per frame).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

# (video, frame step, max frames, resize width or 0): 640x360 faces, a close face, 1080p crowd, no face.
FRAMES = (("one_face_pexels_640x360.mp4", 24, 20, 0), ("one_face_short.mp4", 12, 6, 0),
          ("many_faces_1080p.mp4", 15, 7, 0), ("no_face_cartoon.mp4", 20, 5, 0))
# The small reference stored for the ferjax test: (video, frame index, resize width or 0).
REFERENCE = (("one_face_pexels_640x360.mp4", 0, 0), ("one_face_pexels_640x360.mp4", 240, 0),
             ("one_face_pexels_640x360.mp4", 456, 0), ("one_face_short.mp4", 36, 0),
             ("many_faces_1080p.mp4", 30, 960), ("no_face_cartoon.mp4", 40, 0))


def read_frame(video: str | Path, index: int, width: int = 0) -> np.ndarray:
    """Frame `index` of a video (decoded sequentially, as the tests do), optionally resized."""
    cap = cv2.VideoCapture(str(video))
    frame = None
    for _ in range(index + 1):
        ok, frame = cap.read()
        if not ok:
            raise IOError(f"{video} has no frame {index}")
    cap.release()
    if width:
        frame = cv2.resize(frame, (width, round(frame.shape[0] * width / frame.shape[1])), interpolation=cv2.INTER_AREA)
    return frame


def peer_mode(frames_dir: Path, out: Path) -> None:
    """Runs inside the environment with `mtcnn` + TensorFlow: boxes and ms for every PNG."""
    from mtcnn import MTCNN  # noqa: PLC0415

    det = MTCNN()
    files = sorted(frames_dir.glob("*.png"))
    det.detect_faces(cv2.cvtColor(cv2.imread(str(files[0])), cv2.COLOR_BGR2RGB))  # warm-up
    res = {}
    for f in files:
        rgb = cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB)
        t = time.perf_counter()
        rows = det.detect_faces(rgb, box_format="xyxy", output_type="numpy")
        ms = (time.perf_counter() - t) * 1e3
        res[f.stem] = {"rows": np.asarray(rows, np.float64).reshape(-1, 16).tolist(), "ms": ms}
    out.write_text(json.dumps(res))


def match(a: np.ndarray, b: np.ndarray, min_iou: float = 0.5) -> tuple[list[float], int, int]:
    """Greedy IoU matching of boxes a and b -> (IoUs of matched pairs, unmatched in a, in b)."""
    from ferjax.realtime.detect import box_iou  # noqa: PLC0415

    if len(a) == 0 or len(b) == 0:
        return [], len(a), len(b)
    m = box_iou(a, b)
    ious, used_a, used_b = [], set(), set()
    for flat in np.argsort(-m, axis=None):
        i, j = divmod(int(flat), m.shape[1])
        if m[i, j] < min_iou:
            break
        if i not in used_a and j not in used_b:
            used_a.add(i), used_b.add(j), ious.append(float(m[i, j]))
    return ious, len(a) - len(used_a), len(b) - len(used_b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer-python", default="/tmp/mtcnn_env/bin/python")
    ap.add_argument("--media", default="../shared/media")
    ap.add_argument("--write-reference", default="")
    ap.add_argument("--peer-mode", nargs=2, metavar=("FRAMES_DIR", "OUT_JSON"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.peer_mode:
        return peer_mode(Path(args.peer_mode[0]), Path(args.peer_mode[1]))

    from ferjax.realtime.mtcnn import MTCNN  # noqa: PLC0415

    media = Path(args.media)
    jobs = [(v, i, w) for v, step, n, w in FRAMES for i in range(0, step * n, step)]
    jobs += [r for r in REFERENCE if r not in jobs]
    with tempfile.TemporaryDirectory() as tmp:
        frames = {}
        for v, i, w in jobs:
            key = f"{Path(v).stem}_{i:05d}_{w}"
            try:
                frames[key] = read_frame(media / v, i, w)
            except IOError:
                continue
            cv2.imwrite(f"{tmp}/{key}.png", frames[key])
        print(f"{len(frames)} frames; running mtcnn==1.0.0 with {args.peer_python} ...", flush=True)
        subprocess.run([args.peer_python, __file__, "--peer-mode", tmp, f"{tmp}/peer.json"], check=True,
                       stderr=subprocess.DEVNULL)
        peer = json.loads(Path(f"{tmp}/peer.json").read_text())

    net = MTCNN()
    ours = {}
    for key, frame in frames.items():  # warm-up: compile every frame size and bucket first
        net.warmup(*frame.shape[:2])
    for key, frame in frames.items():
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        t = time.perf_counter()
        rows = net.detect_rows(rgb)
        ours[key] = {"rows": rows, "ms": (time.perf_counter() - t) * 1e3}

    print(f"\n| video | frames | faces (package) | faces (ferjax) | matched | mean IoU | min IoU | "
          f"only package | only ferjax | package ms | ferjax ms | speed-up |\n|{'---|' * 12}")
    all_ious, tot = [], {"p": 0.0, "o": 0.0}
    for v, *_ in FRAMES:
        keys = [k for k in frames if k.startswith(Path(v).stem) and any(
            k == f"{Path(v).stem}_{i:05d}_{w}" for vv, s, n, w in FRAMES if vv == v for i in range(0, s * n, s))]
        ious, only_p, only_o, fp, fo = [], 0, 0, 0, 0
        for k in keys:
            p, o = np.asarray(peer[k]["rows"]).reshape(-1, 16), ours[k]["rows"]
            iu, a, b = match(p[:, 1:5], o[:, 1:5])
            ious += iu
            only_p, only_o, fp, fo = only_p + a, only_o + b, fp + len(p), fo + len(o)
        pm, om = np.mean([peer[k]["ms"] for k in keys]), np.mean([ours[k]["ms"] for k in keys])
        tot["p"] += pm * len(keys)
        tot["o"] += om * len(keys)
        all_ious += ious
        print(f"| {v} | {len(keys)} | {fp} | {fo} | {len(ious)} | {np.mean(ious) if ious else float('nan'):.4f} | "
              f"{np.min(ious) if ious else float('nan'):.4f} | {only_p} | {only_o} | {pm:.1f} | {om:.1f} | {pm / om:.2f}x |")
    print(f"\nall matched faces: {len(all_ious)}, mean IoU {np.mean(all_ious):.4f}, min {np.min(all_ious):.4f}, "
          f"share >= 0.9: {np.mean(np.asarray(all_ious) >= 0.9):.3f}; overall speed-up {tot['p'] / tot['o']:.2f}x")

    if args.write_reference:
        ref = []
        for v, i, w in REFERENCE:
            key = f"{Path(v).stem}_{i:05d}_{w}"
            if key in peer:
                rows = np.asarray(peer[key]["rows"]).reshape(-1, 16)
                ref.append({"video": v, "frame": i, "resize_width": w,
                            "boxes": np.round(rows[:, 1:5], 2).tolist(), "scores": np.round(rows[:, 5], 4).tolist(),
                            "landmarks": np.round(rows[:, 6:16], 2).tolist()})
        Path(args.write_reference).write_text(json.dumps(
            {"source": "mtcnn==1.0.0 (TensorFlow CPU), detect_faces defaults, RGB input; tools/compare_mtcnn.py",
             "frames": ref}, indent=1))
        print(f"wrote {args.write_reference}")


if __name__ == "__main__":
    sys.exit(main())
