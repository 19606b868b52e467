"""Reading the MTCNN weights that PyPI's `mtcnn==1.0.0` ships (`mtcnn/assets/weights/*.lz4`).

The files are joblib pickles (lists of float32 arrays in Keras layout) in an LZ4 frame. A small
pure-Python LZ4-frame decoder and ferjax's restricted unpickler (`ferjax.convert.safe_pickle`)
read them: joblib itself is never called, since `joblib.load` runs whatever a file names.
"""
from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

import numpy as np

from ferjax.convert import safe_pickle
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
            raise ValueError(f"{d / (n + '.lz4')}: expected {ARRAY_COUNTS[n]} arrays, got {len(arrays)}")
        out[n] = [np.asarray(a, np.float32) for a in arrays]
    return out


def load_file(path: str | os.PathLike) -> list[np.ndarray]:
    """Loads one joblib pickle (LZ4-framed or plain) of numpy arrays through the allow-list."""
    raw = Path(path).read_bytes()
    data = lz4_frame_decompress(raw) if raw[:4] == _LZ4_MAGIC else raw
    arrays = safe_pickle.loads(data, safe_pickle.JOBLIB, os.fspath(path))
    if not isinstance(arrays, list) or not all(isinstance(a, np.ndarray) for a in arrays):
        raise ValueError(f"{path}: expected a list of numpy arrays, got {type(arrays).__name__}")
    return arrays


def lz4_frame_decompress(src: bytes) -> bytes:
    """Decompresses one LZ4 frame (https://github.com/lz4/lz4/blob/dev/doc/lz4_Frame_format.md)."""
    if src[:4] != _LZ4_MAGIC:
        raise ValueError("not an LZ4 frame")
    flg = src[4]
    i = 6 + (8 if flg & 0x08 else 0) + (4 if flg & 0x01 else 0) + 1  # FLG, BD, [size], [dict], HC
    block_checksum = bool(flg & 0x10)
    out = bytearray()
    while True:
        size = int.from_bytes(src[i:i + 4], "little")
        i += 4
        if size == 0:
            break
        if size & 0x80000000:  # stored uncompressed
            size &= 0x7FFFFFFF
            out += src[i:i + size]
        else:
            _lz4_block(src, i, i + size, out)
        i += size + (4 if block_checksum else 0)
    return bytes(out)


def _lz4_length(src: bytes, i: int, n: int) -> tuple[int, int]:
    """Extends a 4-bit LZ4 length nibble with its 255-continued bytes; returns (length, next i)."""
    if n == 15:
        while True:
            b = src[i]
            i += 1
            n += b
            if b != 255:
                break
    return n, i


def _lz4_block(src: bytes, i: int, end: int, out: bytearray) -> None:
    """Appends one decoded LZ4 block to `out` (matches may reach into earlier blocks)."""
    while i < end:
        token = src[i]
        i += 1
        n, i = _lz4_length(src, i, token >> 4)
        out += src[i:i + n]
        i += n
        if i >= end:
            break
        offset = src[i] | (src[i + 1] << 8)
        i += 2
        m, i = _lz4_length(src, i, token & 15)
        m += 4
        start = len(out) - offset
        if offset >= m:
            out += out[start:start + m]
        else:  # overlapping copy repeats the last `offset` bytes
            chunk = bytes(out[start:])
            out += (chunk * (m // offset + 1))[:m]

