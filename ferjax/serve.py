"""HTTP service: `python -m ferjax.serve [--host H] [--port P] [--detector NAME] [--model NAME]`.

    POST /v1/analyze   raw image bytes (Content-Type image/* or application/octet-stream) or
                       multipart/form-data with a file field -> {"faces": [...], "width", "height", ...};
                       ?mode=video detects at the detector's fast working width (camera frames),
                       the default ?mode=photo at full resolution up to 2048 px
    GET  /v1/models    the loaded detector and model, and every registered one
    GET  /healthz      liveness and batching counters
    GET  /             the live web page (camera -> WebSocket /v1/ws -> boxes and labels)

Needs the optional extra `serve` (`pip install 'ferjax[serve]'`: FastAPI + uvicorn). Binds to
127.0.0.1 by default; any other address requires an API key (`--api-key` or $FERJAX_API_KEY),
checked on every request except /healthz and the page itself (header `X-API-Key` or
`Authorization: Bearer KEY`; the page's WebSocket passes it as `?key=`). Every bad request gets a
4xx with a reason. Concurrent requests are batched into one jitted predict (`ferjax.serve_batch`).
"""

import argparse
import asyncio
import contextlib
import errno
import hmac
import ipaddress
import json
import logging
import os
import socket
import sys
import time
from importlib import resources
from typing import Any, Sequence

from ferjax import images

