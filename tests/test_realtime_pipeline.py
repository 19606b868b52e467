"""The real-time loop end to end: crops, tracking, outputs, robustness, tasks and benchmark."""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import ml_collections
import numpy as np
import pytest

from ferjax.components.classifiers import EMOTIONS
from ferjax.realtime import align
from ferjax.realtime.bench import TIMED, format_table
from ferjax.realtime.classify import make_predictor
from ferjax.realtime.detect import Detection
from ferjax.realtime.pipeline import Pipeline
from ferjax.realtime.tracker import IoUTracker
from ferjax.registry import DETECTORS, TASKS
from conftest import require_detector

SHARED = Path(os.environ.get("FERJAX_SHARED", Path(__file__).resolve().parents[2] / "shared"))
MEDIA, MODELS = SHARED / "media", SHARED / "models"
FACE_VIDEO = MEDIA / "one_face_pexels_640x360.mp4"


@pytest.fixture(scope="module")
def predictor():
    return make_predictor()[0]  # the shipped classifier


def _yunet():
    require_detector("yunet")  # skips only when the file is absent; the code's own errors fail
    return DETECTORS.create("yunet", models_dir=str(MODELS))


def _need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"real video {path} not present")
    return path


def _first_frame(path: Path) -> np.ndarray:
    ok, frame = cv2.VideoCapture(str(_need(path))).read()
    assert ok
    return frame


def _synthetic_video(path: Path, n: int = 12) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (320, 240))
    for i in range(n):
        w.write(np.full((240, 320, 3), 40 + 10 * i, np.uint8))
    w.release()
    return path


def test_crop_levels_the_eyes_and_pads_at_borders():
    grey = np.zeros((200, 200), np.uint8)
    cv2.line(grey, (60, 80), (140, 120), 255, 5)  # a line through both "eyes", tilted ~26.6 degrees
    det = Detection((50, 50, 150, 150), 1.0, np.array([[60, 80], [140, 120], [100, 110], [70, 140], [130, 140]], float))
    crop = align.crop_face(grey, det)
    assert crop.shape == (48, 48) and crop.dtype == np.uint8
    rows = np.where(crop.max(axis=1) > 128)[0]
    assert rows.max() - rows.min() <= 6  # the line is now horizontal
    edge = align.crop_face(grey, Detection((-30, -30, 40, 40), 1.0))  # partly outside the frame
    assert edge.shape == (48, 48)
    assert align.crop_faces(grey, []).shape == (0, 48, 48)


def test_tracker_keeps_ids_and_smooths_probabilities():
    t = IoUTracker(alpha=0.5)
    p1, p2 = np.eye(7)[[3]], np.eye(7)[[0]]
    ids, s = t.update(np.array([[0, 0, 10, 10]]), p1)
    ids2, s2 = t.update(np.array([[1, 1, 11, 11]]), p2)
    assert ids == ids2 == [0]
    np.testing.assert_allclose(s2[0, [0, 3]], [0.5, 0.5])
    ids3, _ = t.update(np.array([[100, 100, 110, 110], [1, 1, 11, 11]]), np.vstack([p1, p1]))
    assert ids3 == [1, 0]


