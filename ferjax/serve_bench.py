"""Load benchmark of the HTTP service, on this machine only, bounded in requests and seconds.

    python -m ferjax.serve_bench --video ../shared/media/one_face_pexels_640x360.mp4 [--clients 1,8]
        [--requests 400] [--max-seconds 60] [--url http://127.0.0.1:8000]

Sends different JPEG frames of a real video (POST /v1/analyze, keep-alive connections) from
1 and 8 concurrent clients and prints requests per second, p50/p99 latency and the error count.
Without --url it starts `python -m ferjax.serve` in a child process on a free loopback port.
Only loopback URLs are accepted.
"""
from __future__ import annotations

import argparse
import http.client
import itertools
import json
import sys
import threading
import time
import urllib.parse
from typing import Sequence

import cv2
import numpy as np

from ferjax.serve import is_loopback


def video_frames(path: str, count: int, quality: int = 90) -> list[bytes]:
    """`count` JPEG-encoded frames spread evenly over the video (all distinct images)."""
    cap = cv2.VideoCapture(path)
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    if not cap.isOpened() or total <= 0:
        raise FileNotFoundError(f"cannot read video {path}")
    wanted = set(np.linspace(0, total - 1, min(count, total)).astype(int).tolist())
    out, i = [], 0
    while len(out) < len(wanted):
        ok, frame = cap.read()
        if not ok:
            break
        if i in wanted:
            out.append(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes())
        i += 1
    cap.release()
    if not out:
        raise ValueError(f"no frames decoded from {path}")
    return out


def run_load(url: str, frames: Sequence[bytes], clients: int, requests: int, max_seconds: float,
             api_key: str | None = None, mode: str = "photo") -> dict:
    """`requests` POSTs (or until `max_seconds`) from `clients` threads; latency percentiles in ms."""
    parts = urllib.parse.urlsplit(url)
    if not is_loopback(parts.hostname or ""):
        raise ValueError(f"{url}: the load benchmark only targets this machine (127.0.0.1, ::1, localhost)")
    counter, lock = itertools.count(), threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.perf_counter() + max_seconds
    headers = {"Content-Type": "image/jpeg", **({"X-API-Key": api_key} if api_key else {})}

    def client() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        while time.perf_counter() < deadline:
            with lock:
                n = next(counter)
            if n >= requests:
                break
            t = time.perf_counter()
            try:
                conn.request("POST", f"/v1/analyze?mode={mode}", body=frames[n % len(frames)], headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                ok = resp.status == 200 and "faces" in json.loads(body)
                msg = None if ok else f"HTTP {resp.status}: {body[:200]!r}"
            except (OSError, http.client.HTTPException, ValueError) as e:
                msg = f"{type(e).__name__}: {e}"
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
            with lock:
                if msg is None:
                    latencies.append((time.perf_counter() - t) * 1e3)
                else:
                    errors.append(msg)
        conn.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat = np.asarray(latencies)
    return {"clients": clients, "requests": len(latencies) + len(errors), "ok": len(latencies),
            "errors": len(errors), "first_errors": errors[:3], "seconds": round(wall, 2),
            "req_per_s": round(len(latencies) / wall, 1) if wall else 0.0,
            "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None}


def format_rows(rows: Sequence[dict]) -> str:
    lines = ["| mode | clients | requests | req/s | p50 ms | p99 ms | errors |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r.get('mode', 'photo')} | {r['clients']} | {r['requests']} | {r['req_per_s']} | {r['p50_ms']} "
              f"| {r['p99_ms']} | {r['errors']} |" for r in rows]
    return "\n".join(lines)


def bench(url: str, frames: Sequence[bytes], clients: Sequence[int], requests: int, max_seconds: float,
          warmup: int = 8, api_key: str | None = None, mode: str = "photo") -> list[dict]:
    """A few unmeasured warm-up requests, then one bounded run per client count."""
    run_load(url, frames, 1, warmup, max_seconds, api_key, mode)
    return [{"mode": mode, **run_load(url, frames, c, requests, max_seconds, api_key, mode)} for c in clients]


class ServerProcess:
    """`python -m ferjax.serve` on a free loopback port in a child process (so that the load
    generator's threads do not share the server's interpreter), with `extra_args` added to its
    command line. Its stderr goes to a temporary file, never a pipe: a server that logs a warning
    per bad request would otherwise block once nobody reads a full pipe."""

    def __init__(self, detector: str | None = None, timeout_s: float = 300, extra_args: Sequence[str] = ()):
        import socket  # noqa: PLC0415
        import subprocess  # noqa: PLC0415
        import tempfile  # noqa: PLC0415

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "ferjax.serve", "--port", str(port),
               *(["--detector", detector] if detector else []), *extra_args]
        self.log = tempfile.NamedTemporaryFile(prefix="ferjax-serve-", suffix=".log")  # removed when closed
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log, text=True)
        self.pid = self.proc.pid
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ferjax.serve {' '.join(extra_args)} exited with code "
                                   f"{self.proc.returncode}: {self.log_tail()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"ferjax.serve did not answer on {self.url} within {timeout_s} s: {self.log_tail()}")

    def log_text(self) -> str:
        """Everything the server wrote to stderr so far (read through a second handle: the server
        shares the first one's offset)."""
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def log_tail(self, chars: int = 2000) -> str:
        return self.log_text()[-chars:]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except Exception:  # noqa: BLE001 - a server that ignores SIGTERM
            self.proc.kill()
            self.proc.wait(timeout=10)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ferjax.serve_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--video", required=True, help="a real video; its frames are the requests")
    p.add_argument("--frames", type=int, default=120, help="distinct frames to send (default %(default)s)")
    p.add_argument("--clients", default="1,8", help="comma-separated client counts (default %(default)s)")
    p.add_argument("--requests", type=int, default=400, help="requests per client count (default %(default)s)")
    p.add_argument("--max-seconds", type=float, default=60, help="time limit per client count (default %(default)s)")
    p.add_argument("--url", default=None, help="a running service on this machine (default: start one here)")
    p.add_argument("--api-key", default=None)
    p.add_argument("--detector", default=None, help="detector of the in-process service (default yunet)")
    p.add_argument("--mode", default="photo", choices=("photo", "video"),
                   help="photo: detect at full resolution; video: the detector's fast width (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = p.parse_args(argv)
    try:
        clients = [int(c) for c in args.clients.split(",") if c]
        frames = video_frames(args.video, args.frames)
    except (ValueError, FileNotFoundError) as e:
        print(f"ferjax.serve_bench: {e}", file=sys.stderr)
        return 2
    server = None if args.url else ServerProcess(args.detector)
    url = args.url or server.url
    try:
        rows = bench(url, frames, clients, args.requests, args.max_seconds, api_key=args.api_key, mode=args.mode)
    except ValueError as e:
        print(f"ferjax.serve_bench: {e}", file=sys.stderr)
        return 2
    finally:
        if server is not None:
            server.stop()
    print(f"{len(frames)} distinct frames of {args.video}, {url}")
    print(format_rows(rows))
    if args.json:
        print(json.dumps(rows))
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
