"""Locating third-party model files (detector weights) that are not installed with ferjax.

Search order: an explicit directory (config field `models_dir`), then `$FERJAX_MODELS_DIR`, then
`~/.cache/ferjax/models`, then the files shipped in `ferjax.assets` (YuNet). A file with a pinned
sha256 found anywhere is checked against it (a differing file is refused, not skipped: it would
otherwise take precedence unnoticed); a digest is computed once per path, size and mtime. A missing
file raises with its download address and sha256.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from ferjax.atomic import file_sha256

ENV_VAR = "FERJAX_MODELS_DIR"
DEFAULT_DIR = Path("~/.cache/ferjax/models").expanduser()
PACKAGED_DIR = Path(__file__).resolve().parents[1] / "assets"  # ferjax/assets (package data)


@dataclasses.dataclass(frozen=True)
class ModelFile:
    """A third-party file: its name, where users download it, and its pinned sha256."""

    name: str
    url: str
    sha256: str | None = None
    aliases: tuple[str, ...] = ()


SSD_TF_PB = ModelFile(
    "opencv_face_detector_uint8.pb",
    "https://raw.githubusercontent.com/opencv/opencv_3rdparty/dnn_samples_face_detector_20180220_uint8/opencv_face_detector_uint8.pb",
    "5c71d752ef2cbf2f457ac82fdd580fcb2522fd04c5efdaed18eb6d9e2843fbed")
SSD_TF_PBTXT = ModelFile(
    "opencv_face_detector.pbtxt",
    "https://raw.githubusercontent.com/opencv/opencv/4.x/samples/dnn/face_detector/opencv_face_detector.pbtxt",
    "5397808362fc6fb7c4044484848e297b22449d913a267fa7f8bd9d86dce29144")
SSD_CAFFE_MODEL = ModelFile(
    "res10_300x300_ssd_iter_140000.caffemodel",
    "https://raw.githubusercontent.com/opencv/opencv_3rdparty/dnn_samples_face_detector_20170830/res10_300x300_ssd_iter_140000.caffemodel")
SSD_CAFFE_PROTO = ModelFile(
    "deploy.prototxt",
    "https://raw.githubusercontent.com/opencv/opencv/4.x/samples/dnn/face_detector/deploy.prototxt")
YUNET = ModelFile(
    "face_detection_yunet_2026may.onnx",
    "https://github.com/opencv/opencv_zoo/tree/main/models/face_detection_yunet "
    "(face_detection_yunet_2023mar.onnx)",
    "ebafce4e3c118d6554634be5c27ab333b4c047a9a8c3faf1d7cf93101c22f0f0",
    aliases=("face_detection_yunet_2023mar.onnx",))

# OpenCV's frontal-face cascade in the old Haar format, the only Haar format cv2.cuda.CascadeClassifier
# reads. Not shipped (1.2 MB); Intel License Agreement (BSD-style), like OpenCV's other cascades.
HAAR_CUDA = ModelFile(
    "haarcascades_cuda/haarcascade_frontalface_default.xml",
    "https://raw.githubusercontent.com/opencv/opencv/4.x/data/haarcascades_cuda/haarcascade_frontalface_default.xml "
    "(old Haar format, for the CUDA cascade only)")
KNOWN_FILES = (YUNET, SSD_TF_PB, SSD_TF_PBTXT, SSD_CAFFE_MODEL, SSD_CAFFE_PROTO, HAAR_CUDA)
"""Every third-party model file ferjax looks for (what `ferjax doctor` reports)."""


def search_dirs(models_dir: str | os.PathLike | None = None) -> list[Path]:
    """Directories searched for model files, most specific first."""
    dirs = [Path(models_dir).expanduser()] if models_dir else []
    if os.environ.get(ENV_VAR):
        dirs.append(Path(os.environ[ENV_VAR]).expanduser())
    dirs.append(DEFAULT_DIR)
    return dirs


class ModelFileError(OSError, ValueError):
    """A model file whose sha256 differs from the one pinned for its name (a ValueError too, so
    that the commands that report bad input in one line report this one the same way)."""


def find(file: ModelFile, models_dir: str | os.PathLike | None = None) -> Path | None:
    """The first existing path of `file` (also accepting `<dir>/detectors/<name>`), or None; a
    file whose sha256 differs from `file.sha256` raises ModelFileError (see `verified`)."""
    for d in search_dirs(models_dir):
        for name in (file.name, *file.aliases):
            for p in (d / name, d / "detectors" / name):
                if p.is_file():
                    return verified(file, p)
    return packaged(file)


def verified(file: ModelFile, path: Path) -> Path:
    """`path`, when `file` pins no sha256 or `path` has the pinned one; else ModelFileError, one
    line naming both hashes."""
    if file.sha256 and (digest := file_sha256(path)) != file.sha256:
        raise ModelFileError(f"model file {path} has sha256 {digest}, but {file.name} is pinned to "
                             f"{file.sha256}; delete or replace it (download: {file.url})")
    return path


def packaged(file: ModelFile) -> Path | None:
    """The copy of `file` shipped in `ferjax.assets`, when there is one; a copy whose sha256
    differs from the pinned one raises (a damaged install must not load silently)."""
    path = PACKAGED_DIR / file.name
    if not path.is_file():
        return None
    if file.sha256 and (digest := file_sha256(path)) != file.sha256:
        raise ModelFileError(f"shipped model file {path} is damaged: sha256 {digest} != {file.sha256}; "
                             f"reinstall ferjax")
    return path


def locate(file: ModelFile, models_dir: str | os.PathLike | None = None) -> Path:
    """Like `find`, but a missing file raises FileNotFoundError saying how to get it."""
    path = find(file, models_dir)
    if path is None:
        raise FileNotFoundError(missing_message([file], models_dir))
    return path


def missing_message(files: list[ModelFile], models_dir: str | os.PathLike | None = None) -> str:
    where = ", ".join(str(d) for d in search_dirs(models_dir))
    lines = [f"model file(s) not found in: {where}. Download them into one of these directories "
             f"(or set ${ENV_VAR} / the config field `models_dir`):"]
    for f in files:
        lines.append(f"  {f.name}: {f.url}" + (f"  sha256={f.sha256}" if f.sha256 else ""))
    return "\n".join(lines)

