"""The deployed-pipeline measurement: ferjax's Python pipeline (ferjax.Analyzer, JAX backend,
default model, YuNet) against the in-browser JavaScript pipeline (ferjax/browser/src on
onnxruntime-web's wasm backend, run by Node) on identical pixels.

    python tools/deployed_accuracy.py --out results.json [--threads 1] [--work DIR] [--limit N]

1. FER2013 PrivateTest (3,589 images): each 48x48 face upscaled once, here, to 160x160
   (`upscale`: cv2 INTER_CUBIC), grey replicated to 3 channels, written to one raw file that both
   sides read, and analysed as a photo. No face found counts as wrong; with several faces the
   highest-scoring one counts. Reported: accuracy and detection rate of each side, their
   difference (target: within 0.5 point), and the fraction of Python's faces whose JS box has
   IoU >= 0.9 (target: >= 99%).
2. Frames of the shared videos (every `--every`th frame, decoded by cv2 into one raw file),
   analysed in video mode (detection at 320 px wide, no tracker, so each frame stands alone):
   the same box match fraction, and the agreement of labels on matched faces.

Needs node and `npm ci` in ferjax/browser, the onnx extra (the classifier is exported with
ferjax.export.cached_onnx) and shared/ beside the repository (or --shared).
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

REPO = Path(__file__).resolve().parents[1]
BROWSER = REPO / "ferjax" / "browser"
YUNET = REPO / "ferjax" / "assets" / "face_detection_yunet_2026may.onnx"
UPSCALE_SIZE = 160
VIDEOS = ("one_face_pexels_640x360.mp4", "one_face_short.mp4", "many_faces_1080p.mp4", "no_face_cartoon.mp4")


def upscale(image48: np.ndarray) -> np.ndarray:
    """The one definition of how a 48x48 FER2013 face becomes a deployed-size photo:
    160x160 uint8 grey, bicubic (cv2.INTER_CUBIC)."""
    return cv2.resize(np.asarray(image48, np.uint8).reshape(48, 48), (UPSCALE_SIZE, UPSCALE_SIZE),
                      interpolation=cv2.INTER_CUBIC)


def fer_private_test(csv: Path, limit: int | None = None) -> list[tuple[np.ndarray, int]]:
    """(48x48 uint8 face, label) of FER2013's PrivateTest rows, in file order."""
    from ferjax.data.fer2013 import iter_records  # noqa: PLC0415

    out = []
    for rec in iter_records(Path(csv)):
        if rec.split == "test":
            out.append((rec.image.reshape(48, 48), int(rec.label)))
            if limit is not None and len(out) >= limit:
                break
    return out


