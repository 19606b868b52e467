"""The OpenCV CUDA paths' selection and fallback, on a machine without CUDA.

Each failure mode a GPU user can hit (no CUDA in the build, device count -1, no DNN CUDA target,
a Haar cascade in the format the CUDA cascade cannot read, a CUDA error at the first frame) must
end on the CPU with one log line saying why and the label `opencv-cpu`. What OpenCV reports is
injected through a `CudaProbe` (the only thing simulated); the real CPU detectors then run on
real video frames. None of this runs a GPU: the CUDA paths themselves are unverified here.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from ferjax.components import detectors
from ferjax.realtime import cuda, models
from ferjax.registry import DETECTORS

SHARED = Path(os.environ.get("FERJAX_SHARED", Path(__file__).resolve().parents[2] / "shared"))
MODELS = SHARED / "models"
FACE_VIDEO = SHARED / "media" / "one_face_pexels_640x360.mp4"
CARTOON = SHARED / "media" / "no_face_cartoon.mp4"
OPENCV = ("haar", "ssd_resnet10", "yunet")
DNN = ("ssd_resnet10", "yunet")
CUDA_T, FP16_T = cv2.dnn.DNN_TARGET_CUDA, cv2.dnn.DNN_TARGET_CUDA_FP16

# One stage, one stump, in the old Haar format of OpenCV's data/haarcascades_cuda/ (the values are
# the first tree of haarcascade_frontalface_default). The CPU cascade reads it too.
OLD_FORMAT_CASCADE = """<?xml version="1.0"?>
<opencv_storage>
<tiny type_id="opencv-haar-classifier">
  <size>24 24</size>
  <stages>
    <_>
      <trees>
        <_>
          <_>
            <feature>
              <rects>
                <_>6 4 12 9 -1.</_>
                <_>6 7 12 3 3.</_></rects>
              <tilted>0</tilted></feature>
            <threshold>-0.0315</threshold>
            <left_val>2.0875</left_val>
            <right_val>-2.2172</right_val></_></_></trees>
      <stage_threshold>-5.04</stage_threshold>
      <parent>-1</parent>
      <next>-1</next></_></stages></tiny>
