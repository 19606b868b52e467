"""The live page in a real headless Chromium: its fake camera plays frames of a real video
(.y4m), the page streams them over the WebSocket, and labelled faces are drawn for distinct
frames. Driven through the DevTools protocol; skips with the reason where Chromium is missing."""
from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the `serve` extra is not installed (pip install 'ferjax[serve]')")
websockets = pytest.importorskip("websockets", reason="the `serve` extra is not installed")

from conftest import MEDIA  # noqa: E402
from ferjax.analyzer import default_analyzer  # noqa: E402
from ferjax.serve import BackgroundServer, create_app  # noqa: E402

ONE_FACE = MEDIA / "one_face_pexels_640x360.mp4"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# The fake camera's Y4M writer is tools/page_fps.py's (the in-browser page's measurement uses it too).
_spec = importlib.util.spec_from_file_location("page_fps",
                                               Path(__file__).resolve().parents[1] / "tools" / "page_fps.py")
page_fps = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(page_fps)


async def _cdp(ws_url: str, expression: str) -> object:
    async with websockets.connect(ws_url, max_size=None) as ws:
        await ws.send(json.dumps({"id": 1, "method": "Runtime.evaluate",
                                  "params": {"expression": expression, "returnByValue": True}}))
        while True:
            msg = json.loads(await ws.recv())
            if msg.get("id") == 1:
                return msg["result"]["result"].get("value")


async def _screenshot(ws_url: str) -> bytes:
    async with websockets.connect(ws_url, max_size=None) as ws:
        await ws.send(json.dumps({"id": 2, "method": "Page.captureScreenshot", "params": {"format": "png"}}))
        while True:
            msg = json.loads(await ws.recv())
            if msg.get("id") == 2:
                return base64.b64decode(msg["result"]["data"])


def run_page(url: str, y4m: Path, profile: Path, min_frames: int = 30, timeout_s: float = 90,
             screenshot: Path | None = None) -> dict:
    """Opens `url` in headless Chromium with `y4m` as the camera; returns the page's stats once
    `min_frames` distinct frames were drawn with faces (or at the timeout)."""
    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        pytest.skip("Chromium not installed (apt-get install chromium)")
    proc = subprocess.Popen([
        browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--mute-audio", "--no-first-run",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={y4m}", "--remote-debugging-port=0", f"--user-data-dir={profile}",
        "--window-size=900,700", url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.is_file() or not port_file.read_text().strip():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"{browser} did not start (exit {proc.poll()})")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        pages = []
        while not pages:
            pages = [t for t in json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json"))
                     if t.get("type") == "page" and t.get("url", "").startswith(url.split("?")[0])]
            time.sleep(0.1)
        ws_url = pages[0]["webSocketDebuggerUrl"]
        t0, stats = time.monotonic(), {}
        while time.monotonic() - t0 < timeout_s:
            stats = json.loads(asyncio.run(_cdp(ws_url, "JSON.stringify(window.ferjaxStats || {})")) or "{}")
            if stats.get("distinctDrawn", 0) >= min_frames:
                break
            time.sleep(0.5)
        stats["status"] = asyncio.run(_cdp(ws_url, "document.getElementById('status').textContent"))
        stats["seconds"] = round(time.monotonic() - t0, 1)
        if screenshot is not None:
            screenshot.write_bytes(asyncio.run(_screenshot(ws_url)))
        return stats
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_live_page_draws_labelled_faces_for_distinct_camera_frames(tmp_path):
    if not ONE_FACE.is_file():
        pytest.skip(f"real video {ONE_FACE} not present")
    y4m = page_fps.write_y4m(ONE_FACE, tmp_path / "camera.y4m", frames=60, step=3, size=(640, 360), fps=25)
    server = BackgroundServer(create_app(default_analyzer()))
    try:
        shot = tmp_path / "page.png"
        stats = run_page(f"{server.url}/?autostart=1", y4m, tmp_path / "profile", screenshot=shot)
    finally:
        server.stop()
    assert stats.get("distinctDrawn", 0) >= 30, stats
    assert stats["errors"] == 0 and stats["lastLabels"] and stats["fps"] > 0, stats
    assert stats["status"] == "connected", stats
    png = cv2.imdecode(np.frombuffer(shot.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    assert png is not None and png.shape[0] > 300