def write_inputs(work: Path, shared: Path, limit: int | None, every: int) -> dict:
    """The raw files both pipelines read (RGB uint8, one image after another) and their manifest."""
    work.mkdir(parents=True, exist_ok=True)
    fer = fer_private_test(shared / "data" / "fer2013" / "fer2013.csv.gz", limit)
    with open(work / "fer.rgb", "wb") as f:
        for img48, _ in fer:
            f.write(np.repeat(upscale(img48)[..., None], 3, axis=2).tobytes())
    videos = []
    with open(work / "frames.rgb", "wb") as f:
        offset = 0
        for name in VIDEOS:
            cap = cv2.VideoCapture(str(shared / "media" / name))
            index, frames, shape = 0, [], None
            while True:
                ok, bgr = cap.read()
                if not ok:
                    break
                if index % every == 0:
                    f.write(np.ascontiguousarray(bgr[..., ::-1]).tobytes())
                    frames.append({"index": index, "offset": offset})
                    offset += bgr.nbytes
                    shape = bgr.shape
                index += 1
            cap.release()
            if frames:
                videos.append({"name": name, "width": shape[1], "height": shape[0], "frames": frames})
    manifest = {"fer": {"file": str(work / "fer.rgb"), "count": len(fer), "width": UPSCALE_SIZE,
                        "height": UPSCALE_SIZE, "labels": [label for _, label in fer]},
                "frames": {"file": str(work / "frames.rgb"), "videos": videos}}
    (work / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def face_json(face) -> dict:
    return {"box": [float(v) for v in face.box], "score": float(face.score), "label": face.label,
            "probabilities": [round(float(face.probs[c]), 7) for c in face.probs]}


def run_python(manifest: dict) -> dict:
    """The Python pipeline on the same raw pixels: per FER image and per frame, its faces."""
    from ferjax.analyzer import Analyzer  # noqa: PLC0415

    analyzer = Analyzer()  # YuNet, the default model, JAX backend
    analyzer.warmup()
    fer, side = manifest["fer"], manifest["fer"]["width"]
    data = np.fromfile(fer["file"], np.uint8).reshape(fer["count"], side, side, 3)
    t = time.perf_counter()
    photos = []
    for start in range(0, len(data), 64):  # all faces of 64 photos in one classifier call
        frames = [np.ascontiguousarray(im[..., ::-1]) for im in data[start:start + 64]]
        photos += [[face_json(f) for f in faces] for faces in analyzer.analyze_frames(frames)]
    fer_s = time.perf_counter() - t
    t = time.perf_counter()
    videos = []
    with open(manifest["frames"]["file"], "rb") as f:
        for v in manifest["frames"]["videos"]:
            out = []
            for fr in v["frames"]:
                f.seek(fr["offset"])
                rgb = np.frombuffer(f.read(v["width"] * v["height"] * 3), np.uint8).reshape(v["height"], v["width"], 3)
                faces = analyzer.analyze_frames([np.ascontiguousarray(rgb[..., ::-1])], video=True)[0]
                out.append([face_json(x) for x in faces])
            videos.append({"name": v["name"], "frames": out})
    return {"fer": photos, "videos": videos, "seconds": {"fer": fer_s, "videos": time.perf_counter() - t},
            "model": analyzer.model_desc, "detector": analyzer.detector_name}


def run_js(manifest_path: Path, out: Path, threads: int) -> dict:
    """The JS pipeline under Node (ferjax/browser/tools/measure.mjs) on the same files."""
    from ferjax import export  # noqa: PLC0415
    from ferjax.pretrained import DEFAULT  # noqa: PLC0415

    cmd = ["node", str(BROWSER / "tools" / "measure.mjs"), "--manifest", str(manifest_path), "--out", str(out),
           "--yunet", str(YUNET), "--classifier", str(export.cached_onnx(DEFAULT)), "--threads", str(threads)]
    subprocess.run(cmd, check=True, cwd=BROWSER)
    return json.loads(out.read_text())


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(py_faces: list[dict], js_faces: list[dict]) -> list[tuple[dict, dict | None, float]]:
    """Each Python face with the JS face of highest IoU not yet taken (greedy, best first)."""
    pairs, taken = [], set()
    for p in py_faces:
        best, best_iou = None, 0.0
        for j, q in enumerate(js_faces):
            v = iou(p["box"], q["box"])
            if j not in taken and v > best_iou:
                best, best_iou = j, v
        if best is not None:
            taken.add(best)
        pairs.append((p, None if best is None else js_faces[best], best_iou))
    return pairs


def compare(manifest: dict, py: dict, js: dict, labels_order: list[str]) -> dict:
    truth = manifest["fer"]["labels"]
    n = len(truth)

    def side(results):
        top = [faces[0] if faces else None for faces in results]
        correct = sum(1 for t, f in zip(truth, top) if f is not None and labels_order.index(f["label"]) == t)
        found = sum(1 for f in top if f is not None)
        return top, {"accuracy": correct / n, "detection_rate": found / n, "correct": correct, "detected": found}

    py_top, py_stats = side(py["fer"])
    js_top, js_stats = side(js["fer"])
    both = [(p, q) for p, q in zip(py_top, js_top) if p is not None]
    box_ok = sum(1 for p, q in both if q is not None and iou(p["box"], q["box"]) >= 0.9)
    ious = sorted(iou(p["box"], q["box"]) if q is not None else 0.0 for p, q in both)
    fer = {"images": n, "python": py_stats, "js": js_stats,
           "accuracy_difference_points": 100 * (js_stats["accuracy"] - py_stats["accuracy"]),
           "box_iou_0.9_fraction": box_ok / len(both) if both else None, "python_faces": len(both),
           "label_agreement": (sum(1 for p, q in both if q is not None and p["label"] == q["label"]) / len(both)
                               if both else None),
           "detection_disagreements": sum(1 for p, q in zip(py_top, js_top) if (p is None) != (q is None)),
           "box_iou_min": ious[0] if ious else None, "box_iou_median": ious[len(ious) // 2] if ious else None,
           "max_probability_difference": _max_prob_diff(both),
           "label_disagreements": [{"image": i, "truth": truth[i], "python": p, "js": q}
                                   for i, (p, q) in enumerate(zip(py_top, js_top))
                                   if p is not None and q is not None and p["label"] != q["label"]]}
    videos, all_pairs, js_faces_total = [], [], 0
    for pv, jv in zip(py["videos"], js["videos"]):
        pairs = [pr for pf, jf in zip(pv["frames"], jv["frames"]) for pr in match(pf, jf)]
        js_count = sum(len(f) for f in jv["frames"])
        js_faces_total += js_count
        all_pairs += pairs
        videos.append(_video_stats(pv["name"], len(pv["frames"]), pairs, js_count))
    total = _video_stats("all", sum(v["frames"] for v in videos), all_pairs, js_faces_total)
    return {"fer_private_test": fer, "videos": videos, "videos_total": total}


def _max_prob_diff(pairs) -> float | None:
    """Largest |Python - JS| class probability over paired faces."""
    diffs = [abs(a - b) for p, q in pairs if q is not None for a, b in zip(p["probabilities"], q["probabilities"])]
    return max(diffs) if diffs else None


def _video_stats(name: str, frames: int, pairs: list, js_faces: int) -> dict:
    matched = [(p, q) for p, q, v in pairs if q is not None and v >= 0.9]
    return {"video": name, "frames": frames, "python_faces": len(pairs), "js_faces": js_faces,
            "box_iou_min": min((v for _, q, v in pairs), default=None),
            "max_probability_difference": _max_prob_diff(matched),
            "box_iou_0.9_fraction": len(matched) / len(pairs) if pairs else None,
            "label_agreement": sum(1 for p, q in matched if p["label"] == q["label"]) / len(matched) if matched else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="where to write the results (JSON)")
    p.add_argument("--shared", default=str(REPO.parent / "shared"))
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "ferjax-deployed"),
                   help="folder for the raw image files both pipelines read")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime-web wasm threads in Node")
    p.add_argument("--every", type=int, default=5, help="video frames: every Nth frame")
    p.add_argument("--limit", type=int, default=None, help="only the first N PrivateTest images (quick runs)")
    args = p.parse_args(argv)

    start = time.perf_counter()
    work = Path(args.work)
    manifest = write_inputs(work, Path(args.shared), args.limit, args.every)
    py = run_python(manifest)
    (work / "py_results.json").write_text(json.dumps(py))
    js = run_js(work / "manifest.json", work / "js_results.json", args.threads)
    from ferjax.data.records import EMOTIONS  # noqa: PLC0415

    result = compare(manifest, py, js, list(EMOTIONS))
    result["setup"] = {
        "python": {"detector": py["detector"], "classifier": py["model"], "seconds": py["seconds"]},
        "js": {"runtime": js["runtime"], "threads": js["threads"], "seconds": js["seconds"]},
        "upscale": f"cv2.resize 48x48 -> {UPSCALE_SIZE}x{UPSCALE_SIZE} INTER_CUBIC, grey in 3 channels",
        "video_every": args.every, "opencv": cv2.__version__, "command": " ".join([sys.executable, *sys.argv]),
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    fer, tot = result["fer_private_test"], result["videos_total"]
    print(f"FER2013 PrivateTest ({fer['images']} images at {UPSCALE_SIZE}px, photo mode)")
    for who in ("python", "js"):
        s = fer[who]
        print(f"  {who:6s}: accuracy {100 * s['accuracy']:.2f}%  detection rate {100 * s['detection_rate']:.2f}%")
    print(f"  accuracy difference (js - python): {fer['accuracy_difference_points']:+.2f} points (target within 0.5)")
    print(f"  faces with JS box IoU >= 0.9: {100 * fer['box_iou_0.9_fraction']:.2f}% of {fer['python_faces']} "
          f"(target >= 99%; min IoU {fer['box_iou_min']:.4f}); labels agree on {100 * fer['label_agreement']:.2f}%; "
          f"max probability difference {fer['max_probability_difference']:.2g}")
    for v in result["videos"] + [tot]:
        frac = "n/a" if v["box_iou_0.9_fraction"] is None else f"{100 * v['box_iou_0.9_fraction']:.2f}%"
        agree = "n/a" if v["label_agreement"] is None else f"{100 * v['label_agreement']:.2f}%"
        print(f"  video {v['video']}: {v['frames']} frames, {v['python_faces']} Python faces, {v['js_faces']} JS faces, "
              f"box IoU >= 0.9 {frac}, labels agree {agree}")
    print(f"wall time {result['setup']['wall_seconds']} s; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