</opencv_storage>
"""


class Probe(cuda.CudaProbe):
    """Answers as a given machine would; an exception instance is raised instead of returned."""

    def __init__(self, count=1, built=True, targets=(CUDA_T, FP16_T), cascade=None):
        self.count, self.built, self.targets, self.cascade = count, built, tuple(targets), cascade

    def device_count(self) -> int:
        if isinstance(self.count, Exception):
            raise self.count
        return self.count

    def built_with_cuda(self) -> bool:
        return self.built

    def dnn_cuda_targets(self) -> tuple[int, ...]:
        return self.targets

    def cascade_factory(self):
        return self.cascade


class DeviceCascade:
    """Stands in for `cv2.cuda.CascadeClassifier` (absent from this build) so that Haar reaches its
    first frame on the CUDA path; there the real `cv2.cuda_GpuMat.upload` fails on a build
    without CUDA, and `detectMultiScale` fails like a CUDA error where upload works."""

    created: list[str] = []

    def __init__(self, path: str):
        DeviceCascade.created.append(path)

    def setScaleFactor(self, v): pass

    def setMinNeighbors(self, v): pass

    def setMinObjectSize(self, v): pass

    def detectMultiScale(self, image):
        raise cv2.error("simulated CUDA error: (-217:Gpu API call) out of memory")


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    if not FACE_VIDEO.is_file():
        pytest.skip(f"real video {FACE_VIDEO} not present")
    ok, img = cv2.VideoCapture(str(FACE_VIDEO)).read()
    assert ok, FACE_VIDEO
    return img


@pytest.fixture
def old_cascade(tmp_path) -> Path:
    path = tmp_path / "old_format.xml"
    path.write_text(OLD_FORMAT_CASCADE)
    return path


NEEDS = {"ssd_resnet10": (models.SSD_TF_PB, models.SSD_TF_PBTXT), "yunet": (models.YUNET,)}


def _make(name: str, **kwargs):
    if name in DNN:
        kwargs.setdefault("models_dir", str(MODELS))
        missing = [f.name for f in NEEDS[name] if models.find(f, kwargs["models_dir"]) is None]
        if missing:
            pytest.skip(f"{name}: model files {missing} not found under {kwargs['models_dir']}")
    return DETECTORS.create(name, **kwargs)


def _lines(caplog, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == cuda.__name__ and r.getMessage().startswith(f"{name}:")]


def _one_face_on_cpu(det, frame, caplog, name: str, *needles: str) -> None:
    """The detector runs on the CPU, says so in exactly one log line containing `needles`, and
    finds the one face of the real frame."""
    assert det.backend == cuda.CPU
    lines = _lines(caplog, name)
    assert len(lines) == 1, [r.getMessage() for r in lines]
    msg = lines[0].getMessage()
    assert "running on the CPU" in msg and all(n in msg for n in needles), msg
    assert all(n in det.backend_reason for n in needles)
    faces = det(frame)
    assert len(faces) == 1 and 150 < faces[0].box[0] < 450, faces


@pytest.mark.parametrize("name", OPENCV)
def test_this_opencv_has_no_cuda_so_each_detector_runs_on_the_cpu(name, frame, caplog):
    """The real probe on this machine (PyPI OpenCV: no CUDA, device count 0)."""
    assert cuda.CudaProbe().device_count() == 0 and cuda.CudaProbe().dnn_cuda_targets() == ()
    with caplog.at_level(logging.INFO, logger=cuda.__name__):
        det = _make(name)
    _one_face_on_cpu(det, frame, caplog, name, "this OpenCV has no CUDA")
    assert _lines(caplog, name)[0].levelno == logging.WARNING


@pytest.mark.parametrize("name", OPENCV)
def test_device_count_minus_one_means_an_old_driver_and_the_cpu(name, frame, caplog):
    with caplog.at_level(logging.INFO, logger=cuda.__name__):
        det = _make(name, cuda_probe=Probe(count=-1, cascade=DeviceCascade))
    _one_face_on_cpu(det, frame, caplog, name, "== -1", "driver")


@pytest.mark.parametrize("name", OPENCV)
def test_a_cuda_build_without_a_gpu_or_with_a_failing_count_runs_on_the_cpu(name, frame, caplog):
    with caplog.at_level(logging.INFO, logger=cuda.__name__):
        det = _make(name, cuda_probe=Probe(count=0, built=True))
    _one_face_on_cpu(det, frame, caplog, name, "built with CUDA but sees no GPU")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=cuda.__name__):
        det = _make(name, cuda_probe=Probe(count=cv2.error("cudaErrorUnknown")))
    _one_face_on_cpu(det, frame, caplog, name, "getCudaEnabledDeviceCount() failed", "cudaErrorUnknown")


@pytest.mark.parametrize("name", DNN)
def test_a_counted_device_without_dnn_cuda_targets_runs_the_dnn_on_the_cpu(name, frame, caplog):
    """An OpenCV built with CUDA but without the DNN CUDA backend: labelled opencv-cpu, not cuda."""
    with caplog.at_level(logging.INFO, logger=cuda.__name__):
        det = _make(name, cuda_probe=Probe(count=1, targets=()))
    _one_face_on_cpu(det, frame, caplog, name, "getAvailableTargets(cv2.dnn.DNN_BACKEND_CUDA) is empty")


def test_dnn_choice_follows_the_available_targets(caplog):
    with caplog.at_level(logging.INFO, logger=cuda.__name__):
        both = cuda.choose_dnn("x", True, True, Probe(targets=(CUDA_T, FP16_T)))
        fp32_only = cuda.choose_dnn("y", True, True, Probe(targets=(CUDA_T,)))
        off = cuda.choose_dnn("z", False, False, Probe())
    assert (both.backend, both.target, both.label) == (cv2.dnn.DNN_BACKEND_CUDA, FP16_T, "opencv-cuda-fp16")
    assert (fp32_only.target, fp32_only.label) == (CUDA_T, "opencv-cuda-fp32")
    assert (off.backend, off.target, off.label) == (cv2.dnn.DNN_BACKEND_OPENCV, cv2.dnn.DNN_TARGET_CPU, cuda.CPU)
    msgs = {r.getMessage().split(":")[0]: r for r in caplog.records if r.name == cuda.__name__}
    assert set(msgs) == {"x", "y", "z"}  # one line each
    assert "no DNN_TARGET_CUDA_FP16" in msgs["y"].getMessage() and msgs["y"].levelno == logging.WARNING
    assert "use_cuda=False" in msgs["z"].getMessage() and msgs["z"].levelno == logging.INFO


def test_haar_needs_the_cuda_cascade_module(frame, caplog):
    with caplog.at_level(logging.INFO, logger=cuda.__name__):
        det = _make("haar", cuda_probe=Probe(cascade=None))
    _one_face_on_cpu(det, frame, caplog, "haar", "no cv2.cuda.CascadeClassifier", "cudalegacy")


def test_haar_with_the_new_format_cascade_falls_back_without_calling_the_cuda_loader(frame, caplog):
    """cv2.data's frontalface_default is in the new format, which the CUDA cascade cannot read."""
    DeviceCascade.created.clear()
    new_format = str(detectors.haar_cascade_path())
    with caplog.at_level(logging.INFO, logger=cuda.__name__):
        det = _make("haar", cuda_cascade=new_format, cuda_probe=Probe(cascade=DeviceCascade))
    _one_face_on_cpu(det, frame, caplog, "haar", "new cascade format", "haarcascades_cuda")
    assert DeviceCascade.created == []


