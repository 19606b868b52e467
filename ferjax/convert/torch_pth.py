"""PyTorch `torch.save` files (zip and legacy serialisation) read without importing PyTorch.

Tensors are rebuilt from their storages by NumPy; the pickle inside goes through the restricted
unpickler (`safe_pickle`) with the exact globals a state dict needs, so a crafted file runs nothing.
"""
from __future__ import annotations

import collections
import os
import struct
import tarfile
import zipfile
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
    """A tensor view (storage, offset, size, stride), materialised once the storages are read."""

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        if not isinstance(storage, _Storage):
            raise safe_pickle.UnsafePickleError(f"tensor built on {type(storage).__name__}, not a storage")
        self.storage, self.offset, self.size, self.stride = storage, int(offset), tuple(size), tuple(stride)

    def array(self, source: str) -> np.ndarray:
        data = self.storage.data
        need = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)) + 1 if all(self.size) else 0
        if data is None or need > len(data):
            raise ConversionError(f"{source}: a tensor of shape {self.size} reaches element {need} of a storage "
                                  f"holding {0 if data is None else len(data)} (truncated file?)")
        item = data.dtype.itemsize
        out = np.lib.stride_tricks.as_strided(data[self.offset:], self.size, [s * item for s in self.stride])
        out = out.copy()
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


def _persistent_loader(storages: dict[str, _Storage], source: str):
    def load(pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise ConversionError(f"{source}: unexpected persistent id {pid!r}")
        if len(pid) == 6 and pid[5] is not None:
            raise ConversionError(f"{source}: storage views (torch < 0.4 `view_metadata`) are not supported")
        key = str(pid[2])
        if key not in storages:
            storages[key] = _Storage(pid[1], int(pid[4]))
        return storages[key]
    return load


def read(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """{key: array} of a state dict saved by `torch.save` (zip or legacy format)."""
    path = os.fspath(path)
    if zipfile.is_zipfile(path):
        obj, storages = _read_zip(path)
    elif tarfile.is_tarfile(path):
        raise ConversionError(f"{path}: the tar format of torch < 0.1.10; re-save it with a newer torch")
    else:
        obj, storages = _read_legacy(path)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ConversionError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    out = {}
    for key, value in obj.items():
        if not isinstance(value, _Tensor):
            raise ConversionError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        out[str(key)] = value.array(path)
    return out


def _read_zip(path: str) -> tuple[Any, dict[str, _Storage]]:
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if not pkl:
            raise ConversionError(f"{path}: a zip archive without <name>/data.pkl: not a torch.save file")
        prefix = pkl[0][: -len("data.pkl")]
        order = z.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in names else "little"
        storages: dict[str, _Storage] = {}
        obj = safe_pickle.loads(z.read(pkl[0]), ALLOWED, f"{path}:{pkl[0]}", _persistent_loader(storages, path))
        for key, st in storages.items():
            entry = f"{prefix}data/{key}"
            if entry not in names:
                raise ConversionError(f"{path}: storage {key} missing (no {entry} in the archive)")
            dtype = st.stype.dtype.newbyteorder("<" if order == "little" else ">")
            raw = z.read(entry)
            if len(raw) < st.numel * dtype.itemsize:
                raise ConversionError(f"{path}: {entry} holds {len(raw)} bytes, expected {st.numel * dtype.itemsize}")
            st.data = np.frombuffer(raw, dtype, st.numel).astype(dtype.newbyteorder("="))
    return obj, storages


def _read_legacy(path: str) -> tuple[Any, dict[str, _Storage]]:
    with open(path, "rb") as fh:
        head = fh.read(4)
        fh.seek(0)
        if head == b"PK\x03\x04":
            raise ConversionError(f"{path}: a zip archive without its central directory: truncated file?")
        if head[:2] != b"\x80\x02":
            raise ConversionError(f"{path}: neither a zip archive nor a legacy torch.save pickle "
                                  f"(starts with {head!r}); not a PyTorch file")
        magic = safe_pickle.loads(fh, {}, path)
        if magic != _LEGACY_MAGIC:
            raise ConversionError(f"{path}: pickle without PyTorch's magic number: not a torch.save file")
        if safe_pickle.loads(fh, {}, path) != 1001:
            raise ConversionError(f"{path}: unsupported legacy protocol version (expected 1001)")
        sys_info = safe_pickle.loads(fh, {}, path)
        little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
        storages: dict[str, _Storage] = {}
        obj = safe_pickle.loads(fh, ALLOWED, path, _persistent_loader(storages, path))
        keys = safe_pickle.loads(fh, {}, path)
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
            raw = fh.read(numel * dtype.itemsize)
            if numel != st.numel or len(raw) < numel * dtype.itemsize:
                raise ConversionError(f"{path}: truncated at byte {at}: storage {key} needs "
                                      f"{st.numel * dtype.itemsize} bytes, {len(raw)} left")
            st.data = np.frombuffer(raw, dtype).astype(dtype.newbyteorder("="))
    return obj, storages

