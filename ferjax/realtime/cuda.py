"""Whether an OpenCV detector runs on CUDA, decided from what the installed OpenCV reports.

Every CUDA path either starts or falls back to the CPU with one log line that says why, and the
detector's `backend` label names what actually runs (`opencv-cuda-fp32`, `opencv-cuda-fp16`,
`opencv-cuda` or `opencv-cpu`) and its `backend_reason` says why. The facts come from a
`CudaProbe`, one OpenCV call per method; tests hand the detectors a probe that answers like a machine with a too-old driver, a build
without the DNN CUDA backend, etc., while the real CPU detectors run.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

_log = logging.getLogger(__name__)

CPU = "opencv-cpu"
CUDA = "opencv-cuda"
DNN_CUDA_TARGETS = {cv2.dnn.DNN_TARGET_CUDA: "opencv-cuda-fp32", cv2.dnn.DNN_TARGET_CUDA_FP16: "opencv-cuda-fp16"}


class CudaProbe:
    """What the installed OpenCV says about CUDA; each method is one OpenCV call."""

    def device_count(self) -> int:
        """`cv2.cuda.getCudaEnabledDeviceCount()`: 0 without CUDA or device, -1 when the driver is
        missing or older than the CUDA runtime OpenCV was built with."""
        return int(cv2.cuda.getCudaEnabledDeviceCount())

    def built_with_cuda(self) -> bool:
        """True when `cv2.getBuildInformation()` says `NVIDIA CUDA: YES`."""
        return any(l.strip().startswith("NVIDIA CUDA:") and "YES" in l
                   for l in cv2.getBuildInformation().splitlines())

    def dnn_cuda_targets(self) -> tuple[int, ...]:
        """`cv2.dnn.getAvailableTargets(cv2.dnn.DNN_BACKEND_CUDA)`: empty when the DNN module has no
        CUDA backend or no compatible device; FP16 only where the device supports it."""
        return tuple(int(t) for t in cv2.dnn.getAvailableTargets(cv2.dnn.DNN_BACKEND_CUDA))

    def cascade_factory(self) -> Callable[[str], Any] | None:
        """`cv2.cuda.CascadeClassifier.create` (contrib module cudaobjdetect), or None without it."""
        cls = getattr(cv2, "cuda_CascadeClassifier", None)
        return getattr(cls, "create", None) or getattr(getattr(cv2, "cuda", None), "CascadeClassifier_create", None)


def device_problem(probe: CudaProbe) -> str | None:
    """None when OpenCV can use a CUDA device, otherwise why it cannot."""
    try:
        n = probe.device_count()
    except (AttributeError, cv2.error) as e:
        return f"cv2.cuda.getCudaEnabledDeviceCount() failed: {first_line(e)}"
    if n > 0:
        return None
    if n < 0:
        return (f"cv2.cuda.getCudaEnabledDeviceCount() == {n}: the NVIDIA driver is missing or older than "
                "the CUDA runtime this OpenCV was built with (update the driver)")
    if not probe.built_with_cuda():
        return ("this OpenCV has no CUDA (cv2.cuda.getCudaEnabledDeviceCount() == 0; PyPI's wheels never "
                "have it: see BUILD.md)")
    return "cv2.cuda.getCudaEnabledDeviceCount() == 0: OpenCV was built with CUDA but sees no GPU"


@dataclasses.dataclass(frozen=True)
class DnnChoice:
    """The OpenCV DNN backend/target pair a detector uses, its label, and why (for the log)."""

    backend: int
    target: int
    label: str
    reason: str

    @property
    def cuda(self) -> bool:
        return self.label != CPU


def choose_dnn(name: str, use_cuda: bool, fp16: bool, probe: CudaProbe | None = None) -> DnnChoice:
    """The DNN backend for detector `name`: CUDA only when a device is counted *and*
    `getAvailableTargets(DNN_BACKEND_CUDA)` lists the target; FP16 falls back to FP32 when only
    FP32 is listed. Logs one line with the choice and its reason."""
    probe = probe or CudaProbe()
    cpu = (cv2.dnn.DNN_BACKEND_OPENCV, cv2.dnn.DNN_TARGET_CPU, CPU)
    if not use_cuda:
        return _logged(name, DnnChoice(*cpu, "use_cuda=False"), logging.INFO)
    problem = device_problem(probe)
    if problem:
        return _logged(name, DnnChoice(*cpu, problem), logging.WARNING)
    try:
        targets = probe.dnn_cuda_targets()
    except cv2.error as e:
        return _logged(name, DnnChoice(*cpu, f"cv2.dnn.getAvailableTargets failed: {first_line(e)}"),
                       logging.WARNING)
    want = cv2.dnn.DNN_TARGET_CUDA_FP16 if fp16 else cv2.dnn.DNN_TARGET_CUDA
    if want in targets:
        return _logged(name, DnnChoice(cv2.dnn.DNN_BACKEND_CUDA, want, DNN_CUDA_TARGETS[want],
                                       f"DNN CUDA targets {target_names(targets)}"), logging.INFO)
    if fp16 and cv2.dnn.DNN_TARGET_CUDA in targets:
        return _logged(name, DnnChoice(cv2.dnn.DNN_BACKEND_CUDA, cv2.dnn.DNN_TARGET_CUDA, DNN_CUDA_TARGETS[
            cv2.dnn.DNN_TARGET_CUDA], "fp16 asked for, but this GPU has no DNN_TARGET_CUDA_FP16; using FP32"),
            logging.WARNING)
    return _logged(name, DnnChoice(*cpu, (
        "cv2.dnn.getAvailableTargets(cv2.dnn.DNN_BACKEND_CUDA) is empty: this OpenCV's DNN module was built "
        "without the CUDA backend (-DOPENCV_DNN_CUDA=ON with cuDNN) or does not support this GPU")),
        logging.WARNING)


def _logged(name: str, choice: DnnChoice, level: int) -> DnnChoice:
    log_choice(name, choice.label, choice.reason, level)
    return choice


def log_choice(name: str, label: str, reason: str, level: int = logging.WARNING) -> None:
    """The one line a detector logs about its backend."""
    where = "running on the CPU" if label == CPU else f"running on CUDA ({label})"
    _log.log(level, "%s: %s: %s", name, where, reason)


def target_names(targets: tuple[int, ...]) -> list[str]:
    names = {cv2.dnn.DNN_TARGET_CUDA: "CUDA", cv2.dnn.DNN_TARGET_CUDA_FP16: "CUDA_FP16"}
    return [names.get(t, str(t)) for t in targets]


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    lines = [l for l in text.splitlines() if l.strip()]
    # OpenCV's messages start with "OpenCV(4.x) path:line: error: (-216:...) ..." on one line.
    return lines[0] if lines else type(e).__name__


def cascade_problem(path: str | Path) -> str | None:
    """None when `path` is a cascade `cv2.cuda.CascadeClassifier` reads (the old Haar format of
    OpenCV's `data/haarcascades_cuda/`, or an LBP cascade), otherwise why not."""
    if not Path(path).is_file():
        return f"cascade {path} does not exist"
    try:
        fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
    except cv2.error as e:
        return f"cannot parse cascade {path}: {first_line(e)}"
    try:
        root = fs.getFirstTopLevelNode()
        if not root.isMap():
            return f"{path} is not a cascade (its first element is not a map)"
        if root.getNode("featureType").string() == "LBP":
            return None
        size, stages = root.getNode("size"), root.getNode("stages")
        if size.isSeq() and size.size() == 2 and stages.isSeq() and stages.size() > 0 \
                and stages.at(0).isMap() and not stages.at(0).getNode("trees").empty():
            return None
        if not root.getNode("stageType").empty():
            return (f"{path} is in the new cascade format; cv2.cuda.CascadeClassifier reads only the old Haar "
                    f"format (OpenCV's data/haarcascades_cuda/)")
        return f"{path} is not a Haar cascade in the old format (no size/stages/trees)"
    except cv2.error as e:
        return f"cannot read cascade {path}: {first_line(e)}"
    finally:
        fs.release()


def gpu_rects(found: Any) -> np.ndarray:
    """Rectangles [N, 4] (x, y, w, h) from `cv2.cuda.CascadeClassifier.detectMultiScale`'s result:
    a 1 x N GpuMat of CV_32SC4 (downloaded here), an already downloaded array, or empty/None."""
    if found is None:
        return np.zeros((0, 4), np.int32)
    if hasattr(found, "download"):
        if found.empty():
            return np.zeros((0, 4), np.int32)
        found = found.download()
    return np.asarray(found, np.int32).reshape(-1, 4)


class FallsBackToCpu:
    """Mixin for detectors with a CUDA path: `detect_small` runs `_detect`; a `cv2.error` while on
    CUDA (first frame or later) moves the detector to the CPU for good, logs one line, sets
    `backend` to `opencv-cpu` and `backend_reason`, and reruns the frame on the CPU."""

    name: str
    backend: str = CPU
    backend_reason: str = ""

    def _detect(self, frame: np.ndarray) -> list:
        raise NotImplementedError

    def _use_cpu(self) -> None:
        raise NotImplementedError

    def detect_small(self, frame: np.ndarray) -> list:
        if self.backend != CPU:
            try:
                return self._detect(frame)
            except cv2.error as e:
                self.backend_reason = f"CUDA error while detecting: {first_line(e)}"
                log_choice(self.name, CPU, self.backend_reason)
                self._use_cpu()
                self.backend = CPU
        return self._detect(frame)
