"""Folders that appear complete or not at all: write into a hidden temporary sibling, fsync, rename;
and the one file digest (`file_sha256`) that weights, model files and datasets are keyed by.

A kill or a full disk during the write leaves at most a hidden `.NAME.tmp-*` folder, never a
folder under the final name; readers also require a marker file written last (a manifest).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np


def fsync_path(path: Path) -> None:
    """Flushes a file's or a folder's entry to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def refuse_existing(final: Path, overwrite: bool = False) -> None:
    """Raises FileExistsError when `final` is a file or a non-empty folder and `overwrite` is off."""
    if final.exists() and not overwrite and (final.is_file() or any(final.iterdir())):
        raise FileExistsError(f"{final} already exists; choose another output folder, delete it, "
                              f"or allow overwriting it")


@contextlib.contextmanager
def atomic_folder(final: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yields a temporary folder beside `final`; on a clean exit its files are fsynced and it is
    renamed to `final` (replacing an existing one only with `overwrite`); on any error it is removed.

    An existing non-empty `final` without `overwrite` is refused before anything is written.
    """
    final = Path(final)
    refuse_existing(final, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private (0700); the result is an ordinary folder
        yield tmp
        for path in tmp.rglob("*"):
            fsync_path(path)
        fsync_path(tmp)
        old = None
        if final.exists():
            old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(final, old)
        os.rename(tmp, final)
        fsync_path(final.parent)
        if old is not None:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes a file so that readers see the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def save_npz(path: str | os.PathLike | None, **arrays: np.ndarray) -> None:
    """Writes a compressed .npz atomically (nothing when `path` is None)."""
    if path is None:
        return
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


_digests: dict[tuple[str, int, int], str] = {}  # (resolved path, size, mtime_ns) -> sha256


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, computed once per (path, size, mtime): model files are
    checked on every lookup and weights keyed by content without re-reading them each time."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _digests:
        with open(path, "rb") as fh:
            _digests[key] = hashlib.file_digest(fh, "sha256").hexdigest()
    return _digests[key]
