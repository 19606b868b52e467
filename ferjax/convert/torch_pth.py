"""PyTorch `torch.save` files (zip and legacy serialisation) read without importing PyTorch.

Tensors are rebuilt from their storages by NumPy; the pickle inside goes through the restricted
unpickler (`safe_pickle`) with the exact globals a state dict needs, so a crafted file runs nothing.
"""
from __future__ import annotations

import collections
import lzma
import math
import os
import struct
import tarfile
import zipfile
import zlib
from typing import Any

import numpy as np

from ferjax.convert import safe_pickle
from ferjax.convert.mapping import ConversionError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {"FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2",
                   "BFloat16Storage": "<u2", "LongStorage": "<i8", "IntStorage": "<i4",
                   "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?"}


class _StorageType:
    """Stand-in for `torch.<X>Storage` as named in a persistent id: it only carries a dtype."""

    def __init__(self, name: str):
        self.name, self.dtype = name, np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    """A storage's elements; filled when its bytes are read (legacy files put them after the pickle)."""

    def __init__(self, stype: _StorageType, numel: int):
        self.stype, self.numel, self.data = stype, numel, None


class _Tensor:
    """A tensor view (storage, offset, size, stride), materialised once the storages are read.

    Offset, sizes and strides must be non-negative Python ints and the whole view must lie inside
    the storage: `as_strided` reads wherever they point (a stride of -2**40 read outside the heap).
    """

    def __init__(self, storage: _Storage, offset: Any, size: Any, stride: Any):
        if not isinstance(storage, _Storage):
            raise safe_pickle.UnsafePickleError(f"tensor built on {type(storage).__name__}, not a storage")
        ints = lambda v: isinstance(v, (tuple, list)) and len(v) <= 64 and all(type(n) is int and n >= 0 for n in v)
        if type(offset) is not int or offset < 0 or not ints(size) or not ints(stride) or len(size) != len(stride):
            raise ConversionError(f"a tensor view needs a non-negative int offset and as many non-negative int "
                                  f"sizes as strides; got offset {safe_pickle.brief(offset)}, size "
                                  f"{safe_pickle.brief(size)}, stride {safe_pickle.brief(stride)}")
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def array(self, source: str) -> np.ndarray:
        data = self.storage.data
        held = 0 if data is None else len(data)
        numel = math.prod(self.size)
        # Python ints: the last element's index cannot overflow.
        need = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)) + 1 if numel else 0
        if data is None or need > held:
            raise ConversionError(f"{source}: a tensor of shape {self.size} (offset {self.offset}, strides "
                                  f"{self.stride}) reaches element {need} of a storage holding {held} "
                                  f"(truncated file?)")
        if numel > held:
            raise ConversionError(f"{source}: a tensor of shape {self.size} has {numel} elements, more than its "
                                  f"storage's {held} (overlapping strides are not weights)")
        if numel == 0:
            out = np.zeros(self.size, data.dtype)
        else:
            item = data.dtype.itemsize
            strides = [s * item if n > 1 else 0 for n, s in zip(self.size, self.stride)]
            out = np.lib.stride_tricks.as_strided(data[self.offset:], self.size, strides).copy()
        if self.storage.stype.name == "BFloat16Storage":  # bfloat16: the high half of a float32
            out = (out.astype(np.uint32) << 16).view(np.float32)
        return out


def _rebuild_tensor(storage: _Storage, offset: int, size: tuple, stride: tuple, *_: Any) -> _Tensor:
    return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(data: _Tensor, requires_grad: bool = False, hooks: Any = None) -> _Tensor:
    if not isinstance(data, _Tensor):
        raise safe_pickle.UnsafePickleError("Parameter around a non-tensor")
    return data


ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,  # torch < 0.4
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}
"""The exact globals of a PyTorch state dict of dense tensors."""


MAX_PICKLE_BYTES = 64 << 20
"""Largest data.pkl read from a zip file (a state dict's pickle is kilobytes; the tensors are apart)."""
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, EOFError, OSError,
               zlib.error, lzma.LZMAError, ValueError, KeyError, struct.error)


def _persistent_loader(storages: dict[str, _Storage], source: str):
    def load(pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and type(pid[2]) in (str, int)
                and type(pid[4]) is int and pid[4] >= 0):
            raise ConversionError(f"{source}: unexpected persistent id {safe_pickle.brief(pid)}: expected "
                                  f"('storage', torch.<X>Storage, key, location, element count)")
        if len(pid) == 6 and pid[5] is not None:
            raise ConversionError(f"{source}: storage views (torch < 0.4 `view_metadata`) are not supported")
        key = str(pid[2])
        if key not in storages:
            storages[key] = _Storage(pid[1], pid[4])
        return storages[key]
    return load


