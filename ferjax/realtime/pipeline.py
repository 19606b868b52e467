"""The real-time loop: capture -> detect -> preprocess -> predict -> draw (-> write).

Every stage is timed per frame; the summary reports mean milliseconds per stage, end-to-end
frames per second, detection counts, the widths detected at, track identities and every frame
that was skipped, with the reason.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import cv2
import jax
import numpy as np

from ferjax.realtime import align
from ferjax.realtime.capture import FrameSource, SourceError, open_source
from ferjax.realtime.detect import Detection, Detector, ResizingDetector
from ferjax.realtime.faces import Face, draw_faces, make_faces
from ferjax.realtime.tracker import IoUTracker
from ferjax.realtime.width import (AUTO, RESCAN_EVERY, WINDOW_COST, WINDOW_HEADROOM, AdaptiveWidth, WidthStep,
                                   capped_width, fixed_width, summarize, window_size)
from ferjax.realtime.windows import TrackWindows, square_window

_log = logging.getLogger(__name__)
STAGES = ("decode", "detect", "preprocess", "predict", "draw", "write")
@dataclasses.dataclass
class FrameResult:
    index: int
    detections: list[Detection]
    probs: np.ndarray                      # [N, C], smoothed when a tracker is used
    track_ids: list[int] | None = None
    ms: dict[str, float] = dataclasses.field(default_factory=dict)
    widths: WidthStep | None = None        # the widths detected at (None: a detector without detect_at)

    def faces(self, class_names: Sequence[str]) -> list[Face]:
        return make_faces(self.detections, self.probs, class_names, self.track_ids)

    def to_json(self, class_names: Sequence[str]) -> dict:
        out = {"frame": self.index, "faces": [f.to_json() for f in self.faces(class_names)],
               "ms": {k: round(v, 3) for k, v in self.ms.items()}}
        if self.widths is not None:
            out["detect_widths"] = list(self.widths.widths)
            if self.widths.windows:
                out["windows"] = self.widths.windows
        return out


def display_available() -> bool:
    """True when a window can be shown: a display server and an OpenCV build with a GUI."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    gui = [l for l in cv2.getBuildInformation().splitlines() if l.strip().startswith("GUI:")]
    return bool(gui) and "NONE" not in gui[0].upper()


