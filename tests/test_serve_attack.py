"""The bounded adversarial load (`python -m ferjax.serve_attack`): a short run against the real
service in a child process must meet every target, and the judge of a run must fail each target
on the figures that break it."""
from __future__ import annotations

import copy

import cv2
import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the `serve` extra is not installed (pip install 'ferjax[serve]')")
pytest.importorskip("uvicorn", reason="the `serve` extra is not installed (pip install 'ferjax[serve]')")
pytest.importorskip("websockets", reason="the `serve` extra is not installed (pip install 'ferjax[serve]')")

from conftest import MEDIA, require_files  # noqa: E402
from ferjax import images  # noqa: E402
from ferjax.serve_attack import (Attack, answer_floor, evaluate, format_report, logged_exceptions, main,  # noqa: E402
                                 png, request_timeout, run_attack, server_error, ws_frame)
from ferjax.serve import DEFAULT_REQUEST_TIMEOUT  # noqa: E402
from ferjax.serve_bench import ServerProcess, video_frames  # noqa: E402

ONE_FACE = MEDIA / "one_face_pexels_640x360.mp4"
SECONDS, VALID, HOSTILE = 8, 2, 6
SERVER_ARGS = ["--request-timeout", "2"]  # slow and idle sockets answered 408 after 2 s


def test_pixel_bomb_is_a_few_kb_declaring_its_size():
    bomb = png(5000, 5000)
    head = images.header(bomb)
    assert len(bomb) < 8_000 and (head.format, head.width, head.height) == ("PNG", 5000, 5000)
    small = cv2.imdecode(np.frombuffer(png(37, 5), np.uint8), cv2.IMREAD_COLOR)
    assert small.shape == (5, 37, 3) and not small.any()  # a real PNG, one colour


@pytest.mark.parametrize("n, size_bytes", [(125, b"\xfd"), (126, b"\xfe\x00\x7e"),
                                           (70_000, b"\xff" + (70_000).to_bytes(8, "big"))])
def test_prebuilt_websocket_frame_is_final_binary_masked_with_a_zero_key(n, size_bytes):
    frame = ws_frame(bytes(n))
    assert frame == b"\x82" + size_bytes + b"\x00" * 4 + bytes(n)
    assert ws_frame(b"x", compressed=True)[:2] == b"\xc2\x81"  # RSV1: permessage-deflate


def test_answer_floor_scales_by_duration_and_valid_clients():
    assert answer_floor(60, 8) == 2000
    assert answer_floor(SECONDS, VALID) == 67 and answer_floor(10, 2) == 84


def test_socket_deadline_is_the_services_request_timeout():
    assert request_timeout(SERVER_ARGS) == 2 and request_timeout([]) == DEFAULT_REQUEST_TIMEOUT


def test_only_loopback_is_attacked_and_kinds_are_checked():
    with pytest.raises(ValueError, match="only targets this machine"):
        Attack("http://example.com:80", [b""], {"max_body_bytes": 1, "max_pixels": 1}, socket_deadline=1)
    assert main(["--video", str(ONE_FACE), "--url", "http://192.0.2.1:80", "--pid", "1"]) == 2
    assert main(["--video", str(ONE_FACE), "--kinds", "idle,bogus"]) == 2  # before any server starts


@pytest.mark.parametrize("label, bad", [
    ("http 500", True), ("http 502", True), ("http 503", True), ("ws handshake 503", True), ("ws 500", True),
    ("ws close 1011", True), ("http 503 Retry-After", False), ("ws 503 Retry-After", False),
    ("ws handshake 503 Retry-After", False), ("http 413", False), ("ws close 1009", False), ("reset", False),
])
def test_a_server_error_is_any_5xx_but_503_with_retry_after(label, bad):
    assert server_error(label) == bad