def test_realtime_task_writes_video_jsonl_and_summary(tmp_path):
    _yunet()
    from ferjax.experiments import realtime

    cfg = realtime.get_config("yunet")
    cfg.source = str(_need(FACE_VIDEO))
    cfg.models_dir = str(MODELS)
    cfg.max_frames = 24
    summary = TASKS.get("realtime")(cfg, str(tmp_path))
    assert summary["frames"] == 24 and summary["detection_rate"] >= 0.95 and summary["bad_frames"] == 0
    assert set(summary["stage_ms"]) >= {"decode", "detect", "preprocess", "predict", "draw"} and summary["fps"] > 0
    lines = [json.loads(l) for l in (tmp_path / "frames.jsonl").read_text().splitlines()]
    assert len(lines) == 24
    face = lines[5]["faces"][0]
    assert sum(face["probs"].values()) == pytest.approx(1.0, abs=1e-3) and face["label"] in EMOTIONS
    assert len(face["landmarks"]) == 5 and "track" in face
    cap = cv2.VideoCapture(str(tmp_path / "annotated.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 24
    assert json.loads((tmp_path / "summary.json").read_text())["frames"] == 24


def test_missing_camera_and_bad_file_are_reported_not_raised(tmp_path, predictor):
    pipe = Pipeline(DETECTORS.create("haar"), predictor, class_names=EMOTIONS)
    for source in (7, str(tmp_path / "nope.mp4")):
        s = pipe.run(source, display="no")
        assert s["frames"] == 0 and "error" in s


def test_frames_without_faces_and_no_recompilation(tmp_path, predictor):
    pipe = Pipeline(DETECTORS.create("haar"), predictor, class_names=EMOTIONS)
    s = pipe.run(str(_synthetic_video(tmp_path / "blank.mp4")), display="no",
                 jsonl_out=str(tmp_path / "f.jsonl"))
    assert s["frames"] == 12 and s["faces"] == 0 and s["detection_rate"] == 0.0
    compiled = predictor._apply._cache_size()
    for n in (1, 3, 7, 20, 40):  # every batch size maps onto a warmed-up bucket
        predictor(np.zeros((n, 48, 48), np.uint8))
    assert predictor._apply._cache_size() == compiled


def test_very_many_faces_are_batched(predictor):
    """A mosaic of 48 copies of a real face: more faces than the largest batch bucket."""
    frame = _first_frame(FACE_VIDEO)
    det = _yunet()
    (face,) = det(frame)
    x1, y1, x2, y2 = (int(v) for v in face.box)
    tile = cv2.resize(frame[max(0, y1 - 20):y2 + 20, max(0, x1 - 20):x2 + 20], (120, 120))
    mosaic = np.vstack([np.hstack([tile] * 8)] * 6)  # 960x720, 48 faces
    det.detect_width = None
    pipe = Pipeline(det, predictor, class_names=EMOTIONS)
    result, out = pipe.process(0, mosaic)
    assert len(result.detections) >= 40 and result.probs.shape == (len(result.detections), 7)
    assert out.shape == mosaic.shape


def test_real_crowd_video(predictor):
    det = _yunet()
    det.detect_width = 960
    pipe = Pipeline(det, predictor, class_names=EMOTIONS)
    s = pipe.run(str(_need(MEDIA / "many_faces_1080p.mp4")), max_frames=4, display="no")
    assert s["frames"] == 4 and s["max_faces_in_frame"] >= 3


def test_bench_task_prints_a_table_ii(tmp_path):
    _yunet()
    from ferjax.experiments import realtime_bench

    cfg = realtime_bench.get_config("quick")
    cfg.media_dir, cfg.models_dir = str(MEDIA), str(MODELS)
    cfg.videos = "one_face_short.mp4"
    cfg.detectors = "yunet,haar"
    cfg.max_frames = 15
    _need(MEDIA / cfg.videos)
    out = TASKS.get("realtime_bench")(cfg, str(tmp_path))
    assert [r["detector"] for r in out["rows"]] == ["yunet", "haar"]
    assert all(r["frames"] == 15 and r["fps"] > 0 for r in out["rows"])
    lines = (tmp_path / "bench.md").read_text().splitlines()
    for r in out["rows"]:  # each measured row, with its own figures, is in the table
        assert r["classifier"]  # the row says which classifier ran, and on which runtime
        runtime = "onnxruntime-cpu" if r["classifier"].endswith("(onnxruntime)") else "jax-cpu"
        assert r["backend"] == f"opencv-cpu + {runtime}"
        (line,) = [x for x in lines
                   if x.startswith(f"| {r['detector']} | {r['backend']} | {r['classifier']} | {r['video']} | 15 |")]
        stages = [r[f"{k}_ms"] for k in TIMED]
        assert f"| {r['fps']:.1f} |" in line and f"| {100 * r['detection_rate']:.1f}% |" in line
        assert f"| {sum(stages):.2f} |" in line and all(f"| {v:.2f} |" in line for v in stages)
    assert json.loads((tmp_path / "bench.json").read_text()) == out["rows"]


def test_format_table_reports_skipped_detectors():
    table = format_table([{"detector": "mtcnn", "skipped": "weights missing"}])
    assert "skipped: weights missing" in table


def test_fps_ratio_stands_beside_detection_rates_and_only_where_both_find_faces():
    from ferjax.tasks.realtime import _add_ratios

    stages = {f"{k}_ms": 1.0 for k in TIMED}
    rows = [{"detector": "haar", "backend": "b", "classifier": "c", "video": v, "frames": 10, "fps": fps,
             "detection_rate": rate, **stages} for v, fps, rate in (("a.mp4", 30.0, 0.96), ("b.mp4", 31.0, 0.0))]
    peers = [{"detector": "fer", "backend": "k", "video": v, "frames": 10, "fps": fps, "detection_rate": rate}
             for v, fps, rate in (("a.mp4", 15.0, 0.998), ("b.mp4", 1.1, 1.0))]
    _add_ratios(rows, peers)
    assert rows[0]["fps_vs_fer"] == 2.0 and "fps_vs_fer" not in rows[1]
    table = format_table(rows, peers)
    assert "| 2.00x (faces in 96.0% / 99.8% of frames) |" in table
    assert "| not compared (faces in 0.0% / 100.0% of frames) |" in table and "28." not in table


def test_experiment_configs_name_registered_components():
    from ferjax.experiments import realtime, realtime_bench

    for variant in (None, "ssd", "haar", "mtcnn"):
        cfg = realtime.get_config(variant)
        assert cfg.task in TASKS and cfg.detector in DETECTORS
        assert isinstance(cfg, ml_collections.ConfigDict)
    assert all(d in DETECTORS for d in realtime_bench.get_config(None).detectors.split(","))