def test_haar_without_the_old_format_file_says_where_to_get_it(frame, caplog, tmp_path, monkeypatch):
    monkeypatch.delenv(models.ENV_VAR, raising=False)
    monkeypatch.setattr(models, "DEFAULT_DIR", tmp_path / "cache")
    with caplog.at_level(logging.INFO, logger=cuda.__name__):
        det = _make("haar", models_dir=str(tmp_path), cuda_probe=Probe(cascade=DeviceCascade))
    _one_face_on_cpu(det, frame, caplog, "haar", detectors.HAAR_CUDA.name, "not found", str(tmp_path),
                     "data/haarcascades_cuda/")


def test_cascade_format_check(old_cascade, tmp_path):
    assert cuda.cascade_problem(old_cascade) is None
    assert not cv2.CascadeClassifier(str(old_cascade)).empty()  # a valid cascade, not just a shape
    assert "new cascade format" in cuda.cascade_problem(detectors.haar_cascade_path())
    (tmp_path / "other.xml").write_text('<?xml version="1.0"?><opencv_storage><a>1</a></opencv_storage>')
    assert "not a cascade" in cuda.cascade_problem(tmp_path / "other.xml")
    assert "does not exist" in cuda.cascade_problem(tmp_path / "missing.xml")


@pytest.mark.parametrize("name", OPENCV)
def test_a_cuda_error_at_the_first_frame_moves_the_detector_to_the_cpu(name, frame, caplog, old_cascade):
    """The detector starts on CUDA (as the probe allows); the first frame fails there (the real
    OpenCV of this build raises: no CUDA) and is detected again on the CPU, never raising."""
    DeviceCascade.created.clear()
    kwargs = {"cuda_cascade": str(old_cascade)} if name == "haar" else {}
    with caplog.at_level(logging.INFO, logger=cuda.__name__):
        det = _make(name, cuda_probe=Probe(cascade=DeviceCascade), **kwargs)
    started = _lines(caplog, name)
    assert det.backend == ("opencv-cuda" if name == "haar" else "opencv-cuda-fp32")
    assert len(started) == 1 and "running on CUDA" in started[0].getMessage()
    assert DeviceCascade.created == ([str(old_cascade)] if name == "haar" else [])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=cuda.__name__):
        faces = det(frame)
        again = det(frame)
    assert det.backend == cuda.CPU and det.backend_reason.startswith("CUDA error while detecting")
    lines = _lines(caplog, name)
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING, [r.getMessage() for r in lines]
    assert len(faces) == 1 and [d.box for d in faces] == [d.box for d in again]


def test_pipeline_summary_and_benchmark_row_name_the_backend_that_ran():
    """A detector that fell back at its first frame is reported as opencv-cpu in the benchmark
    row and the realtime summary. The video has no face, so no classifier is needed (none given)."""
    from ferjax.components.classifiers import EMOTIONS
    from ferjax.realtime import bench
    from ferjax.realtime.pipeline import Pipeline

    if not CARTOON.is_file():
        pytest.skip(f"real video {CARTOON} not present")
    made = []

    def make(name: str) -> Pipeline:
        made.append(_make(name, cuda_probe=Probe()))
        assert made[-1].backend == "opencv-cuda-fp32"
        return Pipeline(made[-1], None, class_names=EMOTIONS)

    rows = bench.run_bench(make, ["ssd_resnet10"], [str(CARTOON)], max_frames=4, warmup_frames=1)
    assert len(rows) == 1 and rows[0]["frames"] == 4 and rows[0]["bad_frames"] == 0, rows
    assert rows[0]["backend"].startswith("opencv-cpu + jax-"), rows[0]["backend"]
    assert rows[0]["backend_reason"] == made[0].backend_reason
    assert rows[0]["backend_reason"].startswith("CUDA error while detecting")


