"""Reading the MTCNN weights that PyPI's `mtcnn==1.0.0` ships (`mtcnn/assets/weights/*.lz4`).

The files are joblib pickles (lists of float32 arrays in Keras layout) in an LZ4 frame. The `lz4`
package (with an output cap: a small frame can expand a thousandfold) and ferjax's restricted
unpickler (`ferjax.convert.safe_pickle`) read them: joblib itself is never called, since
`joblib.load` runs whatever a file names. Every refusal names the file: ConversionError (a
ValueError) for a corrupt, truncated or oversized file, UnsafePickleError for a forbidden global.
"""
from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

import lz4.frame
import numpy as np

from ferjax.convert import safe_pickle
from ferjax.convert.mapping import ConversionError
from ferjax.realtime import models

NETS = ("pnet", "rnet", "onet")
ARRAY_COUNTS = {"pnet": 13, "rnet": 16, "onet": 21}
DOWNLOAD_HINT = (
    "`pip download mtcnn==1.0.0 --no-deps` and unzip the wheel, then copy "
    "mtcnn/assets/weights/{pnet,rnet,onet}.lz4 into a folder named by the config field "
    "`mtcnn_weights_dir`, or into <models dir>/mtcnn/ (models dir: config `models_dir`, "
    f"${models.ENV_VAR} or {models.DEFAULT_DIR}); installing `mtcnn` in the same environment "
    "also works (its files are found without importing it)")
_LZ4_MAGIC = b"\x04\x22\x4d\x18"
MAX_BYTES = 64 << 20
"""Largest weights file, and largest pickle an LZ4 frame may expand to (the largest shipped file, onet,
holds 1.56 MB)."""


def candidate_dirs(weights_dir: str | os.PathLike | None = None,
                   models_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders that may hold pnet/rnet/onet.lz4, most specific first."""
    dirs = [Path(weights_dir).expanduser()] if weights_dir else []
    for d in models.search_dirs(models_dir):
        dirs += [d / "mtcnn", d]
    try:  # An installed `mtcnn` distribution: locate its files without importing it.
        dist = metadata.distribution("mtcnn")
        dirs.append(Path(str(dist.locate_file("mtcnn/assets/weights"))))
    except metadata.PackageNotFoundError:
        pass
    return dirs


def find_dir(weights_dir: str | os.PathLike | None = None,
             models_dir: str | os.PathLike | None = None) -> Path:
    """The first folder holding all three weight files; raises FileNotFoundError with a hint."""
    dirs = candidate_dirs(weights_dir, models_dir)
    for d in dirs:
        if all((d / f"{n}.lz4").is_file() for n in NETS):
            return d
    raise FileNotFoundError(
        f"MTCNN weights (pnet.lz4, rnet.lz4, onet.lz4) not found in any of: "
        f"{', '.join(map(str, dirs))}. Get them with {DOWNLOAD_HINT}.")


def load_all(weights_dir: str | os.PathLike | None = None,
             models_dir: str | os.PathLike | None = None) -> dict[str, list[np.ndarray]]:
    """{'pnet': [...], 'rnet': [...], 'onet': [...]}: the Keras weight lists of the three nets."""
    d = find_dir(weights_dir, models_dir)
    out = {}
    for n in NETS:
        arrays = load_file(d / f"{n}.lz4")
        if len(arrays) != ARRAY_COUNTS[n]:
            raise ConversionError(f"{d / (n + '.lz4')}: expected {ARRAY_COUNTS[n]} arrays, got {len(arrays)}")
        out[n] = [np.asarray(a, np.float32) for a in arrays]
    return out


def load_file(path: str | os.PathLike) -> list[np.ndarray]:
    """Loads one joblib pickle (LZ4-framed or plain) of numpy arrays through the allow-list."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ConversionError(f"{path}: {size} bytes; MTCNN weight files are at most {MAX_BYTES}")
    return loads(path.read_bytes(), os.fspath(path))


def loads(raw: bytes, source: str = "<bytes>") -> list[np.ndarray]:
    """The arrays of one weights file's bytes (`source` names it in errors)."""
    data = lz4_frame_decompress(raw, source) if raw[:4] == _LZ4_MAGIC else raw
    arrays = safe_pickle.loads(data, safe_pickle.JOBLIB, source)
    if not isinstance(arrays, list) or not all(isinstance(a, np.ndarray) for a in arrays):
        raise ConversionError(f"{source}: expected a list of numpy arrays, got {type(arrays).__name__}")
    return arrays


def lz4_frame_decompress(src: bytes, source: str = "<bytes>", limit: int = MAX_BYTES) -> bytes:
    """The contents of one LZ4 frame, decompressed 1 MB at a time and refused once they pass `limit`
    bytes (so a bomb costs at most `limit`, never what it declares)."""
    d = lz4.frame.LZ4FrameDecompressor()
    # 1 MB chunks joined only once the frame ended within `limit`: a growing buffer could be copied
    # on reallocation and briefly hold twice the output (a 64 MiB refusal once grew a test worker 115 MB)
    chunks, size, data = [], 0, src
    try:
        while not d.eof:
            chunk = d.decompress(data, max_length=1 << 20)
            data = b""
            if size + len(chunk) > limit:  # checked before keeping it: the output never passes `limit`
                raise ConversionError(f"{source}: the LZ4 frame expands to more than {limit} bytes, the cap on "
                                      f"an MTCNN weights file (a decompression bomb?)")
            chunks.append(chunk)
            size += len(chunk)
            if not d.eof and d.needs_input:
                raise ConversionError(f"{source}: truncated LZ4 frame (no end mark after {size} bytes)")
    except RuntimeError as e:  # lz4 reports a corrupt frame (bad header, checksum, block) as RuntimeError
        raise ConversionError(f"{source}: corrupt LZ4 frame ({e})") from e
    if d.unused_data:
        raise ConversionError(f"{source}: {len(d.unused_data)} bytes after the LZ4 frame")
    return b"".join(chunks)
