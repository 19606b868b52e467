"""The HTTP service on a real loopback socket: answers, every kind of bad request (4xx with a
reason, never a 500), API keys, batching of concurrent requests, the address/port checks of
`python -m ferjax.serve`, the WebSocket the page uses, and a short load run with zero errors."""
from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import urllib.parse
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the `serve` extra is not installed (pip install 'ferjax[serve]')")
pytest.importorskip("uvicorn", reason="the `serve` extra is not installed (pip install 'ferjax[serve]')")

from conftest import MEDIA  # noqa: E402
from ferjax.analyzer import default_analyzer  # noqa: E402
from ferjax.serve import BackgroundServer, create_app  # noqa: E402
from ferjax.serve_bench import bench, video_frames  # noqa: E402

ONE_FACE = MEDIA / "one_face_pexels_640x360.mp4"
KEY = "s3cret-key"


def _need_video() -> Path:
    if not ONE_FACE.is_file():
        pytest.skip(f"real video {ONE_FACE} not present")
    return ONE_FACE


@pytest.fixture(scope="module")
def frames() -> list[bytes]:
    return video_frames(str(_need_video()), 24)


@pytest.fixture(scope="module")
def server():
    s = BackgroundServer(create_app(default_analyzer(), max_body=1_000_000, max_pixels=4_000_000))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def keyed():
    s = BackgroundServer(create_app(default_analyzer(), api_key=KEY))
    yield s
    s.stop()