def test_gpu_rects_reads_the_downloaded_1xN_rect_matrix():
    """`detectMultiScale` on the GPU returns a 1 x N CV_32SC4 GpuMat; downloaded: [1, N, 4]."""
    downloaded = np.array([[[10, 20, 30, 40], [1, 2, 3, 4]]], np.int32)
    np.testing.assert_array_equal(cuda.gpu_rects(downloaded), [[10, 20, 30, 40], [1, 2, 3, 4]])
    assert cuda.gpu_rects(None).shape == (0, 4)
    assert cuda.gpu_rects(cv2.cuda_GpuMat()).shape == (0, 4)  # empty: no faces (OpenCV releases it)


def test_haar_finds_its_cascade_without_cv2_data(frame, tmp_path, monkeypatch):
    """A CMake-built cv2 has no cv2.data; the cascade is then read from share/opencv4/haarcascades."""
    src = detectors.haar_cascade_path()
    monkeypatch.delattr(cv2, "data", raising=False)
    monkeypatch.setenv(models.ENV_VAR, str(tmp_path / "models"))
    monkeypatch.setattr(models, "DEFAULT_DIR", tmp_path / "cache")
    monkeypatch.setattr(detectors, "OPENCV_SHARE_PREFIXES", (str(tmp_path / "prefix"),))
    with pytest.raises(FileNotFoundError, match="share/opencv4/haarcascades") as e:
        DETECTORS.create("haar", use_cuda=False)
    assert str(tmp_path / "models") in str(e.value)
    share = tmp_path / "prefix" / "share" / "opencv4" / "haarcascades"
    share.mkdir(parents=True)
    shutil.copy(src, share / src.name)
    det = DETECTORS.create("haar", use_cuda=False)
    assert det.backend == cuda.CPU and len(det(frame)) == 1


def test_haar_on_an_opencv_without_cascade_classifier_is_skipped_with_the_reason(monkeypatch):
    """OpenCV 5 (the H200 image's opencv-python-headless 5.0.0) has no cv2.CascadeClassifier: Haar
    raises ImportError naming the version, which the realtime benchmark turns into a skipped row."""
    from ferjax.realtime import bench

    monkeypatch.delattr(cv2, "CascadeClassifier")
    with pytest.raises(ImportError, match=f"OpenCV \\({cv2.__version__}\\) has no cv2.CascadeClassifier"):
        DETECTORS.create("haar", use_cuda=False)
    rows = bench.run_bench(lambda name: DETECTORS.create(name, use_cuda=False), ["haar"], ["unused.mp4"])
    assert rows == [{"detector": "haar", "skipped": rows[0]["skipped"]}]
    assert "opencv-python-headless<5" in rows[0]["skipped"]


def test_check_script_reports_this_machine_and_fails_require_gpu(tmp_path, capsys):
    """`ferjax doctor` on this CPU machine: no device, no DNN CUDA target, every OpenCV detector on
    the CPU finding the face of the real frame, JAX on the CPU, the shipped YuNet found with its
    pinned sha256; --require-gpu fails."""
    from ferjax import doctor as check

    if not FACE_VIDEO.is_file():
        pytest.skip(f"real video {FACE_VIDEO} not present")
    for name in DNN:
        _make(name, use_cuda=False)  # skips, naming the file, when a detector's model is absent
    args = ["--frame", str(FACE_VIDEO), "--models-dir", str(MODELS), "--detectors", ",".join(OPENCV)]
    assert check.main([*args, "--json", str(tmp_path / "r.json")]) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["opencv"]["device_count"] == 0 and r["opencv"]["dnn_cuda_targets"] == []
    assert "no CUDA" in r["opencv"]["device_problem"]
    assert [(d["detector"], d["backend"], d["faces"]) for d in r["detectors"]] == [(n, cuda.CPU, 1) for n in OPENCV]
    assert r["jax"]["backend"] == "cpu" and r["jax"]["conv_ok"] and r["gpu_complete"] is False
    assert r["date"].startswith("20") and r["host"]  # a record: when and where
    yunet = next(m for m in r["model_files"] if m["name"] == models.YUNET.name)
    assert yunet["path"] and yunet["sha256"] == models.YUNET.sha256 == yunet["pinned_sha256"]
    assert "everything on the GPU: False" in capsys.readouterr().out
    assert check.main([*args, "--require-gpu"]) == 1
