"""Registered face detectors: `haar`, `ssd_resnet10`, `yunet` (OpenCV) and `mtcnn` (JAX).

Each registered class is a `ferjax.realtime.detect.Detector`: a callable from a BGR frame to a list
of `Detection`s in frame pixels. Model files are looked up with `ferjax.realtime.models`.
"""
from __future__ import annotations

import logging
import os

import cv2
import numpy as np

from ferjax.realtime import models
from ferjax.realtime.detect import Detection, ResizingDetector, cuda_devices
from ferjax.realtime.mtcnn import MTCNNDetector
from ferjax.registry import DETECTORS, Check, at_least, between, greater, one_of

_log = logging.getLogger(__name__)
_logged_cpu: set[str] = set()


def _log_cpu_once(name: str) -> None:
    if name not in _logged_cpu:
        _logged_cpu.add(name)
        _log.warning("%s: OpenCV has no CUDA device (cv2.cuda.getCudaEnabledDeviceCount() == 0); "
                  "running on the CPU", name)


_WIDTH = Check(lambda v: v is None or (isinstance(v, int) and v > 0), "None or an integer > 0")
_SCORE = between(0.0, 1.0)


@DETECTORS.register("haar", checks={"scale_factor": greater(1.0), "min_neighbors": at_least(0),
                                    "min_size": greater(0), "detect_width": _WIDTH})
