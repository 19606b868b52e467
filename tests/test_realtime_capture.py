"""Frame sources: video files, image folders, streams and cameras that fail in every way."""
from __future__ import annotations

import http.server
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from ferjax.images import as_bgr
from ferjax.realtime.capture import SourceError, kind_of, open_source


def write_video(path: Path, n: int = 20, size: tuple[int, int] = (160, 120), fourcc: str = "mp4v") -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 25.0, size)
    assert w.isOpened()
    for i in range(n):
        frame = np.full((size[1], size[0], 3), (i * 12) % 256, np.uint8)
        cv2.putText(frame, str(i), (10, 60), cv2.FONT_HERSHEY_SIMPLEX, 1.5, (255, 255, 255), 3)
        w.write(frame)
    w.release()
    return path


def test_kinds():
    assert kind_of(0) == kind_of("1") == "camera"
    assert kind_of("rtsp://host/stream") == kind_of("http://host/x.mjpg") == "stream"
    assert kind_of("clip.mp4") == "file"


def test_video_file_reads_every_frame(tmp_path):
    src = open_source(write_video(tmp_path / "v.mp4", 20))
    frames = list(src)
    assert len(frames) == 20 and frames[0][1].shape == (120, 160, 3)
    assert src.stats.bad_frames == 0 and src.stats.frames == 20 and src.fps == pytest.approx(25.0)


@pytest.mark.parametrize("make", [
    lambda p: p / "missing.mp4",
    lambda p: (p / "text.mp4").write_bytes(b"this is not a video" * 100) and p / "text.mp4",
    lambda p: (p / "empty").mkdir() or p / "empty",
])
def test_unreadable_sources_raise_source_error(tmp_path, make):
    with pytest.raises(SourceError):
        open_source(make(tmp_path))


def test_missing_camera_raises_source_error():
    with pytest.raises(SourceError, match="camera 7"):
        open_source(7)


def test_unreachable_stream_raises_source_error():
    with pytest.raises(SourceError, match="stream"):
        open_source("http://127.0.0.1:9/none.mp4", timeout_ms=2000)


def test_corrupted_video_skips_and_counts_bad_frames(tmp_path):
    path = write_video(tmp_path / "c.avi", 40, fourcc="MJPG")
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    for start in (len(data) // 3, len(data) // 2, 2 * len(data) // 3):  # garble three JPEG payloads
        data[start:start + 400] = rng.integers(0, 256, 400, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    src = open_source(path)
    frames = list(src)
    s = src.stats
    assert 0 < len(frames) < 40 and s.frames == len(frames)
    assert len(frames) + s.bad_frames + s.missing_at_end == 40  # every frame accounted for


def test_truncated_video_reports_missing_frames(tmp_path):
    path = write_video(tmp_path / "t.avi", 40, fourcc="MJPG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    src = open_source(path)
    frames = list(src)
    n = len(frames)
    assert 0 < n < 40 and [i for i, _ in frames] == list(range(n))
    assert src.stats.missing_at_end == 40 - n and src.stats.bad_frames == 0


def test_image_folder_skips_unreadable_and_converts_grey(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((50, 60, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "b.png"), np.zeros((50, 60), np.uint8))
    (tmp_path / "c.png").write_bytes(b"\x89PNG broken")
    cv2.imwrite(str(tmp_path / "d.png"), np.zeros((50, 60, 4), np.uint8))
    src = open_source(tmp_path)
    frames = list(src)
    assert [i for i, _ in frames] == [0, 1, 3] and all(f.shape == (50, 60, 3) for _, f in frames)
    assert src.stats.bad_frames == 1 and "c.png" in src.stats.errors[0]


def test_as_bgr_rejects_malformed_frames():
    assert as_bgr(None) is None and as_bgr(np.zeros((0, 5, 3), np.uint8)) is None
    assert as_bgr(np.zeros((4, 4, 3), np.uint8)) is None          # too small to hold a face
    assert as_bgr(np.zeros((20, 20, 3), np.float32)) is None
    assert as_bgr(np.zeros((20, 20, 2), np.uint8)) is None
    assert as_bgr(np.zeros((20, 20), np.uint16)).shape == (20, 20, 3)


def test_http_stream_that_drops_is_reconnected_then_given_up(tmp_path):
    """A server sends half of a video once, then refuses: the reader keeps the frames it got,
    tries to reconnect, and reports the loss instead of raising."""
    video = write_video(tmp_path / "s.avi", 60, fourcc="MJPG").read_bytes()
    served = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if served:
                self.send_error(404)
                return
            served.append(1)
            self.send_response(200)
            self.send_header("Content-Type", "video/x-msvideo")
            self.send_header("Content-Length", str(len(video)))
            self.end_headers()
            self.wfile.write(video[: len(video) // 2])  # the connection drops half way
            self.close_connection = True

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        src = open_source(f"http://127.0.0.1:{server.server_port}/s.avi", reconnects=2,
                          reconnect_delay=0.05, timeout_ms=2000)
        frames = list(src)
    finally:
        server.shutdown()
    assert 0 < len(frames) < 60
    assert src.stats.reconnects == 2 and "lost" in src.stats.errors[-1]