def test_server_log_exceptions_are_counted_by_their_exception_line():
    log = ("INFO: started\nERROR:    Exception in ASGI application\nTraceback (most recent call last):\n"
           '  File "x.py", line 1, in f\n    g()\ncv2.error: OpenCV(4.14.0) (-215:Assertion failed)\n'
           "WARNING: connection limit of 64 reached\n")
    assert logged_exceptions(log) == {"cv2.error: OpenCV(4.14.0) (-215:Assertion failed)": 1}
    assert logged_exceptions("WARNING: connection limit of 64 reached\n") == {}


def _clean_result() -> dict:
    return {"seconds": 10, "valid_clients": 2, "socket_deadline_s": 3, "server_errors": {},
            "status_503": {"with_retry_after": 4, "without_retry_after": 0}, "server_gone": False,
            "server_exit_code": None, "healthz_after": "ok", "peak_rss_mb": 900.0, "rss_samples": 100,
            "held_open": 0, "closed_late": 0, "slow_close_max_s": {"idle": 2.9}, "server_exceptions": {},
            "valid": {"answered": 90, "p50_ms": 20.0, "p99_ms": 120.0, "failed": {"ws 503 Retry-After": 2},
                      "windows": [{"from_s": 0, "to_s": 10, "answered": 90, "p50_ms": 20.0, "p99_ms": 120.0}]}}


@pytest.mark.parametrize("broken, target", [
    (lambda r: r["server_errors"].update({"http 500": 1}), "no 5xx"),
    (lambda r: r.update(server_exceptions={"cv2.error: (-215:Assertion failed)": 1}), "no 5xx"),
    (lambda r: r.update(server_gone=True, server_exit_code=-9), "zero crashes"),
    (lambda r: r.update(healthz_after="no answer (TimeoutError)"), "zero crashes"),
    (lambda r: r.update(peak_rss_mb=1500.1), "RSS"),
    (lambda r: r["valid"]["windows"].append({"from_s": 10, "to_s": 20, "answered": 0, "p50_ms": None,
                                             "p99_ms": None}), "p99"),
    (lambda r: r["valid"].update(p99_ms=250.0), "p99"),
    (lambda r: r["valid"].update(answered=83), "valid answers"),
    (lambda r: r["valid"]["failed"].update({"reset": 1}), "no error"),
    (lambda r: r.update(held_open=1), "slow and idle sockets"),
    (lambda r: r.update(closed_late=1), "slow and idle sockets"),
])
def test_judge_fails_each_target_on_figures_that_break_it(broken, target):
    assert all(t["ok"] for t in evaluate(_clean_result()))
    result = copy.deepcopy(_clean_result())
    broken(result)
    failed = [t["target"] for t in evaluate(result) if not t["ok"]]
    assert len(failed) == 1 and target in failed[0], failed


def test_short_adversarial_load_meets_the_targets():
    """2 valid + 6 hostile clients for 8 s (every hostile kind at least once): no 5xx but 503 with
    Retry-After, no crash, RSS at most 1.5 GB, valid p99 under 1 s (no valid client starves), at
    least 67 valid answers (2,000 per 60 s and 8 clients, scaled), slow and idle sockets closed by
    the server in time. The 250 ms p99 target is the benchmark's (`python -m ferjax.serve_attack`
    on an idle machine: 156.6 ms); here the other test process shares the two cores."""
    require_files(ONE_FACE, why="the one-face video")
    frames = video_frames(str(ONE_FACE), 24)
    server = ServerProcess(extra_args=SERVER_ARGS)  # JAX cache: conftest's $FERJAX_CACHE_DIR
    try:
        result = run_attack(server.url, frames, server.pid, seconds=SECONDS, valid_clients=VALID,
                            hostile_clients=HOSTILE, socket_deadline=request_timeout(SERVER_ARGS), answer_timeout=8,
                            exit_code=server.proc.poll, server_log=server.log_text)
    finally:
        server.stop()
    targets = evaluate(result, p99_ms=1000)
    report = format_report(result, targets)
    assert all(t["ok"] for t in targets), report
    assert all(sum(c.values()) for c in result["hostile"].values()), report   # every kind was sent
