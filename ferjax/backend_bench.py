"""The classifier on JAX beside ONNX Runtime, in one run: `python -m ferjax.backend_bench`.

    nice python -m ferjax.backend_bench [--model NAME] [--detector yunet] [--videos A.mp4,B.mp4]
                                        [--rounds 2] [--json-out FILE]

Both backends classify with the same registered pretrained model (`ferjax.Analyzer(backend=...)`;
the ONNX file is exported into ferjax's cache on first use) behind the same detector. Printed:

1. classifier alone, batch 1/8/32 of real PrivateTest faces (synthetic ones without FER2013):
   median ms per call of each backend, timed interleaved (`ferjax.timing.interleaved`), and the ratio;
2. the whole pipeline (decode, detect, crop, classify, draw) on each video, `--rounds` runs per
   backend alternating JAX / ONNX Runtime, FPS = the median of the rounds, and the ratio;
3. label agreement on every face of every video: both backends see the same detections (the
   detector is deterministic), so each face's label is compared; a disagreement where JAX's top
   two probabilities lie within 1e-5 is a near-tie, counted and excepted;
4. the default-backend rule of issue 40: ONNX Runtime becomes the default where it is installed
   only when its whole-pipeline FPS is at least 10% higher on every video and no label differs
   outside near-ties (the float32 equality on PrivateTest is docs/deploy.md's).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

BACKEND_NAMES = ("jax", "onnxruntime")
BATCHES = (1, 8, 32)
NEAR_TIE = 1e-5
FASTER_BY = 1.10  # the whole-pipeline FPS ratio a backend needs on every video to become the default
SHARED_MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
DEFAULT_VIDEOS = ("one_face_pexels_640x360.mp4", "one_face_short.mp4", "many_faces_1080p.mp4")


def test_faces(n: int, fer2013_path: str | None) -> tuple[np.ndarray, str]:
    """[n,48,48,1] float32 faces: the first PrivateTest rows of FER2013 when found, else noise."""
    from ferjax.data import fer2013  # noqa: PLC0415

    try:
        source = fer2013.find_source(fer2013_path or str(SHARED_MEDIA.parent / "data" / "fer2013"))
    except FileNotFoundError:
        return np.random.default_rng(0).uniform(0, 255, (n, 48, 48, 1)).astype(np.float32), "uniform noise"
    faces = []
    for r in fer2013.iter_records(source):
        if r.split == "test":
            faces.append(r.image)
            if len(faces) == n:
                break
    return np.stack(faces).astype(np.float32).reshape(n, 48, 48, 1), "FER2013 PrivateTest"


def classifier_rows(predictors: dict[str, Callable], faces: np.ndarray, repeats: int, iters: int) -> list[dict]:
    """Median ms per call and per face of each backend at each batch size, timed interleaved."""
    from ferjax.timing import interleaved  # noqa: PLC0415

    rows = []
    for b in BATCHES:
        batch = faces[:b]
        t = interleaved({k: (lambda p=p: p(batch)) for k, p in predictors.items()}, repeats, iters)
        row = {"batch": b, **{f"{k}_ms": round(v * 1e3, 3) for k, v in t.items()}}
        row["ratio"] = round(t["jax"] / t["onnxruntime"], 3)  # > 1: ONNX Runtime faster
        rows.append(row)
    return rows


def _recording(pipe: Any, results: list) -> None:
    """Makes `pipe.process` append each frame's (detections, raw probabilities) to `results`."""
    process = pipe.process

    def recorded(index, frame, draw=True, detect_width=None):
        result, out = process(index, frame, draw, detect_width)
        results.append((index, [d.box for d in result.detections], np.array(result.probs, np.float64)))
        return result, out

    pipe.process = recorded


