"""`ferjax analyze` end to end in a subprocess: a folder of real photos with broken files and a
video that decodes no frame, a real video, JSON lines and annotated copies; the experiment entry
point still parses."""
from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import cv2
import pytest

from conftest import MEDIA, run_cli

ONE_FACE = MEDIA / "one_face_pexels_640x360.mp4"
SHORT = MEDIA / "one_face_short.mp4"


def _no_frames_video(src: Path, dst: Path) -> Path:
    """A copy of an MP4 with its media data zeroed: it opens (the index is intact) and announces
    its frames, but none decodes."""
    data = bytearray(src.read_bytes())
    at = 0
    while at + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, at)
        if kind == b"mdat":
            data[at + 8:at + size] = bytes(size - 8)
        at += size
    dst.write_bytes(bytes(data))
    cap = cv2.VideoCapture(str(dst))
    assert cap.isOpened() and not cap.read()[0], "the zeroed video should open and decode nothing"
    return dst


def _tall_truncated_bmp() -> bytes:
    """A 16 x 1,100,000 BMP (within the pixel limit) cut after 200 KB: OpenCV refuses the side
    with cv2.error (which was a traceback that stopped the folder), Pillow finds it truncated."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (16, 1_100_000), 90).save(buf, format="BMP")
    return buf.getvalue()[:200_000]


def test_analyze_command_photos_folder_and_video(tmp_path):
    """Every bad file (undecodable photo, photo OpenCV and Pillow both refuse, video with no
    decodable frame) is one error line, and the rest of the folder goes on."""
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
    (photos / "a_tall_truncated.bmp").write_bytes(_tall_truncated_bmp())
    _no_frames_video(SHORT, photos / "d_no_frames.mp4")
    (photos / "notes.txt").write_text("ignored: not an image")
    out, jsonl = tmp_path / "out", tmp_path / "faces.jsonl"
    proc = run_cli("analyze", str(photos), str(SHORT), "--max-frames", "3", "--out", str(out),
                   "--jsonl", str(jsonl), check=False, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 1, proc.stderr[-2000:]  # three files failed, the others were analysed
    assert "3 errors" in proc.stderr and "2 photos" in proc.stderr
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    by_name = {Path(r["path"]).name: r for r in rows if "frame" not in r}
    assert len(by_name["a.jpg"]["faces"]) == 1 and len(by_name["b_grey.png"]["faces"]) == 1
    assert (by_name["a.jpg"]["width"], by_name["a.jpg"]["height"]) == (640, 360)
    assert "c_broken.jpg" in by_name["c_broken.jpg"]["error"] and "not a decodable image" in by_name["c_broken.jpg"]["error"]
    tall = by_name["a_tall_truncated.bmp"]["error"]
    assert tall.startswith(f"{photos / 'a_tall_truncated.bmp'}: truncated or corrupt image data"), tall
    assert "OpenCV" not in tall and "\n" not in tall
    assert by_name["d_no_frames.mp4"] == {"path": str(photos / "d_no_frames.mp4"),
                                          "error": f"{photos / 'd_no_frames.mp4'}: the video opens but no frame "
                                                   "could be decoded"}
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
