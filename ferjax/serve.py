"""HTTP service: `python -m ferjax.serve [--host H] [--port P] [--detector NAME] [--model NAME]`.

Endpoints::

    POST /v1/analyze   raw image bytes (Content-Type image/* or application/octet-stream) or
                       multipart/form-data with a file field -> {"faces": [...], "width", "height", ...};
                       ?mode=video detects at the detector's fast working width (camera frames),
                       the default ?mode=photo at full resolution up to 2048 px
    GET  /v1/models    the loaded detector and model, and every registered one
    GET  /healthz      liveness and batching counters
    GET  /             the live web page (camera -> WebSocket /v1/ws -> boxes and labels)
    GET  /local/       the in-browser page: detection and expressions run in the browser (ONNX
                       Runtime Web), no frame reaches the server (`ferjax.serve_local`)

Needs the optional extra `serve` (`pip install 'ferjax[serve]'`: FastAPI + uvicorn). Binds to
127.0.0.1 by default; any other address requires an API key (`--api-key` or $FERJAX_API_KEY),
checked on every request except /healthz and the pages themselves, / and /local/ (header `X-API-Key`
or `Authorization: Bearer KEY`; the page's WebSocket passes it as `?key=`). Every bad request gets a
4xx with a reason, and no error body carries a library's message or a memory address (details go
to the server log). Concurrent requests are batched into one jitted predict (`ferjax.serve_batch`).

Limits (flags of `python -m ferjax.serve`, keyword arguments of `create_app` / `BackgroundServer`)::

  --max-pixels           pixels one image may declare (refused with 413 before decoding)
  --max-pixels-in-flight decoded pixels all requests hold at once: a request reserves its image's
                         declared size before decoding and releases it when its analysis is done
  --max-body / --max-body-in-flight   bytes of one request body / of all bodies being received
  --budget-wait          seconds a request waits for room in a budget before 503 + Retry-After
  --decode-threads       images decoded at once; --max-queue frames waiting for the worker
  --request-timeout      seconds to receive a whole request (headers and body, before the API
                         key is checked); slower clients are answered 408 and disconnected
  --keep-alive           seconds an idle kept-alive connection stays open
  --max-connections      open connections (HTTP and WebSocket); more get 503 + Retry-After
  --allowed-host         Host names served besides loopback and the bound address ('*': any)
  --allowed-origin       browser origins allowed besides the page's own ('*': any); every request
                         carrying another Origin (the WebSocket included) is refused with 403

A WebSocket message may be up to max_body + 1 MiB: a frame over max_body gets the JSON error.
"""

import argparse
import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import errno
import functools
import hmac
import ipaddress
import json
import logging
import os
import re
import socket
import sys
import time
import urllib.parse
from importlib import resources
from typing import Any, Callable, Sequence

from ferjax import images

_log = logging.getLogger(__name__)
API_KEY_ENV = "FERJAX_API_KEY"
DEFAULT_MAX_BODY = 20 * 1024 * 1024          # bytes of one request
DEFAULT_MAX_PIXELS = 16_000_000              # per image (a 4900x3265 photo; phones give 12 Mpx)
DEFAULT_MAX_PIXELS_IN_FLIGHT = 48_000_000    # decoded pixels of all requests at once (~10 B of RSS each)
DEFAULT_MAX_BODY_IN_FLIGHT = 128 * 1024 * 1024  # bytes of all request bodies being received
DEFAULT_BUDGET_WAIT = 1.0                    # seconds a request waits for budget before 503
DEFAULT_DECODE_THREADS = 2                   # light images decoded at once (as many heavy ones, at low priority)
DEFAULT_PIXEL_RESERVE = 8_000_000            # the part of the pixel budget only light images may take
                                             # (less where the budget has less room: `pixel_reserve`)
