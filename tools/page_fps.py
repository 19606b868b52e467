"""Frames per second of the in-browser page (/local/ of `ferjax serve`) in headless Chromium.

    python tools/page_fps.py [--seconds 20] [--video ../shared/media/one_face_pexels_640x360.mp4]
                             [--threads N] [--screenshot docs/web_page_local.png] [--json FILE]

Serves the page with `ferjax serve`'s app (BackgroundServer, loopback), gives Chromium a 640x480
fake camera playing the video (a Y4M file: frames padded from 640x360, 30 fps), opens
/local/?autostart=1, waits for the first face, then measures for --seconds: FPS is frames analysed
per second of wall time, with the wasm thread count and the mean per-stage milliseconds (detect,
preprocess, predict, and the whole analyze call). Also checks that the server analysed nothing.
Prints one JSON object. tests/test_browser_page.py drives Chromium with this module's helpers.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VIDEO = REPO.parent / "shared" / "media" / "one_face_pexels_640x360.mp4"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


class Unavailable(RuntimeError):
    """Something this measurement needs is missing (Chromium, the video); tests skip on it."""


def write_y4m(video: Path, out: Path, frames: int = 150, step: int = 1, size: tuple[int, int] = (640, 480),
              fps: int = 30) -> Path:
    """`frames` frames (every `step`-th) of `video`, letterboxed to `size`, as a Y4M file (the
    format of Chromium's --use-file-for-fake-video-capture)."""
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise Unavailable(f"cannot read video {video}")
    w, h = size
    with open(out, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        i = n = 0
        while n < frames:
            ok, frame = cap.read()
            if not ok:
                break
            if i % step == 0:
                scale = min(w / frame.shape[1], h / frame.shape[0])
                fw, fh = round(frame.shape[1] * scale) // 2 * 2, round(frame.shape[0] * scale) // 2 * 2
                canvas = np.zeros((h, w, 3), np.uint8)
                y, x = (h - fh) // 2, (w - fw) // 2
                canvas[y:y + fh, x:x + fw] = cv2.resize(frame, (fw, fh), interpolation=cv2.INTER_AREA)
                f.write(b"FRAME\n" + cv2.cvtColor(canvas, cv2.COLOR_BGR2YUV_I420).tobytes())
                n += 1
            i += 1
    if n < frames:
        raise Unavailable(f"{video}: only {n} frames (expected {frames} every {step})")
    return out


def find_browser() -> str:
    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        raise Unavailable("Chromium not installed (apt-get install chromium)")
    return browser


class Chromium:
    """Headless Chromium on `url` with `y4m` as its camera, driven over the DevTools protocol."""

    def __init__(self, url: str, y4m: Path, profile: Path, window: tuple[int, int] = (900, 900)):
        import websockets  # noqa: F401, PLC0415  (the serve extra; fails early when missing)

        browser = find_browser()
        self.url = url
        self.proc = subprocess.Popen([
            browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--mute-audio", "--no-first-run",
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={y4m}", "--remote-debugging-port=0", f"--user-data-dir={profile}",
            f"--window-size={window[0]},{window[1]}", url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            port_file = profile / "DevToolsActivePort"
            deadline = time.monotonic() + 60
            while not port_file.is_file() or not port_file.read_text().strip():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise Unavailable(f"{browser} did not start (exit {self.proc.poll()})")
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            pages: list = []
            while not pages:
                if time.monotonic() > deadline:
                    raise Unavailable(f"{browser} opened no page for {url}")
                pages = [t for t in json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json"))
                         if t.get("type") == "page" and t.get("url", "").startswith(url.split("?")[0])]
                time.sleep(0.1)
            self.ws_url = pages[0]["webSocketDebuggerUrl"]
        except BaseException:
            self.close()
            raise

    async def _call(self, method: str, params: dict) -> dict:
        import websockets  # noqa: PLC0415

        async with websockets.connect(self.ws_url, max_size=None) as ws:
            await ws.send(json.dumps({"id": 1, "method": method, "params": params}))
            while True:
                msg = json.loads(await ws.recv())
                if msg.get("id") == 1:
                    return msg.get("result", {})

    def evaluate(self, expression: str) -> Any:
        """The JSON-able value of a JavaScript expression in the page."""
        result = asyncio.run(self._call("Runtime.evaluate", {"expression": expression, "returnByValue": True}))
        return result.get("result", {}).get("value")

    def state(self) -> dict:
        """The page's window.ferjaxLocal and its status line."""
        return json.loads(self.evaluate(
            "JSON.stringify({...(window.ferjaxLocal || {}), "
            "status: (document.getElementById('status') || {}).textContent})") or "{}")

    def screenshot(self) -> bytes:
        return base64.b64decode(asyncio.run(self._call("Page.captureScreenshot", {"format": "png"}))["data"])

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class RequestLog:
    """ASGI wrapper counting (scope type, path) of every request the app receives."""

    def __init__(self, app: Any):
        self.app, self.seen = app, collections.Counter()
        self.state = getattr(app, "state", None)  # server_config reads app.state.max_body

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            self.seen[(scope["type"], scope["path"])] += 1
        await self.app(scope, receive, send)

    def server_inference(self) -> list[str]:
        """Requests that would have analysed on the server: POST /v1/analyze, the WebSocket."""
        return [f"{kind} {path}" for (kind, path) in self.seen if kind == "websocket" or path.startswith("/v1/analyze")]


def start_server(api_key: str | None = None) -> tuple[Any, RequestLog, Any]:
    """(BackgroundServer, its RequestLog, the app) of `ferjax serve`'s app with the default analyzer."""
    from ferjax.analyzer import default_analyzer  # noqa: PLC0415
    from ferjax.serve import BackgroundServer, create_app  # noqa: PLC0415

    app = create_app(default_analyzer(), api_key=api_key)
    log = RequestLog(app)
    return BackgroundServer(log), log, app


def wait_for(page: Chromium, ok, timeout_s: float, poll_s: float = 0.5) -> dict:
    """Polls page.state() until ok(state) or the timeout; returns the last state."""
    deadline, state = time.monotonic() + timeout_s, {}
    while time.monotonic() < deadline:
        state = page.state()
        if ok(state) or state.get("error"):
            break
        time.sleep(poll_s)
    return state


def small_png(png: bytes, width: int = 720, colours: int = 128) -> bytes:
    """A screenshot shrunk to `width` and reduced to a palette (a small file for the docs)."""
    from PIL import Image  # noqa: PLC0415
    import io  # noqa: PLC0415

    img = Image.open(io.BytesIO(png)).convert("RGB")
    if img.width > width:
        img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
    out = io.BytesIO()
    img.quantize(colours, method=Image.Quantize.MEDIANCUT).save(out, "PNG", optimize=True)
    return out.getvalue()


def measure(video: Path, seconds: float, threads: int | None, screenshot: Path | None) -> dict:
    from ferjax import export_web  # noqa: PLC0415

    work = Path(tempfile.mkdtemp(prefix="ferjax-page-fps-"))
    try:
        y4m = write_y4m(video, work / "camera.y4m")
        server, log, app = start_server()
        try:
            t = time.perf_counter()
            app.state.local_page.static()
            app.state.local_page.models()  # the classifier's ONNX export (first use), not measured
            build_s = time.perf_counter() - t
            query = "autostart=1" + (f"&threads={threads}" if threads else "")
            with Chromium(f"{server.url}/local/?{query}", y4m, work / "profile") as page:
                first = wait_for(page, lambda s: s.get("framesWithFaces", 0) > 0, 120)
                if not first.get("framesWithFaces"):
                    raise RuntimeError(f"the page drew no face: {first}")
                time.sleep(2)  # past the first frames (wasm warm-up)
                a, t0 = page.state(), time.monotonic()
                time.sleep(seconds)
                b, t1 = page.state(), time.monotonic()
                if screenshot is not None:
                    screenshot.parent.mkdir(parents=True, exist_ok=True)
                    screenshot.write_bytes(small_png(page.screenshot()))
        finally:
            server.stop()
        frames = b["frames"] - a["frames"]
        stage = {k: round((b["sumMs"][k] - a["sumMs"][k]) / max(frames, 1), 2) for k in b["sumMs"]}
        return {"fps": round(frames / (t1 - t0), 2), "frames": frames, "seconds": round(t1 - t0, 1),
                "threads": b["threads"], "cross_origin_isolated": b["crossOriginIsolated"], "backend": b["backend"],
                "stage_ms": stage, "faces_last_frame": len(b["lastFaces"]),
                "distinct_frames_with_faces": b["distinctFrames"], "errors": b["errors"],
                "server_inference_requests": log.server_inference(), "page_build_s": round(build_s, 1),
                "model": b["model"], "camera": "640x480 Y4M at 30 fps", "video": video.name,
                "cpus": os.cpu_count(), "onnxruntime_web_files": list(export_web.ORT_FILES)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--video", type=Path, default=DEFAULT_VIDEO, help="video played by the fake camera")
    p.add_argument("--seconds", type=float, default=20, help="measurement time (default %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="wasm threads (default: the page's choice)")
    p.add_argument("--screenshot", type=Path, default=None, help="write a small PNG of the page here")
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    a = p.parse_args(argv)
    try:
        result = measure(a.video, a.seconds, a.threads, a.screenshot)
    except Unavailable as e:
        print(f"page_fps: {e}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