def read(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """{key: array} of a state dict saved by `torch.save` (zip or legacy format).

    Raises ConversionError (or UnsafePickleError for globals outside the allow-list) naming the file."""
    path = os.fspath(path)
    try:
        if zipfile.is_zipfile(path):
            obj, storages = _read_zip(path)
        elif tarfile.is_tarfile(path):
            raise ConversionError(f"{path}: the tar format of torch < 0.1.10; re-save it with a newer torch")
        else:
            obj, storages = _read_legacy(path)
    except (ConversionError, safe_pickle.UnsafePickleError):
        raise
    except _ZIP_ERRORS as e:
        raise ConversionError(f"{path}: cannot read as a torch.save file ({type(e).__name__}: {e})") from e
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ConversionError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    out = {}
    for key, value in obj.items():
        if type(key) is not str or not isinstance(value, _Tensor):
            raise ConversionError(f"{path}: entry {safe_pickle.brief(key)} is a {type(value).__name__}, "
                                  f"expected a tensor under a string key")
        out[key] = value.array(path)
    return out


def _read_zip(path: str) -> tuple[Any, dict[str, _Storage]]:
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if not pkl:
            raise ConversionError(f"{path}: a zip archive without <name>/data.pkl: not a torch.save file")
        prefix = pkl[0][: -len("data.pkl")]
        order = "little"
        if prefix + "byteorder" in names:
            order = _entry(z, prefix + "byteorder", 16, path).decode("ascii", "replace").strip()
            if order not in ("little", "big"):
                raise ConversionError(f"{path}: {prefix}byteorder says {order!r}, expected little or big")
        storages: dict[str, _Storage] = {}
        obj = safe_pickle.loads(_entry(z, pkl[0], MAX_PICKLE_BYTES, path), ALLOWED, f"{path}:{pkl[0]}",
                                _persistent_loader(storages, path))
        for key, st in storages.items():
            entry = f"{prefix}data/{key}"
            if entry not in names:
                raise ConversionError(f"{path}: storage {key} missing (no {entry} in the archive)")
            dtype = st.stype.dtype.newbyteorder("<" if order == "little" else ">")
            need = st.numel * dtype.itemsize
            raw = _entry(z, entry, need, path, exact=True)
            st.data = np.frombuffer(raw, dtype, st.numel).astype(dtype.newbyteorder("="))
    return obj, storages


def _entry(z: zipfile.ZipFile, name: str, size: int, path: str, exact: bool = False) -> bytes:
    """The first `size` bytes of a zip entry (exactly `size` if `exact`, else at most), decompressing
    no more than that: a small compressed entry may declare gigabytes."""
    declared = z.getinfo(name).file_size
    if declared < size if exact else declared > size:
        raise ConversionError(f"{path}: {name} holds {declared} bytes, expected "
                              f"{'at least' if exact else 'at most'} {size}")
    with z.open(name) as f:
        data = f.read(size)
    if exact and len(data) != size:
        raise ConversionError(f"{path}: {name} holds {len(data)} bytes, expected {size}")
    return data


def _read_legacy(path: str) -> tuple[Any, dict[str, _Storage]]:
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        head = fh.read(4)
        fh.seek(0)
        if head == b"PK\x03\x04":
            raise ConversionError(f"{path}: a zip archive without its central directory: truncated file?")
        if head[:2] != b"\x80\x02":
            raise ConversionError(f"{path}: neither a zip archive nor a legacy torch.save pickle "
                                  f"(starts with {head!r}); not a PyTorch file")
        magic = safe_pickle.loads(fh, {}, path)
        if type(magic) is not int or magic != _LEGACY_MAGIC:
            raise ConversionError(f"{path}: pickle without PyTorch's magic number: not a torch.save file")
        version = safe_pickle.loads(fh, {}, path)
        if type(version) is not int or version != 1001:
            raise ConversionError(f"{path}: unsupported legacy protocol version (expected 1001)")
        sys_info = safe_pickle.loads(fh, {}, path)
        little = sys_info.get("little_endian", True) is not False if isinstance(sys_info, dict) else True
        storages: dict[str, _Storage] = {}
        obj = safe_pickle.loads(fh, ALLOWED, path, _persistent_loader(storages, path))
        keys = safe_pickle.loads(fh, {}, path)
        if not isinstance(keys, list) or not all(type(k) in (str, int) for k in keys):
            raise ConversionError(f"{path}: expected the list of storage keys after the state dict's pickle")
        for key in keys:
            st = storages.get(str(key))
            if st is None:
                raise ConversionError(f"{path}: storage {key} listed after the pickle but never used")
            at = fh.tell()
            head = fh.read(8)
            if len(head) < 8:
                raise ConversionError(f"{path}: truncated at byte {at}: storage {key} has no size")
            numel = struct.unpack("<q" if little else ">q", head)[0]
            dtype = st.stype.dtype.newbyteorder("<" if little else ">")
            need = st.numel * dtype.itemsize
            if numel != st.numel or need > size - fh.tell():
                raise ConversionError(f"{path}: truncated at byte {at}: storage {key} needs {need} bytes "
                                      f"({st.numel} elements; the file says {numel}), "
                                      f"{max(size - fh.tell(), 0)} left")
            raw = fh.read(need)
            st.data = np.frombuffer(raw, dtype, st.numel).astype(dtype.newbyteorder("="))
    return obj, storages