def call(url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    try:
        return resp.status, json.loads(raw)
    except ValueError:
        return resp.status, raw.decode(errors="replace")


def _multipart(field: str, filename: str | None, data: bytes) -> tuple[bytes, dict]:
    boundary = "ferjaxboundary"
    disp = f'form-data; name="{field}"' + (f'; filename="{filename}"' if filename else "")
    body = (f"--{boundary}\r\nContent-Disposition: {disp}\r\nContent-Type: image/jpeg\r\n\r\n").encode() + data + \
        f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def test_analyze_raw_and_multipart_models_and_health(server, frames):
    status, out = call(server.url, "POST", "/v1/analyze", frames[3], {"Content-Type": "image/jpeg"})
    assert status == 200 and (out["width"], out["height"]) == (640, 360) and len(out["faces"]) == 1
    face = out["faces"][0]
    assert sum(face["probs"].values()) == pytest.approx(1.0, abs=1e-3) and face["label"] in face["probs"]
    body, headers = _multipart("image", "f.jpg", frames[3])
    status, out2 = call(server.url, "POST", "/v1/analyze", body, headers)
    assert status == 200 and out2["faces"][0]["box"] == face["box"]
    status, fast = call(server.url, "POST", "/v1/analyze?mode=video", frames[3], {"Content-Type": "image/jpeg"})
    assert status == 200 and len(fast["faces"]) == 1
    blank = cv2.imencode(".png", np.full((120, 160, 3), 90, np.uint8))[1].tobytes()
    assert call(server.url, "POST", "/v1/analyze", blank, {"Content-Type": "image/png"}) [1]["faces"] == []
    status, models = call(server.url, "GET", "/v1/models")
    assert status == 200 and models["detector"] == "yunet" and "yunet" in models["detectors"]
    assert models["model"] in models["models"] and len(models["classes"]) == 7
    assert models["backend"] in ("jax", "onnxruntime")
    status, health = call(server.url, "GET", "/healthz")
    assert status == 200 and health["status"] == "ok" and health["requests"] >= 4


def _bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A PNG of 16x16 pixels whose header declares `width` x `height`."""
    png = bytearray(cv2.imencode(".png", np.zeros((16, 16, 3), np.uint8))[1].tobytes())
    ihdr = struct.pack(">II", width, height) + bytes(png[24:29])
    png[16:29] = ihdr
    png[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(png)


@pytest.mark.parametrize("case, status, reason", [
    ("garbage", 400, "not a decodable image"),
    ("empty", 400, "empty request body"),
    ("json", 415, "unsupported Content-Type"),
    ("no_type", 415, "unsupported Content-Type"),
    ("too_large", 413, "exceeds the limit"),
    ("pixel_bomb", 413, "exceeds"),
    ("over_max_pixels", 413, "exceeds the limit"),
    ("multipart_no_file", 400, "no file field"),
    ("multipart_broken", 400, "multipart"),
    ("bad_mode", 400, "mode must be"),
    ("get", 405, "Method Not Allowed"),
    ("unknown_path", 404, "Not Found"),
])
def test_bad_requests_get_a_4xx_with_a_reason(server, case, status, reason):
    jpeg = {"Content-Type": "image/jpeg"}
    method, path, body, headers = "POST", "/v1/analyze", b"", jpeg
    if case == "garbage":
        body = b"\x00\x01garbage" * 100
    elif case == "json":
        body, headers = b'{"image": "x"}', {"Content-Type": "application/json"}
    elif case == "no_type":
        body, headers = b"\xff\xd8\xff", {}
    elif case == "too_large":
        body = b"\xff" * 1_000_001
    elif case == "pixel_bomb":
        body, headers = _bomb_png(), {"Content-Type": "image/png"}
    elif case == "over_max_pixels":
        body, headers = _bomb_png(2_500, 2_000), {"Content-Type": "image/png"}
    elif case == "multipart_no_file":
        body, headers = _multipart("comment", None, b"hello")
    elif case == "multipart_broken":
        body, headers = b"--nope\r\nbroken", {"Content-Type": "multipart/form-data"}
    elif case == "bad_mode":
        path, body = "/v1/analyze?mode=fast", b"\xff\xd8\xff"
    elif case == "get":
        method = "GET"
    elif case == "unknown_path":
        path = "/v2/analyze"
    got, out = call(server.url, method, path, body, headers)
    assert got == status and reason in out["error"], (case, got, out)


def test_api_key_is_checked_on_every_request(keyed, frames):
    jpeg = {"Content-Type": "image/jpeg"}
    assert call(keyed.url, "POST", "/v1/analyze", frames[0], jpeg)[0] == 401
    assert call(keyed.url, "POST", "/v1/analyze", frames[0], {**jpeg, "X-API-Key": "wrong"})[0] == 401
    assert call(keyed.url, "GET", "/v1/models")[0] == 401
    assert call(keyed.url, "POST", "/v1/analyze", frames[0], {**jpeg, "X-API-Key": KEY})[0] == 200
    assert call(keyed.url, "GET", "/v1/models", headers={"Authorization": f"Bearer {KEY}"})[0] == 200


def test_concurrent_requests_are_batched(server, frames):
    before = call(server.url, "GET", "/healthz")[1]
    results = [None] * 16

    def one(i):
        results[i] = call(server.url, "POST", "/v1/analyze?mode=video", frames[i], {"Content-Type": "image/jpeg"})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(s == 200 and len(o["faces"]) == 1 for s, o in results)
    after = call(server.url, "GET", "/healthz")[1]
    assert after["requests"] - before["requests"] == 16
    assert after["batches"] - before["batches"] < 16 and after["max_batch"] >= 2  # shared predicts


def test_websocket_answers_each_frame_and_survives_bad_ones(server, frames):
    websockets = pytest.importorskip("websockets")

    async def session():
        url = server.url.replace("http://", "ws://") + "/v1/ws"
        async with websockets.connect(url) as ws:
            out = []
            for msg in (frames[1], b"not an image", "text", b"\xff" * 1_000_001, frames[2]):
                await ws.send(msg)
                out.append(json.loads(await ws.recv()))
        async with websockets.connect(url) as ws:  # leaves while its frame is being analysed
            await ws.send(frames[3])
        return out

    ok1, bad, text, big, ok2 = asyncio.run(session())
    assert len(ok1["faces"]) == 1 and len(ok2["faces"]) == 1
    assert bad["status"] == 400 and "decodable" in bad["error"] and "binary" in text["error"]
    assert "exceeds" in big["error"]
    status, out = call(server.url, "POST", "/v1/analyze", frames[4], {"Content-Type": "image/jpeg"})
    assert status == 200 and len(out["faces"]) == 1  # the disconnect left the service working


def _serve(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("FERJAX_API_KEY", None)
    return subprocess.run([sys.executable, "-m", "ferjax.serve", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_command_refuses_public_bind_without_key_and_reports_port_in_use():
    proc = _serve("--host", "0.0.0.0", "--port", "0")
    assert proc.returncode == 2 and "API key" in proc.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        proc = _serve("--port", str(busy.getsockname()[1]))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "already in use" in lines[0], proc.stderr


def test_short_load_run_has_zero_errors(server, frames):
    rows = bench(server.url, frames, clients=(1, 8), requests=24, max_seconds=60, warmup=2)
    assert [r["clients"] for r in rows] == [1, 8]
    assert all(r["errors"] == 0 and r["ok"] == 24 for r in rows), rows
    with pytest.raises(ValueError, match="only targets this machine"):
        bench("http://example.com:80", frames, (1,), 1, 1)
