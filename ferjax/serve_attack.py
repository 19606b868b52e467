"""Bounded adversarial load on the HTTP service, on this machine only.

    python -m ferjax.serve_attack --video ../shared/media/one_face_pexels_640x360.mp4 [--seconds 60]
        [--valid-clients 8] [--hostile-clients 24] [--socket-deadline S] [--kinds idle,tall,...]
        [--server-arg=--flag ...] [--url http://127.0.0.1:8000 --pid PID] [--json]

For `--seconds`, valid clients send distinct JPEG frames of a real one-face video over the WebSocket
`/v1/ws`, back to back, while hostile clients rotate through the inputs a stranger can send: pixel
bombs within the service's limit (a few KB of PNG declaring max_pixels), tall images (320 x 78,000
PNG; 16 x 1,100,000 TIFF and BMP), slow and idle sockets, truncated bodies, bad Content-Types,
refused formats (EPS, ICO, TGA, PCX), malformed multipart, WebSocket messages beyond max_body
(plain and deflate-compressed), garbage, a foreign Origin or Host. Every client sends a
same-origin Origin and a loopback Host unless its point is not to. The server's resident memory
is read from /proc/PID/status every 100 ms.

It prints the valid frames answered with their p50/p99 latency over the run and per window, every
outcome per hostile kind, the 5xx counts, the peak RSS, then PASS or FAIL per target, and exits 1
on any FAIL: no 5xx except 503 with Retry-After (nor a traceback in the started server's log), no
crash, peak RSS at most --max-rss-mb, valid p99 under --p99-ms over the run and in every window,
valid clients see no error but such 503s, at least 2,000 valid answers per 60 s and 8 valid
clients (the floor scales with both), and every slow or idle socket closed by the server within
--socket-deadline seconds (default: the service's --request-timeout) plus 1 s of slack.

Without --url it starts `python -m ferjax.serve` (plus every --server-arg) in a child process on a
free loopback port. Only loopback URLs are accepted.
"""
from __future__ import annotations

import argparse
import base64
import collections
import dataclasses
import http.client
import io
import itertools
import json
import logging
import math
import os
import re
import select
import socket
import struct
import sys
import threading
import time
import urllib.parse
import zlib
from typing import Callable, Sequence

import numpy as np

from ferjax.serve import DEFAULT_REQUEST_TIMEOUT, is_loopback
from ferjax.serve_bench import ServerProcess, video_frames

# Figures of the issue's 60-s run: 2,000 valid answers from 8 clients; the floor scales with both.
ANSWERS_PER_CLIENT_MINUTE = 2000 / 8
# In the order each hostile client goes through them; the slow kinds sit 6 apart, so that a few
# clients starting at evenly spread offsets do not all begin with one. Each is a method of Attack.
HOSTILE_KINDS = ("slow_headers", "pixel_bomb", "bad_type", "ws_oversized", "tall", "garbage_http",
                 "slow_body", "pixel_bomb_ws", "refused_format", "truncated_body", "tall_ws", "malformed_multipart",
                 "idle", "garbage_image", "ws_deflate_bomb", "truncated_image", "oversized_body", "ws_near_limit",
                 "cross_origin")
SLOW_KINDS = ("slow_headers", "slow_body", "idle")
HELD_OPEN = "held open"   # a slow or idle socket the server did not close within twice the deadline
SLACK_S = 1.0             # timer slack on top of the deadline before a close counts as late
# Quiet: websockets logs an error when a server drops the TCP connection mid-message (what an
# oversized frame may get); every such outcome is counted instead.
_WS_LOG = logging.getLogger("ferjax.serve_attack.websockets")
_WS_LOG.setLevel(logging.CRITICAL)
WS_OPTIONS = dict(proxy=None, ping_interval=None, close_timeout=2, user_agent_header="ferjax.serve_attack",
                  logger=_WS_LOG)


def answer_floor(seconds: float, valid_clients: int) -> int:
    """Valid answers a run must reach: 2,000 per 60 s and 8 clients, scaled by both."""
    return math.ceil(ANSWERS_PER_CLIENT_MINUTE * valid_clients * seconds / 60)


