"""Table II-style benchmark: per detector and video, ms per stage and end-to-end FPS."""
from __future__ import annotations

import json
import logging
import subprocess
from typing import Any, Callable, Sequence

from ferjax.realtime.pipeline import STAGES, Pipeline

_log = logging.getLogger(__name__)
# The paper's Table II (seed §IV), end-to-end FPS of its real-time system.
PAPER_TABLE_II = (
    {"detector": "haar (paper)", "backend": "CPU", "fps": 7.41},
    {"detector": "haar (paper)", "backend": "GTX 1070", "fps": 23.12},
    {"detector": "dnn ssd (paper)", "backend": "CPU", "fps": 30.30},
    {"detector": "dnn ssd (paper)", "backend": "GTX 1070", "fps": 51.43},
)
TIMED = ("decode", "detect", "preprocess", "predict", "draw")


def run_bench(make_pipeline: Callable[[str], Pipeline], detectors: Sequence[str], videos: Sequence[str],
              max_frames: int | None = None, warmup_frames: int = 5) -> list[dict[str, Any]]:
    """One headless pipeline run (drawing on, no writing) per detector and video."""
    rows = []
    for name in detectors:
        try:
            pipe = make_pipeline(name)
        except (FileNotFoundError, ImportError) as e:
            _log.warning("skipping detector %s: %s", name, e)
            rows.append({"detector": name, "skipped": str(e).splitlines()[0]})
            continue
        for video in videos:
            s = pipe.run(video, max_frames=max_frames, display=False, draw=True, warmup_frames=warmup_frames)
            row = {"detector": name, "backend": f"{s['detector_backend']} + {s['classifier_backend']}",
                   "backend_reason": s.get("detector_backend_reason", ""),
                   "video": video.rsplit("/", 1)[-1], **{k: s.get(k) for k in (
                       "frames", "frames_timed", "bad_frames", "detection_rate", "faces",
                       "max_faces_in_frame", "median_faces_in_frame", "track_ids", "detect_width",
                       "working_width_mean", "full_scans", "retries", "windows", "fps", "frame_ms_p50", "compile_s",
                       "error")}}
            row.update({f"{k}_ms": s.get("stage_ms", {}).get(k, 0.0) for k in STAGES})
            rows.append(row)
            _log.info("%s on %s: %.1f FPS, detection rate %.3f, %s; %s", name, row["video"], row["fps"] or 0,
                      row["detection_rate"] or 0, _widths(row), _crowd(row))
    return rows


def run_fer_peer(python: str, videos: Sequence[str], max_frames: int | None = None,
                 warmup_frames: int = 5, timeout_s: float = 1800) -> list[dict[str, Any]]:
    """The `fer` package's pipeline on the same videos, run by another environment's `python`."""
    from ferjax.realtime import fer_peer  # noqa: PLC0415

    cmd = [python, fer_peer.__file__, str(max_frames or 0), str(warmup_frames), *videos]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=True).stdout
        rows = json.loads(out.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, json.JSONDecodeError, IndexError) as e:
        _log.warning("fer peer skipped (%s): %s", python, str(e).splitlines()[0] if str(e) else type(e).__name__)
        return []
    for r in rows:
        r["backend"] = "opencv-cpu + tf-keras"
    return rows


def _versus_fer(r: dict[str, Any]) -> str:
    """FPS ratio to the fer package beside both sides' detection rates; no ratio where one side
    found no faces (it then skips classification, so the speeds are not comparable)."""
    if "fer_fps" not in r:
        return ""
    rates = f"faces in {100 * (r.get('detection_rate') or 0):.1f}% / {100 * (r.get('fer_detection_rate') or 0):.1f}% of frames"
    if r.get("fps_vs_fer"):
        return f"{r['fps_vs_fer']:.2f}x ({rates})"
    return f"not compared ({rates})"


def _widths(r: dict[str, Any]) -> str:
    """The detection width: the fixed number, or "auto" with the mean working width, the full-width
    scans, how many of them were retries of a frame the working width missed faces in, and the
    track windows detected on (where any ran)."""
    if r.get("detect_width") != "auto":
        return str(r.get("detect_width") or "")
    windows = f", {r['windows']} windows" if r.get("windows") else ""
    return (f"auto: {r.get('working_width_mean', 0):.0f} px, {r.get('full_scans', 0)} full "
            f"({r.get('retries', 0)} retries){windows}")


def _crowd(r: dict[str, Any]) -> str:
    """Faces per frame (max / median) and, where tracked, the track identities created."""
    ids = f", {r['track_ids']} track ids" if r.get("track_ids") is not None else ""
    return f"{r.get('max_faces_in_frame') or 0} / {r.get('median_faces_in_frame') or 0:g} faces{ids}"


def format_table(rows: Sequence[dict[str, Any]], peers: Sequence[dict[str, Any]] = ()) -> str:
    """A Markdown table like the paper's Table II, with per-stage milliseconds, the classifier that
    ran and, where the fer package ran too, the FPS ratio beside both detection rates."""
    head = ["detector", "backend", "classifier", "video", "frames", *[f"{k} ms" for k in TIMED],
            "ms/frame", "FPS", "frames with face", "detect width", "faces per frame (max / median), ids",
            "vs fer: FPS ratio (ours / fer faces)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['detector']} | skipped: {r['skipped']} |" + " |" * (len(head) - 2))
            continue
        if r.get("error"):
            lines.append(f"| {r['detector']} | {r['backend']} | {r.get('classifier', '')} | {r['video']} | "
                         f"error: {r['error']} |" + " |" * (len(head) - 5))
            continue
        ms = sum(r[f"{k}_ms"] for k in TIMED)
        lines.append("| " + " | ".join([
            r["detector"], r["backend"], r.get("classifier", ""), r["video"], str(r["frames"]),
            *[f"{r[f'{k}_ms']:.2f}" for k in TIMED], f"{ms:.2f}", f"{r['fps']:.1f}",
            f"{100 * r['detection_rate']:.1f}%", _widths(r), _crowd(r), _versus_fer(r)]) + " |")
    for p in [*peers, *PAPER_TABLE_II]:
        cells = [p["detector"], p["backend"], p.get("classifier", "mini-Xception (Keras)" if "video" in p else ""),
                 p.get("video", "(paper's webcam)"),
                 str(p.get("frames", "")), *[f"{p[f'{k}_ms']:.2f}" if f"{k}_ms" in p else "" for k in TIMED],
                 f"{1e3 / p['fps']:.2f}", f"{p['fps']:.1f}",
                 f"{100 * p['detection_rate']:.1f}%" if "detection_rate" in p else "", "", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
