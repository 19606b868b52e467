"""Frame sources: webcam index, video file, RTSP/HTTP(S) stream or image folder.

Reading is defensive: unreadable or malformed frames are skipped and counted, a dropped
stream is reopened a few times, and sources that cannot be opened raise `SourceError` with a
message that says what was tried.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from ferjax.images import as_bgr

_log = logging.getLogger(__name__)
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
URL_PREFIXES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")


class SourceError(RuntimeError):
    """The source cannot be opened (missing camera, unreadable file, unreachable stream)."""


@dataclasses.dataclass
class CaptureStats:
    frames: int = 0          # good frames delivered
    bad_frames: int = 0      # unreadable / malformed frames skipped inside the stream
    missing_at_end: int = 0  # frames the container announced but that could not be decoded
    reconnects: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)

    def note(self, msg: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(msg)


def kind_of(source: str | int) -> str:
    """'camera', 'stream', 'folder' or 'file'."""
    if isinstance(source, int) or (isinstance(source, str) and source.strip().isdigit()):
        return "camera"
    s = str(source)
    if s.lower().startswith(URL_PREFIXES):
        return "stream"
    return "folder" if Path(s).is_dir() else "file"


class FrameSource:
    """Iterates over good BGR frames as (index, frame); `stats` counts what was skipped."""

    def __init__(self, source: str | int, *, reconnects: int = 3, reconnect_delay: float = 1.0,
                 max_consecutive_failures: int = 50, timeout_ms: int = 5000):
        self.source, self.kind = source, kind_of(source)
        self.reconnects, self.reconnect_delay = reconnects, reconnect_delay
        self.max_failures, self.timeout_ms = max_consecutive_failures, timeout_ms
        self.stats = CaptureStats()
        self.fps = 25.0
        self.frame_count = 0
        self._files: list[Path] = []
        self._cap: cv2.VideoCapture | None = None
        self._open()

    # ---------------------------------------------------------------- opening
    def _open(self) -> None:
        if self.kind == "folder":
            self._files = sorted(p for p in Path(self.source).iterdir() if p.suffix.lower() in IMAGE_EXTS)
            if not self._files:
                raise SourceError(f"image folder {self.source} has no images ({', '.join(IMAGE_EXTS)})")
            self.frame_count = len(self._files)
            return
        if self.kind == "file" and not Path(self.source).is_file():
            raise SourceError(f"video file {self.source} does not exist")
        self._cap = self._capture()
        if not self._cap.isOpened():
            what = {"camera": "camera {} (is one connected, and free?)",
                    "stream": "stream {} (unreachable or not a video stream)",
                    "file": "video file {} (not a video OpenCV/FFmpeg can decode)"}[self.kind].format(self.source)
            raise SourceError(f"cannot open {what}")
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and 1 <= fps <= 240 else 25.0
        self.frame_count = max(int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0)

    def _capture(self) -> cv2.VideoCapture:
        if self.kind == "camera":
            return cv2.VideoCapture(int(self.source))
        if self.kind == "stream":
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self.timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.timeout_ms]
            return cv2.VideoCapture(str(self.source), cv2.CAP_FFMPEG, params)
        return cv2.VideoCapture(str(self.source))

    def _reopen(self) -> bool:
        for attempt in range(1, self.reconnects + 1):
            self.stats.reconnects += 1
            _log.warning("%s %s dropped; reconnecting (%d/%d)", self.kind, self.source, attempt, self.reconnects)
            if self._cap is not None:
                self._cap.release()
            time.sleep(self.reconnect_delay * attempt)
            self._cap = self._capture()
            if self._cap.isOpened():
                return True
        self.stats.note(f"{self.kind} lost after {self.reconnects} reconnect attempts")
        return False

    # ---------------------------------------------------------------- reading
    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        return self._folder() if self.kind == "folder" else self._video()

    def _folder(self) -> Iterator[tuple[int, np.ndarray]]:
        for i, path in enumerate(self._files):
            frame = as_bgr(cv2.imread(str(path), cv2.IMREAD_UNCHANGED))
            if frame is None:
                self.stats.bad_frames += 1
                self.stats.note(f"unreadable image {path.name}")
                continue
            self.stats.frames += 1
            yield i, frame

    def _video(self) -> Iterator[tuple[int, np.ndarray]]:
        index, pending = 0, 0  # pending: failures not yet known to be mid-stream
        while True:
            try:
                ok, raw = self._cap.read()
            except cv2.error as e:
                ok, raw = False, None
                self.stats.note(f"frame {index}: {e}".splitlines()[0])
            frame = as_bgr(raw) if ok else None
            if frame is not None:
                self.stats.bad_frames += pending
                pending = 0
                self.stats.frames += 1
                yield index, frame
                index += 1
                continue
            if ok:  # decoded but malformed
                self.stats.bad_frames += 1
                index += 1
                continue
            pending += 1
            index += 1
            if self.kind == "file":
                pos = self._cap.get(cv2.CAP_PROP_POS_FRAMES)
                if self.frame_count and pos < self.frame_count - 1 and pending < self.max_failures:
                    continue  # mid-file decoding error: try the next frame
                break
            if pending < min(self.max_failures, 5):
                continue
            if self.kind == "stream" and self._reopen():
                self.stats.bad_frames += pending
                pending = 0
                continue
            break
        if self.kind == "file" and self.frame_count:
            self.stats.missing_at_end = max(0, self.frame_count - self.stats.frames - self.stats.bad_frames)
        elif pending and self.kind == "camera":
            self.stats.note(f"camera stopped delivering frames after {self.stats.frames}")

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_source(source: str | int | os.PathLike, **kwargs) -> FrameSource:
    """Opens a webcam index ("0"), a video file, an RTSP/HTTP URL or an image folder."""
    return FrameSource(source if isinstance(source, int) else str(source), **kwargs)
