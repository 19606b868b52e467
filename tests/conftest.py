"""Shared fixtures: small FER2013-format files the tests write, the real data when present, and
every cache a test run could write (JAX compilation, TFDS, ferjax, matplotlib) in a temporary folder."""
from __future__ import annotations

import gzip
import os
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np
import pytest

# Set before any test imports ferjax, and inherited by the command-line subprocesses.
_CACHES = Path(tempfile.mkdtemp(prefix="ferjax-test-caches-"))
for _var, _sub in (("FERJAX_CACHE_DIR", "ferjax"), ("TFDS_DATA_DIR", "tfds"),
                   ("MPLCONFIGDIR", "matplotlib"), ("XDG_CACHE_HOME", "xdg")):
    os.environ[_var] = str(_CACHES / _sub)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FERJAX_SHARED", REPO.parent / "shared"))
REAL_FER = SHARED / "data" / "fer2013"
MEDIA = SHARED / "media"
MODELS = SHARED / "models"
USAGES = ("Training", "PublicTest", "PrivateTest")


def synthetic_rows(n_per_usage=(160, 64, 64), seed=0, background=60, band=220,
                   label_noise=0.0) -> list[tuple[int, np.ndarray, str]]:
    """(label, 48x48 uint8, Usage) rows; each class has its own band of brightness `band` on noise
    below `background`, so it is learnable; `label_noise` of the labels in every split are replaced
    by random classes (a ceiling below 100%)."""
    rng = np.random.default_rng(seed)
    rows = []
    for usage, n in zip(USAGES, n_per_usage):
        for i in range(n):
            label = i % 7
            img = rng.integers(0, background, (48, 48)).astype(np.uint8)
            img[label * 6:label * 6 + 6, :] = band
            if label_noise and rng.random() < label_noise:
                label = int(rng.integers(0, 7))
            rows.append((label, img, usage))
    return rows


def write_csv(path: Path, rows, gz: bool = False, header: str = "emotion,pixels,Usage") -> Path:
    lines = [header] + [f"{lab},{' '.join(map(str, img.reshape(-1)))},{usage}" for lab, img, usage in rows]
    data = ("\n".join(lines) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path.write_bytes(gzip.compress(data, mtime=0))
    else:
        path.write_bytes(data)
    return path


@pytest.fixture(scope="session")
def synthetic_csv(tmp_path_factory) -> Path:
    """A folder holding a small valid fer2013.csv (288 rows)."""
    d = tmp_path_factory.mktemp("fer_synth")
    write_csv(d / "fer2013.csv", synthetic_rows())
    return d


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tfds")


def require_files(*paths: Path, why: str = "") -> None:
    """Skips the test, naming what is missing, unless every path exists; call it before the code
    under test, so that code's own FileNotFoundError fails the test instead of skipping it."""
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        pytest.skip(f"{why or 'needed files'} absent: {', '.join(missing)}")


def _mtcnn_weight_dirs() -> list[Path]:
    dirs = [MODELS / "mtcnn"]
    try:
        dirs.append(Path(str(metadata.distribution("mtcnn").locate_file("mtcnn/assets/weights"))))
    except metadata.PackageNotFoundError:
        pass
    return dirs


def detector_files(name: str) -> list[Path]:
    """The files the built-in detector `name` needs in a test run (../shared/models, the mtcnn
    wheel, OpenCV's package), found here independently of the code under test; [] for others."""
    det = MODELS / "detectors"
    if name == "mtcnn":
        for d in _mtcnn_weight_dirs():
            files = [d / f"{n}.lz4" for n in ("pnet", "rnet", "onet")]
            if all(f.is_file() for f in files):
                return files
        return [_mtcnn_weight_dirs()[-1] / f"{n}.lz4" for n in ("pnet", "rnet", "onet")]
    return {"haar": [Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"],
            "ssd_resnet10": [det / "opencv_face_detector_uint8.pb", det / "opencv_face_detector.pbtxt"],
            "yunet": [det / "face_detection_yunet_2026may.onnx"]}.get(name, [])


def require_detector(name: str) -> None:
    require_files(*detector_files(name), why=f"{name} model files")


@pytest.fixture(scope="session")
def real_fer() -> Path:
    if not (REAL_FER / "fer2013.csv.gz").is_file():
        pytest.skip(f"real FER2013 not found at {REAL_FER} (download it from Kaggle; see README)")
    return REAL_FER


def run_cli(*args: str, env_extra: dict | None = None, timeout: float = 600,
            check: bool = True) -> subprocess.CompletedProcess:
    """Runs `python -m ferjax.run ARGS` in a subprocess and returns its result."""
    env = dict(os.environ)
    env.update(env_extra or {})
    env.setdefault("JAX_PLATFORMS", "cpu")
    proc = subprocess.run([sys.executable, "-m", "ferjax.run", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"ferjax.run {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc
