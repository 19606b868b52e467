"""Registered face detectors: `haar`, `ssd_resnet10`, `yunet` (OpenCV) and `mtcnn` (JAX).

Each registered class is a `ferjax.realtime.detect.Detector`: a callable from a BGR frame to a list
of `Detection`s in frame pixels. Model files are looked up with `ferjax.realtime.models`. The OpenCV
detectors take their CUDA path only when `ferjax.realtime.cuda` says it can run, and fall back to the
CPU (one log line, `backend == "opencv-cpu"`) when it cannot or when it fails on a frame.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import cv2
import numpy as np

from ferjax.realtime import cuda, models
from ferjax.realtime.detect import Detection, ResizingDetector
from ferjax.realtime.mtcnn import MTCNNDetector
from ferjax.realtime.width import AUTO, parse_detect_width
from ferjax.registry import DETECTORS, Check, at_least, between, greater, one_of

HAAR_FILE = "haarcascade_frontalface_default.xml"
HAAR_CUDA = models.HAAR_CUDA  # the old-format cascade cv2.cuda.CascadeClassifier reads
# OpenCV's own install places for cascades: a CMake-built cv2 has no cv2.data.
OPENCV_SHARE_PREFIXES = tuple(dict.fromkeys((sys.prefix, "/usr/local", "/usr")))


def haar_cascade_path(models_dir: str | None = None, name: str = HAAR_FILE) -> Path:
    """OpenCV's cascade `name`: from `cv2.data` (pip wheels), OpenCV's `share/opencv4/haarcascades`
    (CMake installs under sys.prefix, /usr/local or /usr), or the model directories."""
    data = getattr(cv2, "data", None)
    dirs = [Path(data.haarcascades)] if data is not None else []
    dirs += [Path(p) / "share" / "opencv4" / "haarcascades" for p in OPENCV_SHARE_PREFIXES]
    dirs += models.search_dirs(models_dir)
    for d in dirs:
        for p in (d / name, d / "detectors" / name):
            if p.is_file():
                return p
    raise FileNotFoundError(
        f"Haar cascade {name} not found in: {', '.join(map(str, dirs))}. pip's opencv-python(-headless) 4.x "
        f"ships it in cv2.data.haarcascades; a CMake-built OpenCV installs it under share/opencv4/haarcascades; "
        f"or pass cascade=PATH")


def _is_width(value) -> bool:
    try:
        parse_detect_width(value)
    except ValueError:
        return False
    return True


_WIDTH = Check(_is_width, "'auto' (adapts per video stream), an integer > 0 (pixels) or None (full size)")
_SCORE = between(0.0, 1.0)
_BOOL = Check(lambda v: isinstance(v, (bool, np.bool_)), "True or False")


@DETECTORS.register("haar", checks={"scale_factor": greater(1.0), "min_neighbors": at_least(0),
                                    "min_size": greater(0), "detect_width": _WIDTH, "equalize": _BOOL})
class HaarDetector(cuda.FallsBackToCpu, ResizingDetector):
    """Viola-Jones Haar cascade (OpenCV's frontalface_default); CUDA cascade when available.

    The CUDA cascade (`cv2.cuda.CascadeClassifier`, contrib modules cudaobjdetect + cudalegacy)
    reads only the old Haar format: it needs `haarcascades_cuda/haarcascade_frontalface_default.xml`
    in a model directory (or `cuda_cascade=PATH`). Without it, or on any CUDA problem, the CPU
    cascade runs.
    """

    name = "haar"
    # Faces are found as reliably as larger ones from about 1.8 x `min_size` (the cascade's own
    # box, ~1.33x YuNet's): tools/measure_face_sizes.py (real frames scaled down; fer's settings:
    # minSize 50, scaleFactor 1.1, minNeighbors 5, no equalisation) finds 51% of faces of 32 YuNet
    # px (43 own px), 79% at 40 (53 own), 85-87% at 48-64 (64-85 own), 94% at 96 (128 own);
    # frontal-only: turned faces are never found. (minSize 30, 1.2, equalised: 64% at 32 YuNet
    # px, 79% at 40, 75-77% at 48-64.)
    RELIABLE_OVER_MIN_SIZE = 1.8

    WINDOW_SCALES = (0.8, 1.25)  # a track window scans faces from 0.8x to 1.25x the tracked face's side
    WINDOW_OVER_MIN_SIZE = 1.25  # and scales the face down to 1.25 x `min_size` (192 px windows at 50)
    # A window scanning those scales costs 0.7 x its pixels of a full pass: on frames of
    # many_faces_1080p.mp4 a full pass (1.1 / 50 px) took as long as 81 windows of 192 px.
    window_cost = 0.7

    def __init__(self, cascade: str | None = None, scale_factor: float = 1.1, min_neighbors: int = 5,
                 min_size: int = 50, detect_width: int | str | None = AUTO, use_cuda: bool = True,
                 cuda_cascade: str | None = None, models_dir: str | None = None,
                 cuda_probe: cuda.CudaProbe | None = None, equalize: bool = False):
        super().__init__(detect_width)
        if not hasattr(cv2, "CascadeClassifier"):  # OpenCV 5 moved it out of the main modules
            raise ImportError(f"this OpenCV ({cv2.__version__}) has no cv2.CascadeClassifier: OpenCV 5 "
                              f"moved the Haar cascades out of its main modules; install "
                              f"opencv-python-headless<5 (ferjax's requirement) or use another detector")
        path = cascade or haar_cascade_path(models_dir)
        self.scale_factor, self.min_neighbors, self.min_size = scale_factor, min_neighbors, min_size
        self.equalize = bool(equalize)
        self._cpu = cv2.CascadeClassifier(str(path))
        if self._cpu.empty():
            raise FileNotFoundError(f"cannot load Haar cascade {path}")
        self._gpu, self._gpu_path = None, None
        problem = self._start_cuda(use_cuda, cuda_cascade, models_dir, cuda_probe or cuda.CudaProbe())
        self.backend = cuda.CPU if problem else cuda.CUDA
        self.backend_reason = problem or f"cv2.cuda.CascadeClassifier with {self._gpu_path}"
        cuda.log_choice(self.name, self.backend, self.backend_reason,
                        logging.WARNING if problem and use_cuda else logging.INFO)

    @property
    def reliable_face(self) -> float:
        return self.RELIABLE_OVER_MIN_SIZE * self.min_size

    @property
    def window_face(self) -> float:
        """The face side track windows scale faces down to, `WINDOW_OVER_MIN_SIZE` x `min_size`:
        a window scans only the scales near its face's, where the face costs most of the time,
        and finds as many faces at this size as in windows of `reliable_face` (many_faces_1080p.mp4:
        89% of the faces the full pass found on the frame before, against 86-87%, in 60-85% of
        the time; the one-face videos: 100% either way)."""
        return self.WINDOW_OVER_MIN_SIZE * self.min_size

    def _start_cuda(self, use_cuda: bool, cuda_cascade: str | None, models_dir: str | None,
                    probe: cuda.CudaProbe) -> str | None:
        """Creates the CUDA cascade; returns None, or why the CPU cascade runs instead."""
        if not use_cuda:
            return "use_cuda=False"
        problem = cuda.device_problem(probe)
        if problem:
            return problem
        create = probe.cascade_factory()
        if create is None:
            return ("this OpenCV has no cv2.cuda.CascadeClassifier (needs opencv_contrib's cudaobjdetect and "
                    "cudalegacy: see BUILD.md)")
        self._gpu_path = cuda_cascade or models.find(HAAR_CUDA, models_dir)
        if self._gpu_path is None:
            return (f"the CUDA cascade needs the old-format {HAAR_CUDA.name}, not found in "
                    f"{', '.join(map(str, models.search_dirs(models_dir)))}; download {HAAR_CUDA.url}")
        problem = cuda.cascade_problem(self._gpu_path)
        if problem:
            return problem
        try:
            gpu = create(str(self._gpu_path))
            gpu.setScaleFactor(self.scale_factor)
            gpu.setMinNeighbors(self.min_neighbors)
            gpu.setMinObjectSize((self.min_size, self.min_size))
        except cv2.error as e:
            return f"cv2.cuda.CascadeClassifier.create({self._gpu_path}) failed: {cuda.first_line(e)}"
        self._gpu = gpu
        return None

    def _use_cpu(self) -> None:
        self._gpu = None

    def _grey(self, frame: np.ndarray) -> np.ndarray:
        grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        return cv2.equalizeHist(grey) if self.equalize else grey

    @staticmethod
    def _boxes(rects) -> list[Detection]:
        return [Detection((float(x), float(y), float(x + w), float(y + h)), 1.0) for x, y, w, h in rects]

    def _detect(self, frame: np.ndarray) -> list[Detection]:
        grey = self._grey(frame)
        if self._gpu is not None:
            image = cv2.cuda_GpuMat()
            image.upload(grey)
            return self._boxes(cuda.gpu_rects(self._gpu.detectMultiScale(image)))
        return self._boxes(self._cpu.detectMultiScale(grey, self.scale_factor, self.min_neighbors,
                                                      minSize=(self.min_size, self.min_size)))

    def detect_window_small(self, image: np.ndarray, face: float | None) -> list[Detection]:
        """On the CPU with a face side expected: only the scales from `WINDOW_SCALES[0]` to
        `WINDOW_SCALES[1]` times it (never under `min_size`), a few of the cascade's passes."""
        if face is None or self._gpu is not None:
            return self.detect_small(image)
        lo = max(self.min_size, int(self.WINDOW_SCALES[0] * face))
        hi = max(lo + 1, int(np.ceil(self.WINDOW_SCALES[1] * face)))
        return self._boxes(self._cpu.detectMultiScale(self._grey(image), self.scale_factor, self.min_neighbors,
                                                      minSize=(lo, lo), maxSize=(hi, hi)))


@DETECTORS.register("ssd_resnet10", checks={"threshold": _SCORE, "fmt": one_of("auto", "tensorflow", "caffe")})
class SSDResNet10Detector(cuda.FallsBackToCpu, ResizingDetector):
    """OpenCV DNN SSD ResNet-10 (TensorFlow .pb/.pbtxt or Caffe files), threshold 0.5."""

    name = "ssd_resnet10"

    def __init__(self, threshold: float = 0.5, input_size: tuple[int, int] = (300, 300),
                 models_dir: str | None = None, fmt: str = "auto", use_cuda: bool = True,
                 fp16: bool = False, aspect_range: tuple[float, float] = (0.4, 2.5),
                 cuda_probe: cuda.CudaProbe | None = None):
        super().__init__(None)  # the blob is resized by the network's own input size
        self.threshold, self.input_size = threshold, tuple(int(v) for v in input_size)
        self.aspect_range = aspect_range  # w/h outside it is not a face (e.g. slivers at the border)
        self.net = self._load(models_dir, fmt)
        choice = cuda.choose_dnn(self.name, use_cuda, fp16, cuda_probe)
        self.net.setPreferableBackend(choice.backend)
        self.net.setPreferableTarget(choice.target)
        self.backend, self.backend_reason = choice.label, choice.reason

    def _use_cpu(self) -> None:
        self.net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        self.net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)

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

    def _detect(self, frame: np.ndarray) -> list[Detection]:
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
class YuNetDetector(cuda.FallsBackToCpu, ResizingDetector):
    """YuNet via `cv2.FaceDetectorYN`: boxes, 5 landmarks and a score per face."""

    name = "yunet"
    # tools/measure_face_sizes.py (real frames scaled down; threshold 0.6): faces of 12 px are
    # found in 79% of cases, 16 px 94%, 18-20 px 96%, from 24 px 100%.
    reliable_face = 20.0
    NETS = 3

    def __init__(self, threshold: float = 0.6, nms_threshold: float = 0.3, top_k: int = 5000,
                 detect_width: int | str | None = AUTO, models_dir: str | None = None, use_cuda: bool = True,
                 fp16: bool = False, cuda_probe: cuda.CudaProbe | None = None):
        super().__init__(detect_width)
        self._args = (str(models.locate(models.YUNET, models_dir)), "", (320, 320), threshold, nms_threshold, top_k)
        choice = cuda.choose_dnn(self.name, use_cuda, fp16, cuda_probe)
        self._target = (choice.backend, choice.target)
        self.net = cv2.FaceDetectorYN.create(*self._args, *self._target)
        self.backend, self.backend_reason = choice.label, choice.reason
        # One network per input size, the most recent NETS sizes: a video stream alternates between
        # its working width, full-width scans and track windows, and setInputSize reallocates
        # (~4 ms a switch between 320x180 and 96x96 on the 2-core VM).
        self._nets: dict[tuple[int, int], cv2.FaceDetectorYN] = {}

    def _use_cpu(self) -> None:
        self._target = (cv2.dnn.DNN_BACKEND_OPENCV, cv2.dnn.DNN_TARGET_CPU)
        self.net = cv2.FaceDetectorYN.create(*self._args, *self._target)
        self._nets = {}

    def _net(self, size: tuple[int, int]) -> cv2.FaceDetectorYN:
        net = self._nets.pop(size, None)
        if net is None:
            if not self._nets:
                net = self.net
            elif len(self._nets) < self.NETS:
                net = cv2.FaceDetectorYN.create(*self._args, *self._target)
            else:  # reuse the least recently used one
                net = self._nets.pop(next(iter(self._nets)))
            net.setInputSize(size)
        self._nets[size] = net  # most recent last
        return net

    def _detect(self, frame: np.ndarray) -> list[Detection]:
        _, faces = self._net((frame.shape[1], frame.shape[0])).detect(frame)
        if faces is None:
            return []
        faces = faces[np.isfinite(faces).all(axis=1)]  # seen once in CI: a NaN row on a tiny frame
        return [Detection((float(f[0]), float(f[1]), float(f[0] + f[2]), float(f[1] + f[3])), float(f[14]),
                          f[4:14].reshape(5, 2).astype(np.float64)) for f in faces]


DETECTORS.register("mtcnn", checks={"threshold": _SCORE, "min_face_size": greater(0),
                                    "detect_width": _WIDTH})(MTCNNDetector)  # defined in ferjax.realtime.mtcnn