class Pipeline:
    """Detector + Predictor (+ optional IoU/EMA tracker) applied frame by frame.

    One Pipeline is one stream: with a detector whose `detect_width` is "auto" it keeps an
    `AdaptiveWidth` (the working width, rescanning at full width every `rescan_every` frames)
    and, where the detector has `detect_window` and `track_windows` is on, the track windows
    that follow faces too small for the working width (`ferjax.realtime.windows`); `max_side`
    caps the longer side of every copy the detector sees (None: no cap). `run` starts a new
    stream (`reset`).
    """

    def __init__(self, detector: Detector, predictor: Any, *, class_names: Sequence[str],
                 align_faces: bool = True, margin: float = 0.0, tracker: IoUTracker | None = None,
                 max_faces: int = 64, min_face: int = 12, max_side: int | None = None,
                 rescan_every: int = RESCAN_EVERY, track_windows: bool = True):
        self.detector, self.predictor, self.tracker = detector, predictor, tracker
        self.class_names = tuple(class_names)
        self.align_faces, self.margin = align_faces, margin
        self.max_faces, self.min_face = max_faces, min_face
        self.max_side, self.rescan_every, self.track_windows = max_side, rescan_every, track_windows
        self.reset()

    def reset(self) -> None:
        """Starts a new stream: a fresh width policy (when adaptive) and tracker."""
        adaptive = getattr(self.detector, "detect_width", None) == AUTO and hasattr(self.detector, "detect_at")
        reliable = getattr(self.detector, "reliable_face", ResizingDetector.reliable_face)
        windows = None
        if adaptive and self.track_windows and hasattr(self.detector, "detect_window"):
            face = getattr(self.detector, "window_face", WINDOW_HEADROOM * reliable)
            windows = TrackWindows(self._detect_window, window_size(face))
        cost = getattr(self.detector, "window_cost", WINDOW_COST)
        self.widths = (AdaptiveWidth(reliable, self.rescan_every, windows=windows, window_cost=cost)
                       if adaptive else None)
        if self.tracker is not None:
            self.tracker.reset()

    def warmup(self, frame: np.ndarray) -> float:
        """Compiles the predictor's batch buckets and the detector for this frame size; seconds."""
        t = time.perf_counter()
        if hasattr(self.predictor, "warmup"):
            self.predictor.warmup()
        for b in getattr(self.predictor, "buckets", ()):  # numpy inputs, as in the loop (jit fast path)
            self.predictor(np.zeros((b, 48, 48, 1), np.float32))
        warm = getattr(self.detector, "warmup", None)
        warm(frame) if warm else self.detector(frame)
        if self.widths is not None:  # the full-width scans of the stream
            self.detector.detect_at(frame, capped_width(frame.shape, self.max_side))
            if self.widths.windows is not None:  # and its track windows' size
                size = self.widths.windows.size
                h, w = frame.shape[:2]
                self.detector.detect_window(frame, square_window(np.array([w / 2, h / 2] * 2), size, frame.shape),
                                            size, None)
        return time.perf_counter() - t

    def detect(self, frame: np.ndarray, detect_width: int | None = None) -> list[Detection]:
        """Faces of at least `min_face` px, best first, at most `max_faces`. `detect_width`
        overrides the detector's own working width (photos: full resolution up to a limit)."""
        return self.detect_frame(frame, detect_width)[0]

    def detect_frame(self, frame: np.ndarray, detect_width: int | None = None
                     ) -> tuple[list[Detection], WidthStep | None]:
        """`detect` and the widths it ran at: `detect_width`, else the stream's adaptive width
        ("auto") or the detector's own, each at most the full width capped by `max_side`."""
        if not hasattr(self.detector, "detect_at"):
            return self._kept(self.detector(frame)), None
        full = capped_width(frame.shape, self.max_side)
        if detect_width is None and self.widths is not None:
            dets, step = self.widths.detect(frame, self._detect_at, full)
            return self._kept(dets), step
        width = min(detect_width or fixed_width(getattr(self.detector, "detect_width", None)) or full, full)
        return self._detect_at(frame, width), WidthStep((width,))

    def _detect_at(self, frame: np.ndarray, width: int) -> list[Detection]:
        return self._kept(self.detector.detect_at(frame, width))

    def _detect_window(self, frame: np.ndarray, window: tuple[int, int, int, int], size: int,
                       face: float | None) -> list[Detection]:
        return self._kept(self.detector.detect_window(frame, window, size, face))

    def _kept(self, found: Sequence[Detection]) -> list[Detection]:
        dets = [d for d in found if min(d.width, d.height) >= self.min_face]
        return sorted(dets, key=lambda d: -d.score)[: self.max_faces]

    def crops(self, frame: np.ndarray, dets: Sequence[Detection]) -> np.ndarray:
        """[N, 48, 48] uint8 grey crops of the detections (eye-aligned when configured)."""
        grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        return align.crop_faces(grey, dets, 48, self.margin, self.align_faces)

    def classify(self, crops: np.ndarray) -> np.ndarray:
        """[N, C] class probabilities of [N, 48, 48] crops in one batched, jitted call."""
        if not len(crops):
            return np.zeros((0, len(self.class_names)), np.float32)
        return np.asarray(self.predictor(crops))

    def process(self, index: int, frame: np.ndarray, draw: bool = True,
                detect_width: int | None = None) -> tuple[FrameResult, np.ndarray]:
        """Runs one frame through detect/preprocess/predict/draw; returns the result and the overlay."""
        ms: dict[str, float] = {}
        t0 = time.perf_counter()
        dets, widths = self.detect_frame(frame, detect_width)
        t1 = time.perf_counter()
        crops = self.crops(frame, dets)
        t2 = time.perf_counter()
        probs = self.classify(crops)
        t3 = time.perf_counter()
        ids = None
        if self.tracker is not None:
            ids, probs = self.tracker.update(np.array([d.box for d in dets]).reshape(-1, 4), probs)
        result = FrameResult(index, dets, probs, ids, widths=widths)
        out = self.draw(frame, result) if draw else frame
        t4 = time.perf_counter()
        ms.update(detect=(t1 - t0) * 1e3, preprocess=(t2 - t1) * 1e3, predict=(t3 - t2) * 1e3, draw=(t4 - t3) * 1e3)
        result.ms = ms
        return result, out

    def draw(self, frame: np.ndarray, r: FrameResult) -> np.ndarray:
        return draw_faces(frame, r.faces(self.class_names))

    def run(self, source: str | int, *, max_frames: int | None = None, video_out: str | None = None,
            jsonl_out: str | None = None, display: bool | str = "auto", draw: bool = True,
            warmup_frames: int = 0, capture_kwargs: dict | None = None) -> dict:
        """Processes a whole source and returns the summary (never raises on a bad source)."""
        summary: dict[str, Any] = {"source": str(source), "detector": getattr(self.detector, "name", "?"),
                                   "detector_backend": getattr(self.detector, "backend", "?"),
                                   "jax_backend": jax.default_backend(),
                                   "classifier_backend": getattr(self.predictor, "backend",
                                                                 f"jax-{jax.default_backend()}")}
        try:
            src = open_source(source, **(capture_kwargs or {}))
        except SourceError as e:
            _log.error("%s", e)
            return {**summary, "error": str(e), "frames": 0, "bad_frames": 0}
        show = display_available() if display == "auto" else display in (True, "yes", "true", "1")
        self.reset()
        with src:
            summary.update(self._loop(src, max_frames, video_out, jsonl_out, show, draw, warmup_frames))
        summary["detector_backend"] = getattr(self.detector, "backend", "?")  # what ran: CUDA may have fallen back
        summary["detector_backend_reason"] = getattr(self.detector, "backend_reason", "")
        return summary

    def _loop(self, src: FrameSource, max_frames: int | None, video_out: str | None, jsonl_out: str | None,
              show: bool, draw: bool, warmup_frames: int) -> dict:
        times = {s: [] for s in STAGES}
        wall: list[float] = []
        writer, writer_hw, jsonl = None, None, None
        if jsonl_out:
            Path(jsonl_out).parent.mkdir(parents=True, exist_ok=True)
            jsonl = open(jsonl_out, "w")
        n = with_faces = faces = max_seen = errors = 0
        per_frame: list[int] = []
        steps: list[WidthStep] = []
        compile_s = None
        frames = iter(src)
        try:
            while max_frames is None or n < max_frames:
                t0 = time.perf_counter()
                item = next(frames, None)
                t_dec = time.perf_counter()
                if item is None:
                    break
                index, frame = item
                if compile_s is None:
                    compile_s = self.warmup(frame)
                    t0 = t_dec = time.perf_counter()  # the first frame's decode overlaps compile
                try:
                    result, out = self.process(index, frame, draw or bool(video_out) or show)
                except (cv2.error, ValueError) as e:  # a frame the detector cannot handle
                    errors += 1
                    src.stats.bad_frames += 1
                    src.stats.note(f"frame {index}: {type(e).__name__}: {e}".splitlines()[0])
                    continue
                t_w = time.perf_counter()
                if video_out:
                    if writer is None:
                        writer, writer_hw = open_video_writer(video_out, src.fps, out.shape), out.shape[:2]
                    if out.shape[:2] != writer_hw:  # image folders may mix sizes
                        out = cv2.resize(out, writer_hw[::-1])
                    writer.write(out)
                if jsonl is not None:
                    jsonl.write(json.dumps(result.to_json(self.class_names)) + "\n")
                if show:
                    show = _show(out)
                t_end = time.perf_counter()
                result.ms.update(decode=(t_dec - t0) * 1e3, write=(t_end - t_w) * 1e3)
                n += 1
                faces += len(result.detections)
                per_frame.append(len(result.detections))
                if result.widths is not None:
                    steps.append(result.widths)
                with_faces += bool(result.detections)
                max_seen = max(max_seen, len(result.detections))
                if n > warmup_frames:
                    for s in STAGES:
                        times[s].append(result.ms.get(s, 0.0))
                    wall.append((t_end - t0) * 1e3)
        finally:
            if writer is not None:
                writer.release()
            if jsonl is not None:
                jsonl.close()
        total = float(np.sum(wall)) if wall else 0.0
        return {
            "frames": n, "frames_timed": len(wall), "bad_frames": src.stats.bad_frames,
            "missing_at_end": src.stats.missing_at_end, "reconnects": src.stats.reconnects,
            "frame_errors": errors, "errors": src.stats.errors,
            "frames_with_faces": with_faces, "detection_rate": round(with_faces / n, 4) if n else 0.0,
            "faces": faces, "max_faces_in_frame": max_seen,
            "median_faces_in_frame": float(np.median(per_frame)) if per_frame else 0.0,
            "track_ids": self.tracker.created if self.tracker is not None else None,
            "detect_width": getattr(self.detector, "detect_width", None), **summarize(steps),
            "stage_ms": {s: round(float(np.mean(v)), 3) if v else 0.0 for s, v in times.items()},
            "frame_ms_p50": round(float(np.median(wall)), 3) if wall else 0.0,
            "fps": round(len(wall) / total * 1e3, 2) if total else 0.0,
            "compile_s": round(compile_s or 0.0, 3),
            "video_out": video_out if writer is not None else None, "jsonl_out": jsonl_out,
        }


def open_video_writer(path: str, fps: float, shape: tuple[int, ...]) -> cv2.VideoWriter:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if path.lower().endswith(".avi") else "mp4v"))
    writer = cv2.VideoWriter(path, fourcc, fps, (shape[1], shape[0]))
    if not writer.isOpened():
        raise OSError(f"cannot write video {path} (use .mp4 with mp4v or .avi with MJPG)")
    return writer


def _show(frame: np.ndarray) -> bool:
    """Shows a frame; False when the window cannot be used (or the user pressed q/Esc)."""
    try:
        cv2.imshow("ferjax realtime", frame)
        return (cv2.waitKey(1) & 0xFF) not in (ord("q"), 27)
    except cv2.error as e:
        _log.warning("live window disabled: %s", str(e).splitlines()[0])
        return False