DEFAULT_MAX_QUEUE = 64                       # frames waiting for the batch worker
DEFAULT_REQUEST_TIMEOUT = 10.0               # seconds to receive a whole request (headers + body)
DEFAULT_KEEP_ALIVE = 5                       # seconds an idle kept-alive connection stays open
DEFAULT_MAX_CONNECTIONS = 64                 # open connections, HTTP and WebSocket
WS_SLACK = 1024 * 1024                       # a WebSocket message may exceed max_body by this much
WS_LIGHT_BYTES = 4 * 1024 * 1024             # an unfinished WebSocket message buffered without the large slot
WS_LARGE_BYTES_PER_S = 32 * 1024 * 1024      # larger messages, one at a time, at most this many bytes a second
RETRY_AFTER_S = 1                            # Retry-After of every 503
IMAGE_TYPES = ("image/", "application/octet-stream")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_host(value: str) -> tuple[str, int | None]:
    """(host, port) of a Host header or an origin's netloc, lower-case, IPv6 without brackets."""
    value = value.strip().lower()
    host, port = value, None
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        head, sep, port_text = value.rpartition(":")
        if sep and ":" not in head:
            host = head
        else:
            port_text = ""
    if port_text.isdigit():
        port = int(port_text)
    return host.rstrip("."), port


@dataclasses.dataclass(frozen=True)
class Guard:
    """Which Host headers and browser Origins may use the service (DNS rebinding, cross-site pages).

    Host: loopback names and addresses, plus `hosts` ("*" allows any). Origin (sent by browsers
    only): the page's own origin (same host and port as the Host header), plus `origins`.
    """

    hosts: tuple[str, ...] = ()
    origins: tuple[str, ...] = ()

    def host_ok(self, host_header: str | None) -> bool:
        if host_header is None:  # HTTP/1.0 clients; browsers always send Host
            return True
        host, _ = split_host(host_header)
        return "*" in self.hosts or is_loopback(host) or host in {split_host(h)[0] for h in self.hosts}

    def origin_ok(self, origin: str | None, host_header: str | None) -> bool:
        if origin is None:  # not a browser
            return True
        origin = origin.strip().lower().rstrip("/")
        if "*" in self.origins or origin in {o.lower().rstrip("/") for o in self.origins}:
            return True
        parts = urllib.parse.urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or host_header is None:
            return False  # "null" (sandboxed frames, files) and other schemes
        default = {"http": 80, "https": 443}[parts.scheme]
        o_host, o_port = split_host(parts.netloc)
        h_host, h_port = split_host(host_header)
        return o_host == h_host and (o_port or default) == (h_port or default)


