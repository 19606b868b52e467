"""`ferjax analyze` end to end in a subprocess: a folder of real photos with a broken file, a
real video, JSON lines and annotated copies; the experiment entry point still parses."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

from conftest import MEDIA, run_cli

ONE_FACE = MEDIA / "one_face_pexels_640x360.mp4"
SHORT = MEDIA / "one_face_short.mp4"


def test_analyze_command_photos_folder_and_video(tmp_path):
    for v in (ONE_FACE, SHORT):
        if not v.is_file():
            pytest.skip(f"real video {v} not present")
    photos = tmp_path / "photos"
    photos.mkdir()
    cap = cv2.VideoCapture(str(ONE_FACE))
    ok, frame = cap.read()
    assert ok
    cv2.imwrite(str(photos / "a.jpg"), frame)
    cv2.imwrite(str(photos / "b_grey.png"), cv2.cvtColor(cv2.resize(frame, (480, 270)), cv2.COLOR_BGR2GRAY))
    (photos / "c_broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (photos / "notes.txt").write_text("ignored: not an image")
    out, jsonl = tmp_path / "out", tmp_path / "faces.jsonl"
    proc = run_cli("analyze", str(photos), str(SHORT), "--max-frames", "3", "--out", str(out),
                   "--jsonl", str(jsonl), check=False, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]  # one file failed, the others were analysed
    assert "1 errors" in proc.stderr and "2 photos" in proc.stderr
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    by_name = {Path(r["path"]).name: r for r in rows if "frame" not in r}
    assert len(by_name["a.jpg"]["faces"]) == 1 and len(by_name["b_grey.png"]["faces"]) == 1
    assert (by_name["a.jpg"]["width"], by_name["a.jpg"]["height"]) == (640, 360)
    assert "c_broken.jpg" in by_name["c_broken.jpg"]["error"] and "not a decodable image" in by_name["c_broken.jpg"]["error"]
    frames = [r for r in rows if "frame" in r]
    assert [r["frame"] for r in frames] == [0, 1, 2] and all(r["faces"][0]["track"] == 0 for r in frames)
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg", "b_grey.png", "one_face_short.mp4"]
    annotated = cv2.imread(str(out / "a.jpg"))
    assert annotated.shape == frame.shape and (annotated != cv2.imread(str(photos / "a.jpg"))).any()
    assert int(cv2.VideoCapture(str(out / "one_face_short.mp4")).get(cv2.CAP_PROP_FRAME_COUNT)) == 3


def test_analyze_command_usage_errors(tmp_path):
    proc = run_cli("analyze", str(tmp_path), "--detector", "no_such_detector", check=False, timeout=120)
    assert proc.returncode == 2 and "unknown detector 'no_such_detector'" in proc.stderr
    assert run_cli("--experiment=realtime", "--print_config").stdout.count("detector: yunet") == 1
