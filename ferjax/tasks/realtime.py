"""Tasks `realtime` (annotate a webcam, video, stream or image folder) and `realtime_bench`
(the Table II-style benchmark over real videos); registered in `registry/tasks.py`."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import cv2
import ml_collections

from ferjax.analyzer import Analyzer
from ferjax.realtime import bench
from ferjax.realtime.pipeline import Pipeline

_log = logging.getLogger(__name__)


def build_pipeline(config: ml_collections.ConfigDict, detector_name: str | None = None,
                   tracking: bool | None = None) -> Pipeline:
    """The video pipeline of an experiment config, built by `ferjax.Analyzer` (the one
    construction path of every front-end); `tracking` as `Analyzer.pipeline` takes it."""
    cv2.setNumThreads(config.num_threads or os.cpu_count() or 1)
    return Analyzer.from_config(config, detector_name).pipeline(tracking)


def _out(workdir: str, name: str) -> str | None:
    if not name:
        return None
    return name if os.path.isabs(name) else os.path.join(workdir, name)


def realtime(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Expression recognition on a webcam, video file, stream or image folder."""
    Path(workdir).mkdir(parents=True, exist_ok=True)
    pipe = build_pipeline(config)
    src = config.source
    summary = pipe.run(int(src) if str(src).strip().isdigit() else src,
                       max_frames=config.max_frames or None,
                       video_out=_out(workdir, config.video_out),
                       jsonl_out=_out(workdir, config.jsonl_out),
                       display=config.display, warmup_frames=config.warmup_frames,
                       capture_kwargs={"reconnects": config.reconnects})
    summary["classifier"] = pipe.classifier_desc
    (Path(workdir) / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _add_ratios(rows: list[dict], peers: list[dict]) -> None:
    """Adds the fer package's FPS and detection rate on the same video to each row, and
    `fps_vs_fer` (our FPS over fer's) only where both sides found faces in some frames: a
    pipeline that finds no faces skips the classifier, so its speed is not comparable."""
    by_video = {p["video"]: p for p in peers if p.get("fps")}
    for r in rows:
        peer = by_video.get(r.get("video"))
        if not r.get("fps") or peer is None:
            continue
        r["fer_fps"], r["fer_detection_rate"] = peer["fps"], peer.get("detection_rate")
        if r.get("detection_rate") and peer.get("detection_rate"):
            r["fps_vs_fer"] = round(r["fps"] / peer["fps"], 2)


def realtime_bench(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Table II-style FPS benchmark: every detector over the configured videos."""
    Path(workdir).mkdir(parents=True, exist_ok=True)
    media = Path(os.path.expanduser(config.media_dir))
    videos = [str(media / v) for v in config.videos.split(",") if v]
    missing = [v for v in videos if not Path(v).is_file()]
    if missing:
        raise FileNotFoundError(f"benchmark videos not found: {', '.join(missing)} (set --config.media_dir)")
    descs = {}

    def make(name: str) -> Pipeline:  # tracked for the track-id count; smoothed only when configured
        p = build_pipeline(config, name, tracking=True)
        descs[name] = p.classifier_desc
        return p

    rows = bench.run_bench(make, config.detectors.split(","), videos,
                           config.max_frames or None, config.warmup_frames)
    for r in rows:
        r["classifier"] = descs.get(r["detector"], "")
    peers = []
    if config.peer_python:
        peers = bench.run_fer_peer(config.peer_python, videos, config.max_frames or None,
                                   config.warmup_frames)
        _add_ratios(rows, peers)
    table = bench.format_table(rows, peers)
    print(table)
    (Path(workdir) / "bench.md").write_text(table + "\n")
    (Path(workdir) / "bench.json").write_text(json.dumps(rows, indent=2))
    return {"rows": rows, "fer_peer": peers, "classifier": sorted(set(descs.values())), "table": str(Path(workdir) / "bench.md"),
            "cv2_threads": cv2.getNumThreads(), "cpu_count": os.cpu_count()}
