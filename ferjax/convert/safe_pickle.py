"""One restricted unpickler for every pickle-based weight file (PyTorch, joblib).

A pickle may name any importable callable and call it. This reader admits only an exact list of
(module, name) pairs, each mapped to a stand-in written here that can only rebuild numeric arrays
and plain containers; nothing named in the file is ever imported. Prefixes are not enough:
`numpy.testing._private.utils.runstring` lives under `numpy` and runs code.
"""
from __future__ import annotations

import codecs
import collections
import io
import os
import pickle
import struct
from typing import Any, Callable, Mapping

import numpy as np

from ferjax.convert.mapping import ConversionError

Allowed = Mapping[tuple[str, str], Any]


class UnsafePickleError(pickle.UnpicklingError):
    """The file names a global outside the allow-list, or asks for an object array."""


def _dtype(obj: Any, align: bool = False, copy: bool = False) -> np.dtype:
    dt = np.dtype(obj, align, copy)
    if dt.hasobject:
        raise UnsafePickleError(f"refusing dtype {dt!r}: object arrays can hold arbitrary objects")
    return dt


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"refusing array subtype {subtype!r}: only numpy.ndarray")
    return np.ndarray.__new__(np.ndarray, shape, _dtype(dtype))


def _scalar(dtype: np.dtype, data: bytes | None = None) -> Any:
    dtype = _dtype(dtype)
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise UnsafePickleError(f"numpy scalar of {dtype}: expected {dtype.itemsize} bytes of data")
    return np.frombuffer(data, dtype)[0]


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    """Protocol-5 pickles of arrays: `numpy._core.numeric._frombuffer`."""
    if order not in ("C", "F"):
        raise UnsafePickleError(f"numpy array order {order!r}: expected 'C' or 'F'")
    return np.frombuffer(buf, _dtype(dtype)).reshape(shape, order=order).copy()


def _encode(text: str, encoding: str = "utf-8") -> bytes:
    """`_codecs.encode` as protocol-2 pickles use it for bytes; only latin-1 is accepted."""
    if codecs.lookup(encoding).name != "iso8859-1" or not isinstance(text, str):
        raise UnsafePickleError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1")


class _JoblibArray:
    """Stand-in for joblib's NumpyArrayWrapper; the array's bytes follow it in the stream."""

    def read(self, fh: io.BufferedIOBase, source: str) -> np.ndarray:
        d = self.__dict__
        if d.get("subclass", np.ndarray) is not np.ndarray:
            raise UnsafePickleError(f"{source}: refusing joblib array of subclass {d.get('subclass')!r}")
        dtype, shape = _dtype(d["dtype"]), tuple(d["shape"])
        if d.get("numpy_array_alignment_bytes") is not None:
            pad = fh.read(1)
            fh.read(pad[0] if pad else 0)
        count = int(np.prod(shape, dtype=np.int64))
        buf = fh.read(count * dtype.itemsize)
        if len(buf) != count * dtype.itemsize:
            raise ConversionError(f"{source}: truncated joblib array: expected {count * dtype.itemsize} bytes, "
                             f"got {len(buf)}")
        arr = np.frombuffer(buf, dtype, count)
        if d.get("order") == "F":
            return arr.reshape(shape[::-1]).T.copy()
        return arr.reshape(shape).copy()


NUMPY: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,  # only ever passed to _reconstruct, which checks it
    ("numpy", "dtype"): _dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _encode,
    ("collections", "OrderedDict"): collections.OrderedDict,
}
"""Pairs needed to rebuild numpy arrays, scalars and ordered dicts."""

JOBLIB: dict[tuple[str, str], Any] = {**NUMPY, ("joblib.numpy_pickle", "NumpyArrayWrapper"): _JoblibArray}
"""NUMPY plus joblib's array wrapper (joblib >= 0.10 files)."""


class RestrictedUnpickler(pickle._Unpickler):  # the pure-Python unpickler lets BUILD be extended
    """Unpickler whose globals are looked up in `allowed` only; everything else is refused."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, fh: io.BufferedIOBase, allowed: Allowed, source: str,
                 persistent_load: Callable[[Any], Any] | None = None):
        super().__init__(fh)
        self._fh, self._allowed, self._source = fh, allowed, source
        if persistent_load is not None:
            self.persistent_load = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self._source}: refusing to load global {module}.{name}: this reader rebuilds arrays "
                f"only and admits exactly {sorted('.'.join(k) for k in self._allowed)}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._source}: unexpected persistent id {pid!r}")

    def _load_build(self) -> None:
        state = self.stack[-1]
        inst = self.stack[-2]
        if isinstance(inst, np.dtype) and isinstance(state, tuple):
            # A dtype's state can add fields; an object field would allow object arrays.
            super().load_build()
            _dtype(self.stack[-1])
            return
        super().load_build()
        if isinstance(self.stack[-1], _JoblibArray):
            self.stack[-1] = self.stack[-1].read(self._fh, self._source)

    dispatch[pickle.BUILD[0]] = _load_build


def loads(data: bytes | io.BufferedIOBase, allowed: Allowed, source: str = "<bytes>",
          persistent_load: Callable[[Any], Any] | None = None) -> Any:
    """Unpickles one object from bytes or an open binary file, admitting only `allowed` globals."""
    fh = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    try:
        return RestrictedUnpickler(fh, allowed, source, persistent_load).load()
    except UnsafePickleError:
        raise
    except (EOFError, pickle.UnpicklingError, IndexError, struct.error) as e:
        raise ConversionError(f"{source}: truncated or corrupt pickle at byte {fh.tell()}: {e}") from e


def load(path: str | os.PathLike, allowed: Allowed = NUMPY) -> Any:
    """Unpickles a whole file with `allowed` globals only."""
    with open(path, "rb") as fh:
        return loads(fh, allowed, os.fspath(path))