class HaarDetector(ResizingDetector):
    """Viola-Jones Haar cascade (OpenCV's frontalface_default); CUDA cascade when available."""

    name = "haar"

    def __init__(self, cascade: str | None = None, scale_factor: float = 1.1, min_neighbors: int = 5,
                 min_size: int = 30, detect_width: int | None = 320, use_cuda: bool = True):
        super().__init__(detect_width)
        path = cascade or os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")
        self.scale_factor, self.min_neighbors, self.min_size = scale_factor, min_neighbors, min_size
        self._gpu = None
        if use_cuda and cuda_devices() > 0 and hasattr(cv2, "cuda_CascadeClassifier"):
            self._gpu = cv2.cuda_CascadeClassifier.create(path)
            self._gpu.setScaleFactor(scale_factor)
            self._gpu.setMinNeighbors(min_neighbors)
            self._gpu.setMinObjectSize((min_size, min_size))
            self.backend = "opencv-cuda"
        else:
            _log_cpu_once("haar")
            self._cpu = cv2.CascadeClassifier(path)
            if self._cpu.empty():
                raise FileNotFoundError(f"cannot load Haar cascade {path}")
            self.backend = "opencv-cpu"

    def detect_small(self, frame: np.ndarray) -> list[Detection]:
        grey = cv2.equalizeHist(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
        if self._gpu is not None:
            found = self._gpu.convert(self._gpu.detectMultiScale(cv2.cuda_GpuMat(grey)))
            rects = [] if found is None else found
        else:
            rects = self._cpu.detectMultiScale(grey, self.scale_factor, self.min_neighbors,
                                               minSize=(self.min_size, self.min_size))
        return [Detection((float(x), float(y), float(x + w), float(y + h)), 1.0) for x, y, w, h in rects]


@DETECTORS.register("ssd_resnet10", checks={"threshold": _SCORE, "fmt": one_of("auto", "tensorflow", "caffe")})
class SSDResNet10Detector(ResizingDetector):
    """OpenCV DNN SSD ResNet-10 (TensorFlow .pb/.pbtxt or Caffe files), threshold 0.5."""

    name = "ssd_resnet10"

    def __init__(self, threshold: float = 0.5, input_size: tuple[int, int] = (300, 300),
                 models_dir: str | None = None, fmt: str = "auto", use_cuda: bool = True,
                 fp16: bool = False, aspect_range: tuple[float, float] = (0.4, 2.5)):
        super().__init__(None)  # the blob is resized by the network's own input size
        self.threshold, self.input_size = threshold, tuple(int(v) for v in input_size)
        self.aspect_range = aspect_range  # w/h outside it is not a face (e.g. slivers at the border)
        self.net = self._load(models_dir, fmt)
        if use_cuda and cuda_devices() > 0:
            self.net.setPreferableBackend(cv2.dnn.DNN_BACKEND_CUDA)
            self.net.setPreferableTarget(cv2.dnn.DNN_TARGET_CUDA_FP16 if fp16 else cv2.dnn.DNN_TARGET_CUDA)
            self.backend = f"opencv-cuda-{'fp16' if fp16 else 'fp32'}"
        else:
            _log_cpu_once("ssd_resnet10")
            self.net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
            self.net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
            self.backend = "opencv-cpu"

    @staticmethod
    def _load(models_dir: str | None, fmt: str) -> cv2.dnn.Net:
        tf_files = (models.SSD_TF_PB, models.SSD_TF_PBTXT)
        caffe_files = (models.SSD_CAFFE_MODEL, models.SSD_CAFFE_PROTO)
        order = {"auto": (tf_files, caffe_files), "tensorflow": (tf_files,), "caffe": (caffe_files,)}[fmt]
        for weights, config in order:
            w, c = models.find(weights, models_dir), models.find(config, models_dir)
            if w and c:
                if weights is models.SSD_TF_PB:
                    return cv2.dnn.readNetFromTensorflow(str(w), str(c))
                return cv2.dnn.readNetFromCaffe(str(c), str(w))
        raise FileNotFoundError(models.missing_message([f for pair in order for f in pair], models_dir)
                                + "\n(either the TensorFlow pair or the Caffe pair is enough)")

    def detect_small(self, frame: np.ndarray) -> list[Detection]:
        h, w = frame.shape[:2]
        blob = cv2.dnn.blobFromImage(frame, 1.0, self.input_size, (104.0, 177.0, 123.0), False, False)
        self.net.setInput(blob)
        out = self.net.forward().reshape(-1, 7)
        out = out[out[:, 2] >= self.threshold]
        dets = []
        for _, _, conf, x1, y1, x2, y2 in out:
            x1, x2 = np.clip([x1 * w, x2 * w], 0, w)
            y1, y2 = np.clip([y1 * h, y2 * h], 0, h)
            if x2 - x1 >= 2 and y2 - y1 >= 2 and \
                    self.aspect_range[0] <= (x2 - x1) / (y2 - y1) <= self.aspect_range[1]:
                dets.append(Detection((float(x1), float(y1), float(x2), float(y2)), float(conf)))
        return dets


@DETECTORS.register("yunet", checks={"threshold": _SCORE, "nms_threshold": _SCORE, "detect_width": _WIDTH})
class YuNetDetector(ResizingDetector):
    """YuNet via `cv2.FaceDetectorYN`: boxes, 5 landmarks and a score per face."""

    name = "yunet"

    def __init__(self, threshold: float = 0.6, nms_threshold: float = 0.3, top_k: int = 5000,
                 detect_width: int | None = 320, models_dir: str | None = None, use_cuda: bool = True):
        super().__init__(detect_width)
        path = models.locate(models.YUNET, models_dir)
        backend, target = cv2.dnn.DNN_BACKEND_OPENCV, cv2.dnn.DNN_TARGET_CPU
        if use_cuda and cuda_devices() > 0:
            backend, target = cv2.dnn.DNN_BACKEND_CUDA, cv2.dnn.DNN_TARGET_CUDA
            self.backend = "opencv-cuda"
        else:
            _log_cpu_once("yunet")
            self.backend = "opencv-cpu"
        self.net = cv2.FaceDetectorYN.create(str(path), "", (320, 320), threshold, nms_threshold, top_k,
                                             backend, target)
        self._size: tuple[int, int] | None = None

    def detect_small(self, frame: np.ndarray) -> list[Detection]:
        size = (frame.shape[1], frame.shape[0])
        if size != self._size:
            self.net.setInputSize(size)
            self._size = size
        _, faces = self.net.detect(frame)
        if faces is None:
            return []
        faces = faces[np.isfinite(faces).all(axis=1)]  # seen once in CI: a NaN row on a tiny frame
        return [Detection((float(f[0]), float(f[1]), float(f[0] + f[2]), float(f[1] + f[3])), float(f[14]),
                          f[4:14].reshape(5, 2).astype(np.float64)) for f in faces]


DETECTORS.register("mtcnn", checks={"threshold": _SCORE, "min_face_size": greater(0),
                                    "detect_width": _WIDTH})(MTCNNDetector)  # defined in ferjax.realtime.mtcnn