def png(width: int, height: int) -> bytes:
    """A one-colour 1-bit greyscale PNG: a few KB that decode to width*height*3 bytes (a pixel bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = bytes(height * (1 + (width + 7) // 8))  # filter byte 0 + packed zero bits per row
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))


def thin_images(max_pixels: int, height: int = 1_100_000) -> list[tuple[str, bytes]]:
    """A deflated TIFF and a 1-bit BMP, 16 (or fewer, to stay within `max_pixels`) by 1,100,000
    pixels: longer than OpenCV's 2^20 limit on a side (its decoder raised cv2.error, an HTTP 500)."""
    from PIL import Image  # noqa: PLC0415

    image = Image.new("1", (max(1, min(16, max_pixels // height)), height))
    out = []
    for fmt, options in (("TIFF", {"compression": "tiff_deflate"}), ("BMP", {})):
        buf = io.BytesIO()
        image.save(buf, fmt, **options)
        out.append((fmt.lower(), buf.getvalue()))
    return out


def refused_formats() -> list[tuple[str, bytes]]:
    """Images in formats the service must refuse (Pillow reads them, `ferjax.images` does not)."""
    from PIL import Image  # noqa: PLC0415

    out = [("eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nnewpath 0 0 moveto showpage\n%%EOF\n")]
    for fmt in ("ICO", "TGA", "PCX"):
        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (200, 30, 30)).save(buf, fmt)
        out.append((fmt.lower(), buf.getvalue()))
    return out


def status_of(label: str) -> int | None:
    """The HTTP status inside an outcome label ('http 413', 'ws 503 Retry-After', 'ws handshake 403')."""
    m = re.match(r"(?:http|ws|ws handshake) (\d{3})\b", label)
    return int(m.group(1)) if m else None


def allowed_5xx(label: str) -> bool:
    """503 that tells the client when to come back (the pixel budget, the connection limit)."""
    return status_of(label) == 503 and label.endswith("Retry-After")


def _os_label(e: BaseException) -> str:
    if isinstance(e, (ConnectionResetError, BrokenPipeError)):
        return "reset"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, (TimeoutError, socket.timeout)):
        return "timeout"
    return f"{type(e).__name__}"


def _raw_answer_label(got: bytes) -> str | None:
    """'http <status>' of the HTTP answer at the start of `got`, None when there is none."""
    m = re.match(rb"HTTP/1\.[01] (\d{3})", got)
    if not m:
        return None
    retry = m.group(1) == b"503" and b"\r\nretry-after:" in got.lower()
    return f"http {m.group(1).decode()}" + (" Retry-After" if retry else "")


def ws_frame(payload: bytes, compressed: bool = False) -> bytes:
    """One final binary client frame carrying `payload`, masked with a zero key (RSV1 set if
    `compressed`: a permessage-deflate message)."""
    n = len(payload)
    size = struct.pack(">B", 0x80 | n) if n < 126 else struct.pack(">BH", 0x80 | 126, n) if n < 65536 \
        else struct.pack(">BQ", 0x80 | 127, n)
    return bytes([0x80 | (0x40 if compressed else 0) | 0x2]) + size + b"\x00\x00\x00\x00" + payload


def _read_ws_answer(sock: socket.socket, buf: bytes) -> str:
    """The label of the first server frame (text answer or close) after the handshake's `buf`."""
    def need(n: int) -> bytes:
        nonlocal buf
        while len(buf) < n:
            chunk = sock.recv(65536)
            if not chunk:
                raise EOFError
            buf += chunk
        out, buf = buf[:n], buf[n:]
        return out

    try:
        while True:
            b0, b1 = need(2)
            n = b1 & 0x7F
            n = struct.unpack(">H", need(2))[0] if n == 126 else struct.unpack(">Q", need(8))[0] if n == 127 else n
            payload = need(n)
            opcode = b0 & 0x0F
            if opcode == 0x8:
                return f"ws close {struct.unpack('>H', payload[:2])[0]}" if len(payload) >= 2 else "ws close"
            if opcode in (0x1, 0x2):
                if b0 & 0x40:  # compressed by permessage-deflate
                    payload = zlib.decompressobj(wbits=-15).decompress(payload + b"\x00\x00\xff\xff")
                return _ws_answer_label(payload)
            # ping/pong or a continuation: read on
    except EOFError:
        return "closed, no answer"
    except ConnectionResetError:
        return "reset"


def _ws_failure_label(e: BaseException, answer_timeout: float) -> str:
    """A WebSocket session that ended without an answer: refused handshake, close code, timeout, reset."""
    from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: PLC0415

    if isinstance(e, InvalidStatus):
        retry = e.response.status_code == 503 and e.response.headers.get("Retry-After") is not None
        return f"ws handshake {e.response.status_code}" + (" Retry-After" if retry else "")
    if isinstance(e, ConnectionClosed):
        return f"ws close {e.rcvd.code}" if e.rcvd else "closed, no answer"
    if isinstance(e, TimeoutError):
        return f"no answer in {answer_timeout:g} s"
    if isinstance(e, OSError):
        return _os_label(e)
    return f"ws handshake failed ({type(e).__name__})"


def _ws_answer_label(text: str | bytes) -> str:
    """A WebSocket answer: 'ws 200' for faces, else 'ws <status>' of the JSON error."""
    try:
        answer = json.loads(text)
    except ValueError:
        return "ws non-JSON answer"
    if not isinstance(answer, dict):
        return "ws non-JSON answer"
    if "faces" in answer:
        return "ws 200"
    status = answer.get("status")
    if status is None:
        return "ws error"
    retry = status == 503 and "retry_after" in answer  # the service's WebSocket form of the header
    return f"ws {status}" + (" Retry-After" if retry else "")


@dataclasses.dataclass
class Record:
    """Everything the clients saw, shared by their threads."""
    start: float
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    valid: list[tuple[float, float]] = dataclasses.field(default_factory=list)   # (sent at s, latency ms)
    valid_other: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    hostile: dict[str, collections.Counter] = dataclasses.field(
        default_factory=lambda: collections.defaultdict(collections.Counter))
    close_s: dict[str, list[float]] = dataclasses.field(default_factory=lambda: collections.defaultdict(list))

    def answered(self, sent: float, ms: float) -> None:
        with self.lock:
            self.valid.append((sent - self.start, ms))

    def valid_failed(self, label: str) -> None:
        with self.lock:
            self.valid_other[label] += 1

    def saw(self, kind: str, label: str, close_s: float | None = None) -> None:
        with self.lock:
            self.hostile[kind][label] += 1
            if close_s is not None:
                self.close_s[kind].append(close_s)


class RssWatch:
    """Peak resident memory of process `pid` from /proc/PID/status (VmRSS), read every `every_s`."""

    def __init__(self, pid: int, every_s: float = 0.1):
        self.pid, self.every_s, self.peak_kb, self.samples, self.gone = pid, every_s, 0, 0, False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-watch", daemon=True)
        self._thread.start()

    def read_kb(self) -> int | None:
        try:
            with open(f"/proc/{self.pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            return None
        if fields.get("State", "").strip().startswith("Z"):
            return None
        return int(fields.get("VmRSS", "0 kB").split()[0])

    def _run(self) -> None:
        while not self._stop.is_set():
            kb = self.read_kb()
            if kb is None:
                self.gone = True
                return
            self.peak_kb, self.samples = max(self.peak_kb, kb), self.samples + 1
            self._stop.wait(self.every_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class Attack:
    """The clients of one run against the service at `url` (loopback only)."""

    def __init__(self, url: str, frames: Sequence[bytes], info: dict, *, socket_deadline: float,
                 answer_timeout: float = 30, trickle_s: float = 0.5, seed: int = 0):
        parts = urllib.parse.urlsplit(url)
        if not is_loopback(parts.hostname or ""):
            raise ValueError(f"{url}: the adversarial load only targets this machine (127.0.0.1, ::1, localhost)")
        self.addr = (parts.hostname, parts.port or 80)
        self.origin = f"{parts.scheme}://{parts.netloc}"     # same-origin, as the service's own page
        self.host = parts.netloc                              # loopback Host
        self.ws_url = f"ws://{parts.netloc}/v1/ws"
        self.frames = list(frames)
        self.max_body, self.max_pixels = int(info["max_body_bytes"]), int(info["max_pixels"])
        self.socket_deadline, self.answer_timeout, self.trickle_s = socket_deadline, answer_timeout, trickle_s
        self.rng = np.random.default_rng(seed)
        side = math.isqrt(self.max_pixels)
        self.bomb = png(side, side)                                         # within the limit
        self.over_bomb = png(side + 1, side + 1)                            # just over it
        self.tall_png = png(320, max(1, min(78_000, self.max_pixels // 320)))  # within the limit, 1:244 or less
        self.thin = thin_images(self.max_pixels)
        # WebSocket messages of zeros, framed once (masked with a zero key, which leaves them as they
        # are): one over max_body, one at most max_body but above uvicorn's 16 MiB default, and one
        # over max_body deflated to ~20 KB (permessage-deflate)
        deflate = zlib.compressobj(wbits=-15)
        deflated = deflate.compress(bytes(self.max_body + 1)) + deflate.flush(zlib.Z_SYNC_FLUSH)
        self.oversized = ws_frame(bytes(self.max_body + 1))
        self.near_limit = ws_frame(bytes(min(self.max_body, 17 * 2**20)))
        self.deflate_bomb = ws_frame(deflated[:-4], compressed=True)  # without the 00 00 ff ff tail
        self.refused = refused_formats()
        self._variant: dict[str, itertools.count] = collections.defaultdict(itertools.count)
        self.kinds: dict[str, Callable[[Record, str], None]] = {k: getattr(self, k) for k in HOSTILE_KINDS}

    def variant(self, kind: str, n: int) -> int:
        return next(self._variant[kind]) % n

    # ---- raw HTTP ----------------------------------------------------------------------------

    def head(self, path: str = "/v1/analyze", ctype: str | None = "image/jpeg", length: int | None = 0,
             extra: str = "", host: str | None = None, origin: str | None = None) -> bytes:
        lines = [f"POST {path} HTTP/1.1", f"Host: {host or self.host}", f"Origin: {origin or self.origin}"]
        if ctype is not None:
            lines.append(f"Content-Type: {ctype}")
        if length is not None:
            lines.append(f"Content-Length: {length}")
        return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode("latin-1")

    def connect(self) -> socket.socket | str:
        """A connected socket, or the outcome label of a refused connection."""
        try:
            return socket.create_connection(self.addr, timeout=self.answer_timeout)
        except OSError as e:
            return _os_label(e)

    def request(self, data: bytes, half_close: bool = False) -> str:
        """Sends one raw request and reads one answer: 'http <status>', 'closed, no answer', 'reset'..."""
        sock = self.connect()
        if isinstance(sock, str):
            return sock
        with sock:
            try:
                sock.sendall(data)
                if half_close:
                    sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the server may answer (413) and close before reading it all: read that answer
            resp = http.client.HTTPResponse(sock)
            try:
                resp.begin()
                resp.read(1 << 20)
            except http.client.RemoteDisconnected:
                return "closed, no answer"
            except http.client.IncompleteRead:
                pass
            except (http.client.HTTPException, ValueError):
                return "malformed answer"
            except OSError as e:
                return _os_label(e) if not isinstance(e, (TimeoutError, socket.timeout)) else \
                    f"no answer in {self.answer_timeout:g} s"
        retry = resp.status == 503 and resp.getheader("Retry-After") is not None
        return f"http {resp.status}" + (" Retry-After" if retry else "")

    def post(self, record: Record, kind: str, body: bytes, ctype: str | None = "image/jpeg",
             path: str = "/v1/analyze", **head) -> None:
        record.saw(kind, self.request(self.head(path, ctype, len(body), **head) + body))

    def hold(self, record: Record, kind: str, data: bytes, prefix: bytes = b"") -> None:
        """Opens a socket, sends `prefix` at once and `data` one byte per `trickle_s` (nothing for b''),
        until the server closes it. The time to the close is recorded (late past `socket_deadline` +
        SLACK_S); a socket still open at twice the deadline counts as held open and is dropped."""
        t0 = time.perf_counter()
        limit = 2 * self.socket_deadline + SLACK_S
        sock = self.connect()
        if isinstance(sock, str):
            record.saw(kind, sock)
            return
        got, sent, next_send, label = b"", 0, t0, None
        with sock:
            try:
                sock.sendall(prefix)
            except OSError:
                next_send = math.inf
            while label is None:
                now = time.perf_counter()
                if now - t0 > limit:
                    label = HELD_OPEN
                    break
                if sent < len(data) and now >= next_send:
                    try:
                        sock.send(data[sent:sent + 1])
                        sent, next_send = sent + 1, now + self.trickle_s
                    except OSError:
                        next_send = math.inf  # closed by the server: its answer (if any) is still readable
                if sent >= len(data):
                    next_send = math.inf
                wait = min(0.25, max(0.0, next_send - now), max(0.0, t0 + limit - now))
                if select.select([sock], [], [], wait)[0]:
                    try:
                        chunk = sock.recv(65536)
                    except OSError as e:  # a reset may follow an answer (unread bytes were left)
                        label = _raw_answer_label(got) or _os_label(e)
                        break
                    if not chunk:
                        label = _raw_answer_label(got) or "closed, no answer"
                    got += chunk
        record.saw(kind, label, None if label == HELD_OPEN else time.perf_counter() - t0)

    # ---- WebSocket ---------------------------------------------------------------------------

    def ws_exchange(self, message: bytes | str, *, origin: str | None = None, compression: str | None = None) -> str:
        """One WebSocket session: connect, send `message`, read one answer."""
        from websockets.exceptions import ConnectionClosed, InvalidHandshake  # noqa: PLC0415
        from websockets.sync.client import connect  # noqa: PLC0415

        try:
            with connect(self.ws_url, origin=origin or self.origin, compression=compression, max_size=None,
                         open_timeout=self.answer_timeout, **WS_OPTIONS) as ws:
                ws.send(message)
                return _ws_answer_label(ws.recv(timeout=self.answer_timeout))
        except (InvalidHandshake, ConnectionClosed, TimeoutError, OSError) as e:
            return _ws_failure_label(e, self.answer_timeout)

    def ws_raw(self, frame: bytes, deflate: bool = False) -> str:
        """A WebSocket session by hand: handshake (offering permessage-deflate if `deflate`), one
        prebuilt `frame`, one answer. The library would mask (and deflate) a large message again at
        every send; this costs the client only the copy into the socket."""
        key = base64.b64encode(os.urandom(16)).decode()
        head = (f"GET /v1/ws HTTP/1.1\r\nHost: {self.host}\r\nOrigin: {self.origin}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                + ("Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover\r\n" if deflate else "")
                + "\r\n").encode()
        sock = self.connect()
        if isinstance(sock, str):
            return sock
        with sock:
            try:
                sock.sendall(head)
                buf = b""
                while b"\r\n\r\n" not in buf:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return _raw_answer_label(buf) or "closed, no answer"
                    buf += chunk
                answer, buf = buf.split(b"\r\n\r\n", 1)
                if not answer.startswith(b"HTTP/1.1 101"):
                    label = _raw_answer_label(answer + b"\r\n")  # 'http 403' -> 'ws handshake 403'
                    return "ws handshake " + label[len("http "):] if label else "ws handshake failed"
                if deflate and b"permessage-deflate" not in answer.lower():
                    return "ws deflate refused"
                try:
                    sock.sendall(frame)
                except OSError:
                    pass  # the server may answer or close before reading it all: read that
                return _read_ws_answer(sock, buf)
            except (TimeoutError, socket.timeout):
                return f"no answer in {self.answer_timeout:g} s"
            except OSError as e:
                return _os_label(e)

    # ---- the hostile kinds ---------------------------------------------------------------------

    def pixel_bomb(self, record: Record, kind: str) -> None:
        body = self.over_bomb if self.variant(kind, 3) == 2 else self.bomb
        self.post(record, kind, body, "image/png")

    def pixel_bomb_ws(self, record: Record, kind: str) -> None:
        record.saw(kind, self.ws_exchange(self.bomb))

    def tall(self, record: Record, kind: str) -> None:
        (tiff, tiff_data), (bmp, bmp_data) = self.thin
        body, ctype, path = [(tiff_data, f"image/{tiff}", "/v1/analyze"),
                             (self.tall_png, "image/png", "/v1/analyze?mode=video"),
                             (bmp_data, f"image/{bmp}", "/v1/analyze?mode=video"),
                             (self.tall_png, "image/png", "/v1/analyze")][self.variant(kind, 4)]
        self.post(record, kind, body, ctype, path=path)

    def tall_ws(self, record: Record, kind: str) -> None:
        record.saw(kind, self.ws_exchange(self.thin[0][1] if self.variant(kind, 2) else self.tall_png))

    def slow_headers(self, record: Record, kind: str) -> None:
        self.hold(record, kind, self.head(length=1000))

    def slow_body(self, record: Record, kind: str) -> None:
        self.hold(record, kind, self.frames[0][:200], prefix=self.head(length=100_000))

    def idle(self, record: Record, kind: str) -> None:
        self.hold(record, kind, b"")

    def truncated_body(self, record: Record, kind: str) -> None:
        frame = self.frames[self.variant(kind, len(self.frames))]
        if self.variant(kind + "/chunked", 2):
            data = self.head(length=None, extra="Transfer-Encoding: chunked\r\n") + b"%x\r\n" % len(frame) + frame[:100]
        else:
            data = self.head(length=len(frame)) + frame[: len(frame) // 2]
        record.saw(kind, self.request(data, half_close=True))

    def truncated_image(self, record: Record, kind: str) -> None:
        frame = self.frames[self.variant(kind, len(self.frames))]
        cut = frame[: len(frame) // 2]
        if self.variant(kind + "/ws", 2):
            record.saw(kind, self.ws_exchange(cut))
        else:
            self.post(record, kind, cut)

    def bad_type(self, record: Record, kind: str) -> None:
        ctype = ("application/json", "text/plain", None, "application/x-www-form-urlencoded",
                 "image/svg+xml")[self.variant(kind, 5)]
        body = b'<svg xmlns="http://www.w3.org/2000/svg" width="9000" height="9000"/>' if ctype == "image/svg+xml" \
            else self.frames[0]
        self.post(record, kind, body, ctype)

    def refused_format(self, record: Record, kind: str) -> None:
        name, data = self.refused[self.variant(kind, len(self.refused))]
        self.post(record, kind, data, "application/octet-stream" if name == "eps" else f"image/{name}")

    def malformed_multipart(self, record: Record, kind: str) -> None:
        b = "ferjaxattack"
        part = (f"--{b}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n"
                f"Content-Type: image/png\r\n\r\n").encode()
        v = self.variant(kind, 5)
        if v == 0:    # no boundary
            body, ctype = part + self.frames[0], "multipart/form-data"
        elif v == 1:  # truncated: no closing boundary
            body, ctype = part + self.frames[0][:500], f"multipart/form-data; boundary={b}"
        elif v == 2:  # more fields than the service reads
            body = b"".join(f"--{b}\r\nContent-Disposition: form-data; name=\"f{i}\"\r\n\r\nx\r\n".encode()
                            for i in range(2000)) + f"--{b}--\r\n".encode()
            ctype = f"multipart/form-data; boundary={b}"
        elif v == 3:  # boundary that never occurs
            body, ctype = part + self.frames[0] + b"\r\n--other--\r\n", f"multipart/form-data; boundary={b}"
        else:         # well-formed, carrying a pixel bomb
            body, ctype = part + self.bomb + f"\r\n--{b}--\r\n".encode(), f"multipart/form-data; boundary={b}"
        self.post(record, kind, body, ctype)

    def ws_oversized(self, record: Record, kind: str) -> None:
        record.saw(kind, self.ws_raw(self.oversized))

    def ws_near_limit(self, record: Record, kind: str) -> None:
        record.saw(kind, self.ws_raw(self.near_limit))

    def ws_deflate_bomb(self, record: Record, kind: str) -> None:
        record.saw(kind, self.ws_raw(self.deflate_bomb, deflate=True))

    def garbage_http(self, record: Record, kind: str) -> None:
        v = self.variant(kind, 4)
        if v == 0:
            data = self.rng.integers(0, 256, 4096, dtype=np.uint8).tobytes() + b"\r\n\r\n"  # ends like a request
        elif v == 1:
            data = b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: " + self.host.encode() + b"\r\n\r\n"
        elif v == 2:
            data = self.head(length=0, extra="".join(f"X-H{i}: {'v' * 100}\r\n" for i in range(1000)))
        else:
            data = b"POST /v1/analyze HTTP/1.1\r\nHost: " + self.host.encode() + b"\r\nContent-Length: -5\r\n\r\n"
        record.saw(kind, self.request(data))

    def garbage_image(self, record: Record, kind: str) -> None:
        data = self.rng.integers(0, 256, int(self.rng.integers(16, 65536)), dtype=np.uint8).tobytes()
        v = self.variant(kind, 3)
        if v == 0:
            self.post(record, kind, data)
        elif v == 1:
            record.saw(kind, self.ws_exchange(data))
        else:
            record.saw(kind, self.ws_exchange("not a frame"))

    def oversized_body(self, record: Record, kind: str) -> None:
        record.saw(kind, self.request(self.head(length=self.max_body + 1) + bytes(65536)))

    def cross_origin(self, record: Record, kind: str) -> None:
        if self.variant(kind, 2):
            record.saw(kind, self.ws_exchange(self.frames[0], origin="http://evil.example"))
        else:
            self.post(record, kind, self.frames[0], host="evil.example")

    # ---- clients -----------------------------------------------------------------------------

    def valid_client(self, record: Record, index: int, stride: int, until: float) -> None:
        """Distinct frames over one WebSocket, each sent when the previous answer arrived; a new
        connection after the server closed one."""
        from websockets.exceptions import ConnectionClosed, InvalidHandshake  # noqa: PLC0415
        from websockets.sync.client import connect  # noqa: PLC0415

        n = index
        while time.perf_counter() < until:
            try:
                with connect(self.ws_url, origin=self.origin, compression=None,
                             open_timeout=self.answer_timeout, **WS_OPTIONS) as ws:
                    while time.perf_counter() < until:
                        t = time.perf_counter()
                        ws.send(self.frames[n % len(self.frames)])
                        label = _ws_answer_label(ws.recv(timeout=self.answer_timeout))
                        n += stride
                        if label == "ws 200":
                            record.answered(t, (time.perf_counter() - t) * 1e3)
                        else:  # a JSON error: the socket stays usable
                            record.valid_failed(label)
                            time.sleep(0.05)
                    return
            except (InvalidHandshake, ConnectionClosed, TimeoutError, OSError) as e:
                label = _ws_failure_label(e, self.answer_timeout)
            record.valid_failed(label)
            time.sleep(0.05)  # no busy loop against a refusing or dead server

    def hostile_client(self, record: Record, offset: int, until: float, pause_s: float) -> None:
        """Every hostile kind in turn from `offset`, until `until` (a slow socket may outlast it)."""
        names = list(self.kinds)
        for i in itertools.count(offset):
            if time.perf_counter() >= until:
                return
            name = names[i % len(names)]
            try:
                self.kinds[name](record, name)
            except Exception as e:  # noqa: BLE001 - a client-side failure is reported, the others go on
                record.saw(name, f"client error ({type(e).__name__}: {str(e)[:80]})")
            time.sleep(pause_s)



def check_kinds(kinds: Sequence[str]) -> None:
    """Raises ValueError naming any unknown hostile kind."""
    unknown = sorted(set(kinds) - set(HOSTILE_KINDS))
    if unknown or not kinds:
        raise ValueError(f"unknown hostile kinds {unknown or '(none given)'}: choose from {', '.join(HOSTILE_KINDS)}")


def server_error(label: str) -> bool:
    """A 5xx other than 503 with Retry-After, or a WebSocket closed for an internal error (1011)."""
    status = status_of(label)
    return (status is not None and status >= 500 and not allowed_5xx(label)) or label == "ws close 1011"


def _pct(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if len(values) else None


def run_attack(url: str, frames: Sequence[bytes], pid: int, *, seconds: float = 60, valid_clients: int = 8,
               hostile_clients: int = 24, socket_deadline: float = 20, answer_timeout: float = 30,
               pause_s: float = 0.1, window_s: float = 10, exit_code: Callable[[], int | None] | None = None,
               kinds: Sequence[str] | None = None, server_log: Callable[[], str] | None = None) -> dict:
    """One bounded run against the service at `url` whose process is `pid`; the raw figures
    (`evaluate` turns them into targets). `exit_code` reports a child server's exit and
    `server_log` its stderr, if known; `kinds` keeps only those hostile kinds (default: all)."""
    info = _get_json(url, "/v1/models", answer_timeout)
    attack = Attack(url, frames, info, socket_deadline=socket_deadline, answer_timeout=answer_timeout)
    if kinds is not None:
        check_kinds(kinds)
        attack.kinds = {k: f for k, f in attack.kinds.items() if k in kinds}
    rss = RssWatch(pid)
    cpu0 = time.process_time()
    start = time.perf_counter()
    record, until = Record(start), start + seconds
    n_kinds = len(attack.kinds)
    threads = [threading.Thread(target=attack.valid_client, args=(record, i, valid_clients, until), daemon=True)
               for i in range(valid_clients)]
    threads += [threading.Thread(target=attack.hostile_client,
                                 args=(record, i * n_kinds // max(1, hostile_clients), until, pause_s), daemon=True)
                for i in range(hostile_clients)]
    for t in threads:
        t.start()
    for t in threads:  # a hostile action started before `until` ends within its own bound
        t.join(timeout=max(0.0, until - time.perf_counter()) + socket_deadline + 2 * answer_timeout + 5)
    wall = time.perf_counter() - start
    client_cpu = time.process_time() - cpu0
    stuck = sum(t.is_alive() for t in threads)
    code = exit_code() if exit_code else None
    try:
        health = _get_json(url, "/healthz", 10).get("status")
    except (OSError, http.client.HTTPException, ValueError) as e:
        health = f"no answer ({type(e).__name__})"
    rss.stop()

    sent = np.asarray([s for s, _ in record.valid])
    ms = np.asarray([m for _, m in record.valid])
    windows = []
    for k in range(max(1, math.ceil(seconds / window_s))):
        last = k == math.ceil(seconds / window_s) - 1
        sel = ms[(sent >= k * window_s) & ((sent < (k + 1) * window_s) | last)]
        windows.append({"from_s": k * window_s, "to_s": min(seconds, (k + 1) * window_s), "answered": len(sel),
                        "p50_ms": _pct(sel, 50), "p99_ms": _pct(sel, 99)})
    labels = collections.Counter(record.valid_other)
    for counts in record.hostile.values():
        labels.update(counts)
    return {
        "url": url, "seconds": seconds, "wall_s": round(wall, 1), "valid_clients": valid_clients,
        "hostile_clients": hostile_clients, "max_body": attack.max_body, "max_pixels": attack.max_pixels,
        "socket_deadline_s": socket_deadline, "frames": len(frames),
        "valid": {"answered": len(ms), "p50_ms": _pct(ms, 50), "p99_ms": _pct(ms, 99), "windows": windows,
                  "failed": dict(record.valid_other)},
        "hostile": {k: dict(record.hostile.get(k, {})) for k in attack.kinds},
        "slow_close_max_s": {k: round(max(record.close_s[k]), 2) for k in SLOW_KINDS if record.close_s.get(k)},
        "held_open": sum(record.hostile.get(k, {}).get(HELD_OPEN, 0) for k in SLOW_KINDS),
        "closed_late": sum(t > socket_deadline + SLACK_S for k in SLOW_KINDS for t in record.close_s.get(k, [])),
        "status_503": {"with_retry_after": sum(n for lab, n in labels.items() if allowed_5xx(lab)),
                       "without_retry_after": sum(n for lab, n in labels.items()
                                                  if status_of(lab) == 503 and not allowed_5xx(lab))},
        "server_errors": {lab: n for lab, n in labels.items() if server_error(lab)},
        "resets": {"valid": record.valid_other.get("reset", 0),
                   "hostile": sum(c.get("reset", 0) for c in record.hostile.values())},
        "server_exit_code": code, "server_gone": rss.gone or code is not None, "healthz_after": health,
        "clients_still_running": stuck, "client_cpu_s": round(client_cpu, 1),
        "peak_rss_mb": round(rss.peak_kb / 1024, 1), "rss_samples": rss.samples,
        "server_exceptions": logged_exceptions(server_log()) if server_log else None,
    }


def evaluate(result: dict, *, p99_ms: float = 250, max_rss_mb: float = 1500,
             min_answers: int | None = None) -> list[dict]:
    """PASS/FAIL per target; `min_answers` defaults to the floor scaled by duration and valid clients."""
    floor = min_answers if min_answers is not None else answer_floor(result["seconds"], result["valid_clients"])
    v = result["valid"]
    bad_windows = [f"{w['from_s']:g}-{w['to_s']:g} s: {w['p99_ms']} ms" for w in v["windows"]
                   if w["p99_ms"] is None or w["p99_ms"] >= p99_ms]
    valid_errors = {lab: n for lab, n in v["failed"].items() if not allowed_5xx(lab)}
    s503 = result["status_503"]
    held, late = result["held_open"], result["closed_late"]
    crashed = result["server_gone"] or result["healthz_after"] != "ok"
    # a traceback in the log is an error the service did not turn into an answer: a 500 over
    # HTTP, a dropped connection over the WebSocket
    logged = result.get("server_exceptions")

    def target(name: str, ok: bool, detail: str) -> dict:
        return {"target": name, "ok": bool(ok), "detail": detail}

    return [
        target("no 5xx except 503 with Retry-After, no unhandled exception", not result["server_errors"] and not logged,
               f"other 5xx: {result['server_errors'] or 0}; 503 with Retry-After: {s503['with_retry_after']}, "
               f"without: {s503['without_retry_after']}; unhandled exceptions in the server log: "
               f"{'not read' if logged is None else sum(logged.values())}"),
        target("zero crashes", not crashed,
               f"server exit code {result['server_exit_code']}, process gone: {result['server_gone']}, "
               f"/healthz after the run: {result['healthz_after']}"),
        target(f"server RSS never above {max_rss_mb:g} MB", result["peak_rss_mb"] <= max_rss_mb,
               f"peak {result['peak_rss_mb']:g} MB over {result['rss_samples']} samples"),
        target(f"valid p99 under {p99_ms:g} ms over the run and every window",
               v["p99_ms"] is not None and v["p99_ms"] < p99_ms and not bad_windows,
               f"run p99 {v['p99_ms']} ms" + (f"; windows over: {', '.join(bad_windows)}" if bad_windows else "")),
        target(f"at least {floor} valid answers", v["answered"] >= floor,
               f"{v['answered']} answered (floor {ANSWERS_PER_CLIENT_MINUTE * 8:g} per 60 s and 8 clients, scaled "
               f"to {result['seconds']:g} s and {result['valid_clients']} clients)"
               if min_answers is None else f"{v['answered']} answered"),
        target("valid clients see no error but 503 with Retry-After", not valid_errors,
               f"errors: {valid_errors or 0}"),
        target(f"slow and idle sockets closed by the server within {result['socket_deadline_s']:g} s "
               f"(+{SLACK_S:g} s slack)", held == 0 and late == 0,
               f"closed late: {late}, still open at twice the deadline: {held}; longest before the server "
               f"closed: {result['slow_close_max_s'] or 'none closed'}"),
    ]


def format_report(result: dict, targets: Sequence[dict]) -> str:
    v = result["valid"]
    lines = [
        f"ferjax.serve_attack: {result['seconds']:g} s ({result['wall_s']:g} s with the last slow sockets) on "
        f"{result['url']}: {result['valid_clients']} valid + {result['hostile_clients']} hostile clients; "
        f"max_body {result['max_body']}, max_pixels {result['max_pixels']}; the clients used "
        f"{result['client_cpu_s']:g} s of CPU",
        f"valid frames over /v1/ws ({result['frames']} distinct JPEG frames): {v['answered']} answered, "
        f"p50 {v['p50_ms']} ms, p99 {v['p99_ms']} ms; not answered: {v['failed'] or 0}",
        "", "| window s | answered | p50 ms | p99 ms |", "| --- | --- | --- | --- |",
        *[f"| {w['from_s']:g}-{w['to_s']:g} | {w['answered']} | {w['p50_ms']} | {w['p99_ms']} |" for w in v["windows"]],
        "", "| hostile kind | sent | outcomes |", "| --- | --- | --- |",
        *[f"| {k} | {sum(c.values())} | {', '.join(f'{lab}: {n}' for lab, n in sorted(c.items())) or '-'} |"
          for k, c in result["hostile"].items()],
        "",
        f"503: {result['status_503']['with_retry_after']} with Retry-After, "
        f"{result['status_503']['without_retry_after']} without; other 5xx: {result['server_errors'] or 0}; "
        f"resets: {result['resets']}",
        f"slow/idle sockets: {result['closed_late']} closed after {result['socket_deadline_s']:g} s + {SLACK_S:g} s "
        f"of slack, {result['held_open']} still open at {2 * result['socket_deadline_s'] + SLACK_S:g} s; longest "
        f"before the server closed: {result['slow_close_max_s'] or 'none closed'}",
        f"server: peak RSS {result['peak_rss_mb']:g} MB ({result['rss_samples']} samples, every 100 ms); exit code "
        f"{result['server_exit_code']}; /healthz after: {result['healthz_after']}"
        + (f"; {result['clients_still_running']} clients still waiting at the end"
           if result.get("clients_still_running") else "")
        + (f"; unhandled exceptions in its log: {result['server_exceptions'] or 0}"
           if result.get("server_exceptions") is not None else ""),
        "",
        *[f"{'PASS' if t['ok'] else 'FAIL'}  {t['target']}: {t['detail']}" for t in targets],
    ]
    return "\n".join(lines)


def request_timeout(server_args: Sequence[str] = ()) -> float:
    """The --request-timeout of `python -m ferjax.serve` started with `server_args` (read by the
    service's own parser): the longest a slow or idle socket may stay open."""
    from ferjax.serve import parser as serve_parser  # noqa: PLC0415

    return serve_parser().parse_known_args(list(server_args))[0].request_timeout


def logged_exceptions(log: str) -> dict[str, int]:
    """The exception line of each traceback in a server log (uvicorn's 'Exception in ASGI
    application'), counted by its first 160 characters."""
    counts: collections.Counter = collections.Counter()
    for block in log.split("Traceback (most recent call last):")[1:]:
        line = next((ln for ln in block.splitlines() if ln and not ln[0].isspace()), "(no exception line)")
        counts[line[:160]] += 1
    return dict(counts)


def _get_json(url: str, path: str, timeout: float) -> dict:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Origin": f"{parts.scheme}://{parts.netloc}"})
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        raise ValueError(f"GET {url}{path}: HTTP {resp.status}: {body[:200]!r}")
    return json.loads(body)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ferjax.serve_attack", description=__doc__.split("\n\n")[0])
    p.add_argument("--video", required=True, help="a real one-face video; its frames are the valid requests")
    p.add_argument("--frames", type=int, default=120, help="distinct valid frames (default %(default)s)")
    p.add_argument("--seconds", type=float, default=60, help="duration of the load (default %(default)s)")
    p.add_argument("--valid-clients", type=int, default=8, help="default %(default)s")
    p.add_argument("--hostile-clients", type=int, default=24, help="default %(default)s")
    p.add_argument("--window", type=float, default=10, help="seconds per latency window (default %(default)s)")
    p.add_argument("--socket-deadline", type=float, default=None,
                   help=f"seconds the server may keep a slow or idle socket open, +{SLACK_S:g} s of timer slack "
                        f"(default: the started service's --request-timeout, {DEFAULT_REQUEST_TIMEOUT:g} s unless "
                        "--server-arg sets it)")
    p.add_argument("--answer-timeout", type=float, default=30,
                   help="seconds a client waits for an answer to a complete request (default %(default)s)")
    p.add_argument("--hostile-pause", type=float, default=0.1,
                   help="seconds each hostile client rests between inputs (default %(default)s)")
    p.add_argument("--kinds", default=None,
                   help="comma-separated hostile kinds to send (default: all; an unknown name lists them)")
    p.add_argument("--p99-ms", type=float, default=250, help="valid p99 target (default %(default)s)")
    p.add_argument("--max-rss-mb", type=float, default=1500, help="server RSS target (default %(default)s)")
    p.add_argument("--min-answers", type=int, default=None,
                   help="valid answers required (default: 2,000 per 60 s and 8 valid clients, scaled)")
    p.add_argument("--url", default=None, help="a running service on this machine (needs --pid)")
    p.add_argument("--pid", type=int, default=None, help="process id of the --url service (memory, crash)")
    p.add_argument("--detector", default=None, help="detector of the started service (default yunet)")
    p.add_argument("--server-arg", action="append", default=[],
                   help="an argument for the started `python -m ferjax.serve` (repeat; e.g. "
                        "--server-arg=--max-pixels=8000000)")
    p.add_argument("--json", action="store_true", help="print the result as JSON too")
    args = p.parse_args(argv)
    if args.socket_deadline is None:
        args.socket_deadline = request_timeout([] if args.url else args.server_arg)
    if min(args.seconds, args.window, args.socket_deadline, args.answer_timeout) <= 0 or args.valid_clients < 1 \
            or args.hostile_clients < 0:
        p.error("--seconds, --window, --socket-deadline, --answer-timeout must be > 0, --valid-clients >= 1, "
                "--hostile-clients >= 0")
    if args.url and args.pid is None:
        p.error("--url needs --pid (the service's process id: its memory is read from /proc/PID/status)")
    if args.url and not is_loopback(urllib.parse.urlsplit(args.url).hostname or ""):
        print(f"ferjax.serve_attack: {args.url}: only a service on this machine is attacked "
              f"(127.0.0.1, ::1, localhost)", file=sys.stderr)
        return 2
    try:
        kinds = args.kinds.split(",") if args.kinds else None
        if kinds is not None:
            check_kinds(kinds)
        frames = video_frames(args.video, args.frames)
    except (ValueError, FileNotFoundError) as e:
        print(f"ferjax.serve_attack: {e}", file=sys.stderr)
        return 2
    try:
        server = None if args.url else ServerProcess(args.detector, extra_args=args.server_arg)
    except RuntimeError as e:
        print(f"ferjax.serve_attack: {e}", file=sys.stderr)
        return 2
    try:
        result = run_attack(args.url or server.url, frames, args.pid or server.pid, seconds=args.seconds,
                            valid_clients=args.valid_clients, hostile_clients=args.hostile_clients,
                            socket_deadline=args.socket_deadline, answer_timeout=args.answer_timeout,
                            pause_s=args.hostile_pause, window_s=args.window,
                            exit_code=server.proc.poll if server else None,
                            kinds=kinds, server_log=server.log_text if server else None)
    except (OSError, ValueError, http.client.HTTPException) as e:
        print(f"ferjax.serve_attack: {e}", file=sys.stderr)
        return 2
    finally:
        if server is not None:
            server.stop()
    if server is not None:
        result["server_args"] = args.server_arg
    targets = evaluate(result, p99_ms=args.p99_ms, max_rss_mb=args.max_rss_mb, min_answers=args.min_answers)
    print(format_report(result, targets))
    if args.json:
        print(json.dumps({**result, "targets": targets}))
    return 0 if all(t["ok"] for t in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