def pipeline_rows(analyzers: dict[str, Any], videos: Sequence[Path], rounds: int,
                  max_frames: int | None) -> tuple[list[dict], dict[str, dict[str, list]]]:
    """Whole-pipeline FPS per backend and video (median of `rounds`, backends alternating within
    each round) and each backend's per-frame results of its first round (without smoothing, so
    that labels compare raw probabilities). `analyzers` may hold any names (backends, models);
    the JAX / ONNX Runtime ratio is given where both backends are among them."""
    fps: dict[tuple[str, str], list[float]] = {}
    recorded: dict[str, dict[str, list]] = {k: {} for k in analyzers}
    summary: dict[tuple[str, str], dict] = {}
    for r in range(rounds):
        order = list(analyzers) if r % 2 == 0 else list(analyzers)[::-1]
        for video in videos:
            for name in order:
                pipe = analyzers[name].pipeline(tracking=False)
                if r == 0:
                    recorded[name][video.name] = []
                    _recording(pipe, recorded[name][video.name])
                s = pipe.run(str(video), max_frames=max_frames, display=False, draw=True, warmup_frames=5)
                if s.get("error"):
                    raise RuntimeError(f"{video}: {s['error']}")
                fps.setdefault((name, video.name), []).append(s["fps"])
                summary[(name, video.name)] = s
    rows, first = [], next(iter(analyzers))
    for video in videos:
        row: dict[str, Any] = {"video": video.name, "frames": summary[(first, video.name)]["frames"],
                               "faces": summary[(first, video.name)]["faces"]}
        for name in analyzers:
            s = summary[(name, video.name)]
            row[f"{name}_fps"] = round(statistics.median(fps[(name, video.name)]), 2)
            row[f"{name}_fps_rounds"] = fps[(name, video.name)]
            row[f"{name}_predict_ms"] = s["stage_ms"]["predict"]
        if set(BACKEND_NAMES) <= set(analyzers):
            row["ratio"] = round(row["onnxruntime_fps"] / row["jax_fps"], 3) if row["jax_fps"] else None
        rows.append(row)
    return rows, recorded


def agreement(reference: list, other: list, class_names: Sequence[str]) -> dict:
    """Faces labelled alike by two backends' recordings of one video (same frames, same boxes)."""
    faces = same = ties = box_mismatch = 0
    differing = []
    for (i, boxes_a, p_a), (j, boxes_b, p_b) in zip(reference, other):
        if i != j or len(boxes_a) != len(boxes_b) or not np.allclose(boxes_a, boxes_b):
            box_mismatch += 1
            continue
        for k in range(len(boxes_a)):
            faces += 1
            if p_a[k].argmax() == p_b[k].argmax():
                same += 1
                continue
            top2 = np.sort(p_a[k])[-2:]
            if top2[1] - top2[0] <= NEAR_TIE:
                ties += 1
            else:
                differing.append({"frame": int(i), "face": k, "jax": class_names[int(p_a[k].argmax())],
                                  "onnxruntime": class_names[int(p_b[k].argmax())]})
    diff = max((float(np.abs(a[2] - b[2]).max()) for a, b in zip(reference, other)
                if a[2].shape == b[2].shape and a[2].size), default=0.0)
    return {"faces": faces, "same_label": same, "near_ties": ties, "differing": differing,
            "frames_with_other_boxes": box_mismatch, "max_abs_diff": diff}


def decide(pipe_rows: Sequence[dict], agreements: dict[str, dict]) -> dict:
    """Issue 40's rule: ONNX Runtime by default only if >= 10% faster on every video, labels equal."""
    faster = all(r["ratio"] is not None and r["ratio"] >= FASTER_BY for r in pipe_rows)
    equal = all(not a["differing"] and not a["frames_with_other_boxes"] for a in agreements.values())
    return {"onnxruntime_default": faster and equal, "faster_on_every_video": faster, "labels_equal": equal,
            "min_ratio": min((r["ratio"] or 0.0) for r in pipe_rows) if pipe_rows else None}