_log = logging.getLogger(__name__)
API_KEY_ENV = "FERJAX_API_KEY"
DEFAULT_MAX_BODY = 20 * 1024 * 1024   # bytes of one request
DEFAULT_MAX_PIXELS = 25_000_000       # per image (a 6000x4000 photo is 24 Mpx)
IMAGE_TYPES = ("image/", "application/octet-stream")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_app(analyzer: Any, *, api_key: str | None = None, max_body: int = DEFAULT_MAX_BODY,
               max_pixels: int = DEFAULT_MAX_PIXELS, max_batch: int = 16, max_queue: int = 256):
    """The FastAPI application around a loaded `ferjax.Analyzer`."""
    from fastapi import FastAPI, HTTPException, Request, WebSocket, WebSocketDisconnect  # noqa: PLC0415
    from fastapi.responses import HTMLResponse, JSONResponse, Response  # noqa: PLC0415
    from starlette.concurrency import run_in_threadpool  # noqa: PLC0415

    from ferjax.registry import DETECTORS, PRETRAINED  # noqa: PLC0415
    from ferjax.serve_batch import Batcher, Busy  # noqa: PLC0415

    from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: PLC0415

    batcher = Batcher(analyzer, max_batch=max_batch, max_queue=max_queue)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        batcher.close()

    app = FastAPI(title="ferjax", version=_version(), docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.state.batcher = batcher
    info = {"detector": analyzer.detector_name, "model": analyzer.predictor.name,
            "classes": list(analyzer.class_names), "max_body_bytes": max_body, "max_pixels": max_pixels}

    def check_key(provided: str | None) -> None:
        if api_key and not (provided and hmac.compare_digest(provided.encode(), api_key.encode())):
            raise HTTPException(401, "missing or wrong API key (header X-API-Key or Authorization: Bearer)")

    def key_of(request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        return request.headers.get("x-api-key") or (auth[7:] if auth.lower().startswith("bearer ") else None)

    async def analyze_bytes(data: bytes, video: bool = False) -> dict:
        t0 = time.perf_counter()
        try:
            frame = await run_in_threadpool(images.load_image, data, max_pixels=max_pixels)
        except images.ImageError as e:
            status = 413 if "exceeds the limit" in str(e) else 400
            raise HTTPException(status, str(e)) from None
        t1 = time.perf_counter()
        try:
            faces = await asyncio.wrap_future(batcher.submit(frame, video))
        except Busy as e:
            raise HTTPException(503, f"server busy: {e}; retry later") from None
        except Exception as e:  # a frame the detector cannot handle
            raise HTTPException(422, f"image could not be analysed: {type(e).__name__}: {str(e)[:200]}") from None
        t2 = time.perf_counter()
        return {"faces": [f.to_json() for f in faces], "width": int(frame.shape[1]), "height": int(frame.shape[0]),
                "detector": info["detector"], "model": info["model"],
                "ms": {"decode": round((t1 - t0) * 1e3, 2), "analyze": round((t2 - t1) * 1e3, 2)}}

    @app.exception_handler(StarletteHTTPException)  # FastAPI's HTTPException and Starlette's 404/405
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    @app.get("/healthz")
    async def healthz() -> dict:
        s = batcher.stats
        return {"status": "ok", "requests": s.requests, "batches": s.batches, "max_batch": s.max_batch}

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        check_key(key_of(request))
        return {**info, "detectors": DETECTORS.names(), "models": PRETRAINED.names()}

    @app.post("/v1/analyze")
    async def analyze(request: Request) -> JSONResponse:
        check_key(key_of(request))
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if not (ctype.startswith(IMAGE_TYPES) or ctype == "multipart/form-data"):
            raise HTTPException(415, f"unsupported Content-Type {ctype or '(none)'!r}: send image bytes "
                                     f"(image/jpeg, image/png, application/octet-stream) or multipart/form-data")
        body = await read_limited(request)
        if ctype == "multipart/form-data":
            body = await first_file(request, body)
        if not body:
            raise HTTPException(400, "empty request body: send an image")
        mode = request.query_params.get("mode", "photo")
        if mode not in ("photo", "video"):
            raise HTTPException(400, f"mode must be 'photo' (full resolution up to max_side) or 'video' "
                                     f"(the detector's fast working width), got {mode!r}")
        return JSONResponse(await analyze_bytes(body, mode == "video"))

    async def read_limited(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise HTTPException(400, f"invalid Content-Length {declared!r}")
            if int(declared) > max_body:
                raise HTTPException(413, f"body of {declared} bytes exceeds the limit of {max_body}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body:
                raise HTTPException(413, f"body exceeds the limit of {max_body} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def first_file(request: Request, body: bytes) -> bytes:
        async def replay() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=1, max_fields=16)
        except Exception as e:  # malformed multipart (no boundary, truncated parts, too many files)
            raise HTTPException(400, f"malformed multipart body: {str(e)[:200]}") from None
        for value in form.values():
            if hasattr(value, "read"):
                return await value.read()
        raise HTTPException(400, "multipart body has no file field: send the image as a file (e.g. image=@photo.jpg)")

    @app.get("/")
    async def page() -> HTMLResponse:
        return HTMLResponse(_web_file("index.html"))

    @app.get("/app.js")
    async def script() -> Response:
        return Response(_web_file("app.js"), media_type="text/javascript")

    @app.websocket("/v1/ws")
    async def ws(websocket: WebSocket) -> None:
        """Binary image messages in, one JSON result per message out (the page sends a new frame
        only after the previous answer, so frames never queue up)."""
        provided = websocket.query_params.get("key") or websocket.headers.get("x-api-key")
        if api_key and not (provided and hmac.compare_digest(provided.encode(), api_key.encode())):
            await websocket.close(code=1008, reason="missing or wrong API key")
            return
        await websocket.accept()
        try:
            while True:
                msg = await websocket.receive()
                if msg.get("type") == "websocket.disconnect":
                    return
                data = msg.get("bytes")
                if data is None:
                    await websocket.send_text(json.dumps({"error": "send frames as binary messages"}))
                    continue
                if len(data) > max_body:
                    await websocket.send_text(json.dumps({"error": f"frame of {len(data)} bytes exceeds {max_body}"}))
                    continue
                try:
                    result = await analyze_bytes(data, video=True)
                except HTTPException as e:
                    result = {"error": e.detail, "status": e.status_code}
                await websocket.send_text(json.dumps(result))
        except WebSocketDisconnect:
            return

    return app


def _web_file(name: str) -> str:
    return resources.files("ferjax.web").joinpath(name).read_text()


def _version() -> str:
    from ferjax import __version__  # noqa: PLC0415

    return __version__


def bind(host: str, port: int) -> socket.socket:
    """A listening socket; a port in use raises OSError with a one-line message."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise OSError(f"port {port} on {host} is already in use (stop the other server or choose --port)") from None
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class BackgroundServer:
    """A uvicorn server for `app` on a loopback port, in a daemon thread (benchmarks, tests)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0):
        import threading  # noqa: PLC0415

        import uvicorn  # noqa: PLC0415

        self.sock = bind(host, port)
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on {self.url} did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def parser() -> argparse.ArgumentParser:
    from ferjax.analyzer import DEFAULT_DETECTOR  # noqa: PLC0415
    from ferjax.jax_setup import DEFAULT_JAX_CACHE  # noqa: PLC0415

    p = argparse.ArgumentParser(prog="python -m ferjax.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="bind address (default %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port (default %(default)s)")
    p.add_argument("--detector", default=DEFAULT_DETECTOR, help="a registered detector (default %(default)s)")
    p.add_argument("--model", default=None, help="a registered pretrained model (default: the shipped one)")
    p.add_argument("--models-dir", default=None, help="folder of third-party detector files")
    p.add_argument("--api-key", default=None, help=f"required for non-loopback --host (or ${API_KEY_ENV})")
    p.add_argument("--max-body", type=int, default=DEFAULT_MAX_BODY, help="bytes per request (default %(default)s)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="pixels per image (default %(default)s)")
    p.add_argument("--max-batch", type=int, default=16, help="requests per batch (default %(default)s)")
    p.add_argument("--jax-cache-dir", default=DEFAULT_JAX_CACHE, help="persistent JAX compilation cache ('' disables)")
    p.add_argument("--log-level", default="warning", help="uvicorn log level (default %(default)s)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Checks the address and key, binds the port, loads the models, then serves until stopped."""
    args = parser().parse_args(argv)
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    if not is_loopback(args.host) and not api_key:
        print(f"ferjax.serve: binding to {args.host} exposes the service beyond this machine; set an API key "
              f"with --api-key or ${API_KEY_ENV}", file=sys.stderr)
        return 2
    try:
        import uvicorn  # noqa: PLC0415
        import fastapi  # noqa: F401, PLC0415
    except ImportError as e:
        print(f"ferjax.serve: {e.name} is not installed: pip install 'ferjax[serve]'", file=sys.stderr)
        return 2
    try:
        sock = bind(args.host, args.port)
    except OSError as e:
        print(f"ferjax.serve: {e}", file=sys.stderr)
        return 1
    from ferjax.analyzer import Analyzer  # noqa: PLC0415
    from ferjax.jax_setup import enable_jax_cache  # noqa: PLC0415
    from ferjax.registry import RegistryError  # noqa: PLC0415

    enable_jax_cache(args.jax_cache_dir)
    try:
        analyzer = Analyzer(args.detector, args.model, models_dir=args.models_dir, max_pixels=args.max_pixels)
    except (RegistryError, FileNotFoundError, ValueError) as e:
        print(f"ferjax.serve: {e}", file=sys.stderr)
        return 2
    analyzer.warmup()
    app = create_app(analyzer, api_key=api_key, max_body=args.max_body, max_pixels=args.max_pixels,
                     max_batch=args.max_batch)
    print(f"ferjax.serve: http://{args.host}:{args.port}/ ({analyzer.detector_name} + {analyzer.predictor.name})",
          file=sys.stderr)
    uvicorn.Server(uvicorn.Config(app, log_level=args.log_level, access_log=False)).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