class GuardMiddleware:
    """ASGI middleware refusing a Host outside the allow-list (400) and a foreign Origin (403);
    a refused WebSocket is closed before it is accepted (the handshake gets 403)."""

    def __init__(self, app: Any, guard: Guard):
        self.app, self.guard = app, guard

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
                   if k in (b"host", b"origin")}
        host, origin = headers.get("host"), headers.get("origin")
        error = status = None
        if not self.guard.host_ok(host):
            status, error = 400, (f"Host {host!r} is not served here: loopback names and the bound address "
                                  f"are (start the server with --allowed-host to add a name)")
        elif not self.guard.origin_ok(origin, host):
            status, error = 403, (f"Origin {origin!r} may not use this service: only its own pages may "
                                  f"(start the server with --allowed-origin to add one)")
        if error is None:
            return await self.app(scope, receive, send)
        _log.info("refused %s %s: %s", scope["type"], scope.get("path"), error)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": error[:120]})
            return
        body = json.dumps({"error": error}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


_ADDRESS = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>|\b0x[0-9a-fA-F]{6,}\b")
_LIBRARY_DETAIL = re.compile(r" \((?!expected |raise )[^()]*(?:\([^()]*\)[^()]*)*\)")


def public_message(error: BaseException) -> str:
    """What a client may read of an `ImageError`: ferjax's own reason, without the library's
    message it quotes in parentheses and without memory addresses (the log keeps the details)."""
    return _ADDRESS.sub("<object>", _LIBRARY_DETAIL.sub("", str(error)))[:300]


@dataclasses.dataclass(frozen=True)
class ServerLimits:
    """Connection-level limits, applied by `server_config` to uvicorn (main and BackgroundServer)."""

    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    keep_alive: int = DEFAULT_KEEP_ALIVE
    max_connections: int = DEFAULT_MAX_CONNECTIONS


def check_budgets(max_pixels: int, max_pixels_in_flight: int, max_body: int, max_body_in_flight: int) -> None:
    """ValueError unless the per-request limits are positive and fit in their budgets."""
    for name, value in (("max_pixels", max_pixels), ("max_pixels_in_flight", max_pixels_in_flight),
                        ("max_body", max_body), ("max_body_in_flight", max_body_in_flight)):
        if int(value) < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    if max_pixels > max_pixels_in_flight:
        raise ValueError(f"max_pixels ({max_pixels}) exceeds max_pixels_in_flight ({max_pixels_in_flight}): "
                         f"such an image could never be decoded; raise max_pixels_in_flight")
    if 2 * max_body > max_body_in_flight:  # a body is held twice while its chunks are joined
        raise ValueError(f"twice max_body ({max_body}) exceeds max_body_in_flight ({max_body_in_flight}): "
                         f"such a body could never be received; raise max_body_in_flight")


def returning_image_error(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)`, or the `ImageError` it raised, returned without its traceback and
    context. Run in a worker thread: an exception crossing back holds the frames that hold the
    request's bytes, and the idle worker keeps the last one it raised (anyio's run loop)."""
    try:
        return fn(*args, **kwargs)
    except images.ImageError as e:
        return e.with_traceback(None).__class__(*e.args)


def pixel_reserve(max_pixels: int, max_pixels_in_flight: int) -> int:
    """The part of the pixel budget kept for light images (camera frames): DEFAULT_PIXEL_RESERVE,
    or less where the budget has less room beyond one image of `max_pixels`."""
    return max(0, min(DEFAULT_PIXEL_RESERVE, max_pixels_in_flight - max_pixels))


def create_app(analyzer: Any, *, api_key: str | None = None, max_body: int = DEFAULT_MAX_BODY,
               max_pixels: int = DEFAULT_MAX_PIXELS, max_batch: int = 16, max_queue: int = DEFAULT_MAX_QUEUE,
               max_pixels_in_flight: int = DEFAULT_MAX_PIXELS_IN_FLIGHT,
               max_body_in_flight: int = DEFAULT_MAX_BODY_IN_FLIGHT, budget_wait: float = DEFAULT_BUDGET_WAIT,
               decode_threads: int = DEFAULT_DECODE_THREADS, allowed_hosts: Sequence[str] = (),
               allowed_origins: Sequence[str] = ()):
    """The FastAPI application around a loaded `ferjax.Analyzer` (limits: see the module docstring).

    Raises ValueError when a limit could never be met (an image of `max_pixels` must fit in
    `max_pixels_in_flight`, a body of `max_body` in `max_body_in_flight`).
    """
    from fastapi import FastAPI, HTTPException, Request, WebSocket, WebSocketDisconnect  # noqa: PLC0415
    from fastapi.responses import HTMLResponse, JSONResponse, Response  # noqa: PLC0415
    from starlette.requests import ClientDisconnect  # noqa: PLC0415

    from ferjax.registry import DETECTORS, PRETRAINED  # noqa: PLC0415
    from ferjax.serve_batch import LIGHT_FRAME_PIXELS, Batcher, Budget, Busy, lower_thread_priority  # noqa: PLC0415

    from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: PLC0415

    for name, value in (("max_batch", max_batch), ("max_queue", max_queue), ("decode_threads", decode_threads)):
        if int(value) < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    check_budgets(max_pixels, max_pixels_in_flight, max_body, max_body_in_flight)
    batcher = Batcher(analyzer, max_batch=max_batch, max_queue=max_queue)
    pixels = Budget(max_pixels_in_flight, budget_wait, "decoded pixels", light=LIGHT_FRAME_PIXELS,
                    reserve=pixel_reserve(max_pixels, max_pixels_in_flight))
    heavy_decoder = concurrent.futures.ThreadPoolExecutor(decode_threads, "ferjax-heavy-decode",
                                                          initializer=lower_thread_priority)
    body_bytes = Budget(max_body_in_flight, budget_wait, "body bytes")
    decoders: list = []  # the decode threads' limiter, made in the server's event loop

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        batcher.close()
        heavy_decoder.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="ferjax", version=_version(), docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.add_middleware(GuardMiddleware, guard=Guard(tuple(allowed_hosts), tuple(allowed_origins)))
    app.state.batcher, app.state.pixels, app.state.body_bytes = batcher, pixels, body_bytes
    app.state.max_body = max_body
    info = {"detector": analyzer.detector_name, "model": analyzer.predictor.name,
            "backend": getattr(analyzer, "backend", "jax"), "classes": list(analyzer.class_names),
            "max_body_bytes": max_body, "max_pixels": max_pixels}
    retry = {"Retry-After": str(RETRY_AFTER_S)}

    async def in_thread(fn: Callable, *args: Any, **kwargs: Any) -> Any:
        import anyio  # noqa: PLC0415

        if not decoders:
            decoders.append(anyio.CapacityLimiter(decode_threads))
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=decoders[0])

    def check_key(provided: str | None) -> None:
        if api_key and not (provided and hmac.compare_digest(provided.encode(), api_key.encode())):
            raise HTTPException(401, "missing or wrong API key (header X-API-Key or Authorization: Bearer)")

    def key_of(request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        return request.headers.get("x-api-key") or (auth[7:] if auth.lower().startswith("bearer ") else None)

    def image_error(e: images.ImageError, where: str) -> HTTPException:
        _log.info("%s: %s", where, e)
        return HTTPException(413 if "exceeds" in str(e) else 400, public_message(e))  # a size limit: 413

    async def analyze_bytes(data: bytes, video: bool = False, where: str = "request") -> dict:
        """Decodes within the pixel budget and analyses; every failure is an HTTPException."""
        result = await analyze_or_refuse(data, video, where)
        if isinstance(result, HTTPException):
            raise result
        return result

    async def analyze_or_refuse(data: bytes, video: bool, where: str) -> dict | HTTPException:
        """The result, or the HTTPException to answer. Errors are returned, not raised from inside
        `except` blocks: a chained exception's traceback keeps the frames that hold `data` in a
        reference cycle, and the request's bytes then wait for a full garbage-collector pass."""
        t0 = time.perf_counter()
        error: HTTPException | None = None
        head = await in_thread(returning_image_error, images.header, data, name=images.describe(data))
        if isinstance(head, images.ImageError):
            return image_error(head, where)
        need = head.pixels if head.pixels <= max_pixels else 0  # over the limit: refused before decoding
        try:
            await pixels.acquire(need)
        except Busy as e:
            error = HTTPException(503, f"server busy: {e}; retry later", headers=retry)
        if error is not None:
            return error
        fut = None
        try:
            if head.pixels <= LIGHT_FRAME_PIXELS:
                frame = await in_thread(returning_image_error, images.load_image, data, max_pixels=max_pixels)
            else:  # big images decode apart, at low priority: camera frames never queue behind them
                frame = await asyncio.get_running_loop().run_in_executor(heavy_decoder, functools.partial(
                    returning_image_error, images.load_image, data, max_pixels=max_pixels))
            if isinstance(frame, images.ImageError):
                raise frame
            t1 = time.perf_counter()
            height, width = frame.shape[:2]
            fut = batcher.submit(frame, video)
            del frame
            faces = await asyncio.wrap_future(fut)
        except images.ImageError as e:
            error = image_error(e, where)
        except Busy as e:
            error = HTTPException(503, f"server busy: {e}; retry later", headers=retry)
        except Exception as e:  # a frame the detector cannot handle: details in the log only
            _log.warning("%s: analysis failed: %s: %s", where, type(e).__name__, e)
            error = HTTPException(422, f"image could not be analysed ({head.width}x{head.height} {head.format})")
        finally:  # the frame is freed once the worker is done with it
            if fut is None or fut.done():
                pixels.release(need)
            else:
                fut.add_done_callback(lambda _: pixels.release_soon(need))
        if error is not None:
            return error
        t2 = time.perf_counter()
        return {"faces": [f.to_json() for f in faces], "width": int(width), "height": int(height),
                "detector": info["detector"], "model": info["model"],
                "ms": {"decode": round((t1 - t0) * 1e3, 2), "analyze": round((t2 - t1) * 1e3, 2)}}

    @app.exception_handler(StarletteHTTPException)  # FastAPI's HTTPException and Starlette's 404/405
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.get("/healthz")
    async def healthz() -> dict:
        s = batcher.stats
        return {"status": "ok", "requests": s.requests, "batches": s.batches, "max_batch": s.max_batch,
                "queued": batcher.queued, "queue_refused": s.refused, "lanes": batcher.lane_stats(),
                "pixels": pixels.stats(),
                "body_bytes": body_bytes.stats()}

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
        mode = request.query_params.get("mode", "photo")
        if mode not in ("photo", "video"):
            raise HTTPException(400, f"mode must be 'photo' (full resolution up to max_side) or 'video' "
                                     f"(the detector's fast working width), got {mode!r}")
        held = [0]  # body bytes reserved, given back when the request is done
        try:
            body = await read_limited(request, held)
            if ctype == "multipart/form-data":
                body = await first_file(request, body)
            if not body:
                raise HTTPException(400, "empty request body: send an image")
            return JSONResponse(await analyze_bytes(body, mode == "video", f"{request.url.path} request"))
        finally:
            body_bytes.release(held[0])

    async def read_limited(request: Request, held: list[int]) -> bytes:
        """The body, at most `max_body` bytes; each chunk is reserved from the body budget before
        it is kept (`held[0]` counts what to give back)."""
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise HTTPException(400, f"invalid Content-Length {declared!r}")
            if int(declared) > max_body:
                raise HTTPException(413, f"body of {declared} bytes exceeds the limit of {max_body}")
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_body:
                    raise HTTPException(413, f"body exceeds the limit of {max_body} bytes")
                try:
                    await body_bytes.acquire(2 * len(chunk))  # the chunks, then their joined copy
                except Busy as e:
                    raise HTTPException(503, f"server busy: {e}; retry later", headers=retry) from None
                held[0] += 2 * len(chunk)
                chunks.append(chunk)
        except ClientDisconnect:  # gone, or cut off by the request deadline: nobody reads the answer
            raise HTTPException(400, "client disconnected before sending the whole body") from None
        return b"".join(chunks)

    async def first_file(request: Request, body: bytes) -> bytes:
        async def replay() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=1, max_fields=16)
        except Exception as e:  # malformed multipart (no boundary, truncated parts, too many files)
            _log.info("malformed multipart body: %s: %s", type(e).__name__, e)
            raise HTTPException(400, "malformed multipart body: expected multipart/form-data with a boundary "
                                     "and one file field") from None
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

    from ferjax.serve_local import mount  # noqa: PLC0415

    mount(app, info["model"] if info["model"] in PRETRAINED.names() else None)  # GET /local/ (static files)

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
                size = len(data)
                if size > max_body:
                    del data, msg
                    await websocket.send_text(json.dumps({"error": f"frame of {size} bytes exceeds the limit "
                                                                   f"of {max_body}", "status": 413}))
                    continue
                busy = None
                try:
                    await body_bytes.acquire(size)  # the frame is held until it is analysed
                except Busy as e:
                    busy = str(e)
                if busy is None:
                    try:
                        outcome = await analyze_or_refuse(data, True, "/v1/ws frame")
                    finally:
                        body_bytes.release(size)
                    result = outcome if isinstance(outcome, dict) else {"error": outcome.detail,
                                                                         "status": outcome.status_code}
                else:
                    result = {"error": f"server busy: {busy}; retry later", "status": 503}
                if result.get("status") == 503:
                    result["retry_after"] = RETRY_AFTER_S
                del data, msg  # the frame is freed before the next one is read
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


def gated_websocket_protocol(light_bytes: int = WS_LIGHT_BYTES,
                             large_bytes_per_s: float = WS_LARGE_BYTES_PER_S) -> type:
    """uvicorn's WebSocket protocol with backpressure on large messages: a connection may buffer
    `light_bytes` of an unfinished message on its own; beyond that it needs the server's one large
    slot, and without it it stops reading (its client's TCP window fills) until the slot frees. A
    freed slot stays shut for the message's size / `large_bytes_per_s`, so large messages take a
    bounded share of the event loop. Camera frames (tens of KB) never wait: 24 clients streaming
    17-21 MB messages took 4.3 GB of RSS and held valid frames for seconds without it."""
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol  # noqa: PLC0415

    slot: list = []  # the protocol holding the large slot, or a cooling marker after it
    waiting: collections.deque = collections.deque()

    def admit() -> None:
        while waiting and not slot:
            nxt = waiting.popleft()
            nxt.gated = False
            if not nxt.transport.is_closing():
                slot.append(nxt)
                nxt.transport.resume_reading()

    class GatedWebSocketProtocol(WebSocketsSansIOProtocol):
        gated = False
        held = 0  # the largest buffer seen while holding the slot

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            buffered = len(self.conn.reader.buffer)
            if buffered <= light_bytes or self.transport.is_closing():
                self._give_back()
            elif self in slot:
                self.held = max(self.held, buffered)
            elif not slot:
                slot.append(self)
                self.held = buffered
            elif not self.gated:
                self.gated = True
                self.transport.pause_reading()
                waiting.append(self)

        def _give_back(self) -> None:
            if self in slot:
                slot.remove(self)
                marker = object()
                slot.append(marker)  # the slot cools down in proportion to what went through it

                def reopen() -> None:
                    slot.remove(marker)
                    admit()

                self.loop.call_later(self.held / large_bytes_per_s, reopen)
                self.held = 0

        def connection_lost(self, exc: Exception | None) -> None:
            if self in waiting:
                waiting.remove(self)
            self._give_back()
            super().connection_lost(exc)
            # A closed protocol waits for the cyclic garbage collector (which counts objects, not
            # bytes) with its last message still held by its parser generator and read buffer:
            # 160 closed 20 MB senders held 2.3 GB until gc.collect(). Free them now.
            self.conn.parser.close()
            self.conn.reader.buffer.clear()
            self.frames = []

    return GatedWebSocketProtocol


def deadline_protocol(limits: ServerLimits) -> type:
    """uvicorn's h11 HTTP protocol with what uvicorn lacks: a deadline for receiving each whole
    request, headers and body, counted from its first byte (from the connection for the first
    request, so a silent socket is closed too). It holds before the app runs, hence before the
    API key is checked. A late request is answered 408 and the connection closed; one whose
    answer was already sent (e.g. a 401 while the body still trickles in) is just closed.

    It also answers the connection limit (`max_connections`, WebSocket upgrades included) with a
    JSON 503 carrying Retry-After, where uvicorn's own limit answers plain text without it.
    """
    import h11  # noqa: PLC0415
    from uvicorn.protocols.http.h11_impl import H11Protocol  # noqa: PLC0415

    received = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR, h11.MIGHT_SWITCH_PROTOCOL, h11.SWITCHED_PROTOCOL)
    busy = json.dumps({"error": f"server busy: more than {limits.max_connections} open connections; retry later"}
                      ).encode()
    late = json.dumps({"error": f"request not received within {limits.request_timeout:g} s"}).encode()

    async def refuse(scope: dict, receive: Callable, send: Callable) -> None:
        await send({"type": "http.response.start", "status": 503, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(busy)).encode()),
            (b"retry-after", str(RETRY_AFTER_S).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": busy})

    class RequestDeadlineProtocol(H11Protocol):
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.limit_concurrency = None  # checked in _should_upgrade, answered by `refuse`
            self._deadline: asyncio.TimerHandle | None = None
            app = self.app

            async def app_or_refuse(scope: dict, receive: Callable, send: Callable) -> None:
                await (refuse if scope.pop("ferjax.over_limit", False) else app)(scope, receive, send)

            self.app = app_or_refuse

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self.conn.their_state is h11.IDLE:  # the first bytes of a request
                self._arm()
            super().data_received(data)
            self._sync()

        def handle_events(self) -> None:  # also runs for pipelined requests after a response
            super().handle_events()
            self._sync()

        def _should_upgrade(self) -> bool:  # runs once per request, right after its headers
            over = len(self.connections) >= limits.max_connections or len(self.tasks) >= limits.max_connections
            if over:
                self.scope["ferjax.over_limit"] = True  # type: ignore[typeddict-unknown-key]
                _log.warning("connection limit of %d reached: answering 503", limits.max_connections)
            return not over and super()._should_upgrade()

        def _sync(self) -> None:
            if self.transport.get_protocol() is not self or self.conn.their_state in received:
                self._disarm()
            elif self.conn.their_state is h11.SEND_BODY or self.conn.trailing_data[0]:
                self._arm()

        def _arm(self) -> None:
            if self._deadline is None:
                self._deadline = self.loop.call_later(limits.request_timeout, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            _log.info("%s: request not received within %g s: closing", self.client, limits.request_timeout)
            cycle, reply = self.cycle, True
            if self.conn.their_state is h11.SEND_BODY and cycle is not None:  # the body is late
                reply = not cycle.response_started  # e.g. a 401 already went out
                if not cycle.response_complete:  # the app waiting for the body sees a disconnect
                    cycle.disconnected = True
                    cycle.message_event.set()
            if reply:
                self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                     b"connection: close\r\ncontent-length: " + str(len(late)).encode() +
                                     b"\r\n\r\n" + late)
            self.transport.close()

    return RequestDeadlineProtocol


def server_config(app: Any, limits: ServerLimits = ServerLimits(), log_level: str = "warning") -> Any:
    """The uvicorn config `main` and `BackgroundServer` serve `app` with: the request deadline
    and connection limit (`deadline_protocol`), the keep-alive timeout, and a WebSocket message
    limit just above the app's `max_body` (so an oversized frame gets the JSON error) and
    backpressure on large messages (`gated_websocket_protocol`), without
    permessage-deflate (camera frames are JPEG, which deflate cannot shrink, and a 20 KB deflated
    message can inflate to max_body in the event loop)."""
    import uvicorn  # noqa: PLC0415

    max_body = getattr(getattr(app, "state", None), "max_body", DEFAULT_MAX_BODY)
    return uvicorn.Config(app, log_level=log_level, access_log=False, http=deadline_protocol(limits),
                          timeout_keep_alive=limits.keep_alive, limit_concurrency=limits.max_connections,
                          ws=gated_websocket_protocol(), ws_max_size=max_body + WS_SLACK,
                          ws_per_message_deflate=False)


class BackgroundServer:
    """A uvicorn server for `app` on a loopback port, in a daemon thread (benchmarks, tests), with
    the same connection limits as `python -m ferjax.serve` (`limits`)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, limits: ServerLimits = ServerLimits()):
        import threading  # noqa: PLC0415

        import uvicorn  # noqa: PLC0415

        self.sock = bind(host, port)
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(server_config(app, limits))
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
    from ferjax.analyzer import AUTO, BACKENDS, DEFAULT_DETECTOR  # noqa: PLC0415
    from ferjax.jax_setup import DEFAULT_JAX_CACHE  # noqa: PLC0415

    p = argparse.ArgumentParser(prog="ferjax serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="bind address (default %(default)s)")
    p.add_argument("--port", type=_port, default=8000, help="port, 0-65535 (0: any free one; default %(default)s)")
    p.add_argument("--detector", default=DEFAULT_DETECTOR, help="a registered detector (default %(default)s)")
    p.add_argument("--model", default=None, help="a registered pretrained model (default: the shipped one)")
    p.add_argument("--models-dir", default=None, help="folder of third-party detector files")
    p.add_argument("--backend", choices=(*BACKENDS, AUTO), default=AUTO,
                   help="where the classifier runs: jax, onnxruntime (the onnx extra) or auto (default)")
    p.add_argument("--api-key", default=None, help=f"required for non-loopback --host (or ${API_KEY_ENV})")
    p.add_argument("--max-body", type=_positive(int), default=DEFAULT_MAX_BODY,
                   help="bytes per request (default %(default)s)")
    p.add_argument("--max-pixels", type=_positive(int), default=DEFAULT_MAX_PIXELS,
                   help="pixels per image, refused from the header before decoding (default %(default)s)")
    p.add_argument("--max-pixels-in-flight", type=_positive(int), default=DEFAULT_MAX_PIXELS_IN_FLIGHT,
                   help="decoded pixels of all requests at once; at least --max-pixels (default %(default)s)")
    p.add_argument("--max-body-in-flight", type=_positive(int), default=DEFAULT_MAX_BODY_IN_FLIGHT,
                   help="bytes of all request bodies being received; at least twice --max-body (default %(default)s)")
    p.add_argument("--budget-wait", type=_non_negative(float), default=DEFAULT_BUDGET_WAIT,
                   help="seconds a request waits for budget before 503 + Retry-After (default %(default)s)")
    p.add_argument("--decode-threads", type=_positive(int), default=DEFAULT_DECODE_THREADS,
                   help="images decoded at once (default %(default)s)")
    p.add_argument("--max-batch", type=_positive(int), default=16, help="requests per batch (default %(default)s)")
    p.add_argument("--max-queue", type=_positive(int), default=DEFAULT_MAX_QUEUE,
                   help="frames waiting for the worker before 503 (default %(default)s)")
    p.add_argument("--request-timeout", type=_positive(float), default=DEFAULT_REQUEST_TIMEOUT,
                   help="seconds to receive a whole request, headers and body (default %(default)s)")
    p.add_argument("--keep-alive", type=_positive(int), default=DEFAULT_KEEP_ALIVE,
                   help="seconds an idle kept-alive connection stays open (default %(default)s)")
    p.add_argument("--max-connections", type=_positive(int), default=DEFAULT_MAX_CONNECTIONS,
                   help="open connections, HTTP and WebSocket; more get 503 (default %(default)s)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a Host name to serve besides loopback and the bound address ('*': any); repeatable")
    p.add_argument("--allowed-origin", action="append", default=[], metavar="ORIGIN",
                   help="a browser origin (https://app.example) allowed besides the page's own ('*': any); "
                        "repeatable")
    p.add_argument("--opencv-threads", type=_non_negative(int), default=1,
                   help="OpenCV's worker threads (0: its default, one per core). 1 keeps each lane's "
                        "detection on its own thread, so the heavy lane's lower priority holds (default %(default)s)")
    p.add_argument("--jax-cache-dir", default=DEFAULT_JAX_CACHE, help="persistent JAX compilation cache ('' disables)")
    p.add_argument("--log-level", default="warning", help="uvicorn log level (default %(default)s)")
    return p


def _port(text: str) -> int:
    """argparse type: a TCP port, 0-65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {value}")
    return value


def _positive(kind: type) -> Callable[[str], Any]:
    """argparse type: a number of `kind` above 0."""
    return _bounded(kind, lambda v: v > 0, "a positive")


def _non_negative(kind: type) -> Callable[[str], Any]:
    """argparse type: a number of `kind` of at least 0."""
    return _bounded(kind, lambda v: v >= 0, "a non-negative")


def _bounded(kind: type, ok: Callable[[Any], bool], what: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value != value or value in (float("inf"), float("-inf")) or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what} {'integer' if kind is int else 'number'}, "
                                             f"got {text!r}")
        return value

    return parse


def main(argv: Sequence[str] | None = None) -> int:
    """Checks the address and key, binds the port, loads the models, then serves until stopped."""
    p = parser()
    args = p.parse_args(argv)
    try:
        check_budgets(args.max_pixels, args.max_pixels_in_flight, args.max_body, args.max_body_in_flight)
    except ValueError as e:
        p.error(str(e))
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
    if args.opencv_threads:
        import cv2  # noqa: PLC0415

        cv2.setNumThreads(args.opencv_threads)  # OpenCV's pool threads would run heavy work at full priority
    try:
        analyzer = Analyzer(args.detector, args.model, models_dir=args.models_dir, max_pixels=args.max_pixels,
                            backend=args.backend)
    except (RegistryError, FileNotFoundError, ValueError, ImportError) as e:
        print(f"ferjax.serve: {e}", file=sys.stderr)
        return 2
    analyzer.warmup()
    wildcard = args.host in ("0.0.0.0", "::", "")
    hosts = [*args.allowed_host, *([] if wildcard else [args.host])]
    if wildcard and not args.allowed_host:
        print(f"ferjax.serve: bound to {args.host}: only loopback Host names are served until you name this "
              f"machine's with --allowed-host", file=sys.stderr)
    app = create_app(analyzer, api_key=api_key, max_body=args.max_body, max_pixels=args.max_pixels,
                     max_batch=args.max_batch, max_queue=args.max_queue, max_pixels_in_flight=args.max_pixels_in_flight,
                     max_body_in_flight=args.max_body_in_flight, budget_wait=args.budget_wait,
                     decode_threads=args.decode_threads, allowed_hosts=hosts, allowed_origins=args.allowed_origin)
    limits = ServerLimits(args.request_timeout, args.keep_alive, args.max_connections)
    print(f"ferjax.serve: http://{args.host}:{sock.getsockname()[1]}/ ({analyzer.detector_name} + "
          f"{analyzer.predictor.name} on {analyzer.backend}); in-browser page: "
          f"http://{args.host}:{sock.getsockname()[1]}/local/", file=sys.stderr)
    uvicorn.Server(server_config(app, limits, args.log_level)).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