def markdown(report: dict) -> str:
    out = [f"Machine: {report['machine']}; model {report['model']}, detector {report['detector']}; "
           f"faces: {report['faces_source']}.", "",
           "| batch | JAX ms/call | ONNX Runtime ms/call | JAX / ORT |", "|---|---|---|---|"]
    out += [f"| {r['batch']} | {r['jax_ms']:.3f} | {r['onnxruntime_ms']:.3f} | {r['ratio']:.2f}x |"
            for r in report["classifier"]]
    out += ["", "| video | frames | faces | JAX FPS | ORT FPS | ORT / JAX | JAX predict ms | ORT predict ms "
            "| same label | near-ties | differing |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["pipeline"]:
        a = report["agreement"][r["video"]]
        ratio = "n/a (no frame timed)" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        out.append(f"| {r['video']} | {r['frames']} | {r['faces']} | {r['jax_fps']:.1f} | {r['onnxruntime_fps']:.1f} "
                   f"| {ratio} | {r['jax_predict_ms']:.2f} | {r['onnxruntime_predict_ms']:.2f} "
                   f"| {a['same_label']}/{a['faces']} | {a['near_ties']} | {len(a['differing'])} |")
    d = report["decision"]
    out += ["", f"Default backend rule (ORT >= {FASTER_BY:.2f}x FPS on every video, labels equal): "
            f"{'met' if d['onnxruntime_default'] else 'not met'} (lowest ratio {d['min_ratio']}, "
            f"labels equal: {d['labels_equal']})."]
    return "\n".join(out)


def add_run_args(p: argparse.ArgumentParser, compared: str) -> None:
    """The options this benchmark and `ferjax.model_bench` share: detector, videos, pipeline rounds
    (`compared` names what alternates within a round), classifier timing, faces, JSON output."""
    p.add_argument("--detector", default="yunet", help="registered detector (default %(default)s)")
    p.add_argument("--videos", default=",".join(str(SHARED_MEDIA / v) for v in DEFAULT_VIDEOS),
                   help="comma-separated videos (default: the shared one-face, short and crowded clips)")
    p.add_argument("--rounds", type=int, default=2, help=f"pipeline runs per {compared} and video (median)")
    p.add_argument("--max-frames", type=int, default=0, help="frames per video (0: all)")
    p.add_argument("--repeats", type=int, default=7, help="classifier timing rounds (median)")
    p.add_argument("--iters", type=int, default=20, help="classifier calls per round")
    p.add_argument("--fer2013-path", default=None, help="FER2013 for the classifier faces (default ../shared)")
    p.add_argument("--json-out", default="", help="also write every figure as JSON here")


def existing_videos(value: str, prog: str) -> list[Path] | None:
    """The comma-separated videos of `--videos`; None, after one line naming the missing ones."""
    videos = [Path(v) for v in value.split(",") if v]
    missing = [str(v) for v in videos if not v.is_file()]
    if missing:
        print(f"{prog}: video not found: {', '.join(missing)}", file=sys.stderr)
        return None
    return videos


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ferjax.backend_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="registered pretrained model (default: the shipped one)")
    add_run_args(p, "backend")
    a = p.parse_args(argv)
    videos = existing_videos(a.videos, "backend_bench")
    if videos is None:
        return 2
    from ferjax import pretrained  # noqa: PLC0415
    from ferjax.analyzer import Analyzer  # noqa: PLC0415
    from ferjax.timing import cpu_model  # noqa: PLC0415

    model = a.model or pretrained.DEFAULT
    start = time.perf_counter()
    analyzers = {b: Analyzer(a.detector, model, backend=b, smoothing=False) for b in BACKEND_NAMES}
    for an in analyzers.values():
        an.warmup()
    faces, source = test_faces(max(BATCHES), a.fer2013_path)
    report: dict[str, Any] = {
        "machine": f"{cpu_model()}, {platform.machine()}, {__import__('os').cpu_count()} CPUs",
        "model": model, "detector": a.detector, "faces_source": source,
        "classifier": classifier_rows({k: an.predictor for k, an in analyzers.items()}, faces, a.repeats, a.iters)}
    rows, recorded = pipeline_rows(analyzers, videos, a.rounds, a.max_frames or None)
    names = analyzers["jax"].class_names
    report["pipeline"] = rows
    report["agreement"] = {v.name: agreement(recorded["jax"][v.name], recorded["onnxruntime"][v.name], names)
                           for v in videos}
    report["decision"] = decide(rows, report["agreement"])
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["command"] = "python -m ferjax.backend_bench " + " ".join(argv if argv is not None else sys.argv[1:])
    print(markdown(report))
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
