"""One restricted unpickler for every pickle-based weight file (PyTorch, joblib).

A pickle may name any importable callable and call it. This reader admits only an exact list of
(module, name) pairs, each mapped to a stand-in written here that can only rebuild numeric arrays
and plain containers; nothing named in the file is ever imported. Prefixes are not enough:
`numpy.testing._private.utils.runstring` lives under `numpy` and runs code.

What the stand-ins guarantee, whatever the opcodes ask:
- `numpy.ndarray` is a non-callable token that only `_reconstruct` (and joblib's wrapper) accept:
  called directly, `ndarray(shape, "O", buffer)` would read object pointers from the file.
- Every dtype is a plain one (bool, int, uint, float, complex, bytes, str; no object, no fields,
  no subarray), checked against what its own string form gives.
- A state (BUILD) never mutates a numpy object: arrays and dtypes are rebuilt from the state as
  new objects that replace the old one on the stack and in the memo, so an array made earlier
  never sees its dtype change (a mutated dtype could make it read past its buffer), and only
  arrays, dtypes, ordered dicts and joblib wrappers made by this load take a state (a module's
  own objects, such as torch_pth's storage tokens, are never changed by a file).
- Sizes come from the file: nothing is allocated beyond what the file's bytes fill.
- Dict keys and set items are scalars (str, bytes, int, float, bool, None): hashing a tuple nested
  a million deep (a 1 MB file) overflowed CPython's C stack.
"""
from __future__ import annotations

import codecs
import collections
import io
import math
import os
import pickle
import reprlib
import struct
from typing import Any, Callable, Mapping

import numpy as np

from ferjax.convert.mapping import ConversionError

Allowed = Mapping[tuple[str, str], Any]
_PLAIN_KINDS = frozenset("biufcSU")
_KEY_TYPES = frozenset({str, bytes, int, float, bool, type(None)})
_brief = reprlib.Repr()
_brief.maxstring = _brief.maxother = 80


def brief(obj: Any) -> str:
    """A short repr of something read from a file, for error messages (bounded depth and length)."""
    return _brief.repr(obj)


class UnsafePickleError(pickle.UnpicklingError):
    """The file names a global outside the allow-list, or asks for an object array."""


class _ArrayType:
    """Stands for `numpy.ndarray` in a pickle: not callable, accepted only as `_reconstruct`'s
    subtype and as joblib's `subclass` (calling the real type builds arrays of file pointers)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "numpy.ndarray (token)"


NDARRAY = _ArrayType()


def _plain(dt: Any) -> np.dtype:
    """`dt` if it is a plain numeric/bytes/str dtype, as numpy's own parser gives it; else refused."""
    if not isinstance(dt, np.dtype):
        raise UnsafePickleError(f"expected a numpy dtype, got {_brief.repr(dt)}")
    if dt.hasobject or dt.kind not in _PLAIN_KINDS:
        raise UnsafePickleError(f"refusing dtype {dt!r}: object arrays (and other non-plain dtypes) can "
                                f"hold arbitrary objects or pointers; expected bool, int, float, complex, "
                                f"bytes or str")
    if dt.fields is not None or dt.subdtype is not None or dt.itemsize == 0:
        raise UnsafePickleError(f"refusing dtype {dt!r}: only plain dtypes (no fields, subarrays or zero size)")
    canon = np.dtype(dt.str)
    if canon != dt or canon.itemsize != dt.itemsize or canon.flags != dt.flags:
        raise UnsafePickleError(f"refusing dtype {dt!r}: its state (itemsize {dt.itemsize}, flags {dt.flags}) "
                                f"differs from what {dt.str!r} means")
    return canon


def _dtype(obj: Any, align: Any = False, copy: Any = False) -> np.dtype:
    """`numpy.dtype(spec, align, copy)` for a short type string or a dtype; plain dtypes only."""
    if not (isinstance(obj, np.dtype) or (isinstance(obj, (str, bytes)) and len(obj) <= 64)):
        raise UnsafePickleError(f"refusing numpy.dtype({_brief.repr(obj)}): expected a type string or a dtype")
    if type(align) not in (bool, int) or type(copy) not in (bool, int):
        raise UnsafePickleError("numpy.dtype: align and copy must be booleans")
    return _plain(np.dtype(obj.decode("ascii") if isinstance(obj, bytes) else obj))


def _shape(obj: Any) -> tuple[int, ...]:
    """A shape as a tuple of non-negative Python ints (at most numpy's 64 dimensions)."""
    if not isinstance(obj, (tuple, list)) or len(obj) > 64 or not all(type(n) is int and n >= 0 for n in obj):
        raise UnsafePickleError(f"expected an array shape (non-negative ints), got {_brief.repr(obj)}")
    return tuple(obj)


def _from_bytes(raw: Any, dtype: np.dtype, shape: tuple[int, ...], fortran: bool, what: str) -> np.ndarray:
    """A new array owning a copy of `raw`, which must hold exactly shape x itemsize bytes."""
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise UnsafePickleError(f"{what}: array data must be bytes, got {type(raw).__name__}")
    count = math.prod(shape)
    nbytes = memoryview(raw).nbytes
    if nbytes != count * dtype.itemsize:
        raise ConversionError(f"{what}: {nbytes} bytes of data for an array of shape {shape} and dtype "
                              f"{dtype}, which needs {count * dtype.itemsize}")
    if count == 0:
        return np.empty(shape, dtype)
    return np.frombuffer(raw, dtype, count).reshape(shape, order="F" if fortran else "C").copy(order="K")


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """`numpy.core.multiarray._reconstruct`: the empty array a BUILD then fills."""
    if subtype is not NDARRAY:
        raise UnsafePickleError(f"refusing array subtype {_brief.repr(subtype)}: only numpy.ndarray")
    shape = _shape(shape)
    if math.prod(shape) != 0:
        raise UnsafePickleError(f"_reconstruct of shape {shape}: numpy pickles start from an empty array")
    return np.empty(shape, _dtype(dtype))


def _scalar(dtype: Any, data: Any = None) -> Any:
    """`numpy.core.multiarray.scalar(dtype, bytes)`: one numpy scalar."""
    dtype = _dtype(dtype)
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise UnsafePickleError(f"numpy scalar of {dtype}: expected {dtype.itemsize} bytes of data")
    return np.frombuffer(data, dtype)[0]


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """Protocol-5 pickles of arrays: `numpy._core.numeric._frombuffer`."""
    if order not in ("C", "F"):
        raise UnsafePickleError(f"numpy array order {_brief.repr(order)}: expected 'C' or 'F'")
    return _from_bytes(buf, _dtype(dtype), _shape(shape), order == "F", "numpy _frombuffer")


def _encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """`_codecs.encode` as protocol-2 pickles use it for bytes; only latin-1 is accepted."""
    try:
        latin1 = isinstance(encoding, str) and codecs.lookup(encoding).name == "iso8859-1"
    except LookupError:
        latin1 = False
    if not latin1 or not isinstance(text, str):
        raise UnsafePickleError(f"refusing _codecs.encode with encoding {_brief.repr(encoding)}")
    return text.encode("latin-1")


def _array_from_state(state: Any, source: str) -> np.ndarray:
    """The array `ndarray.__setstate__(state)` would make, as a new array; plain dtypes only."""
    if not isinstance(state, tuple) or len(state) not in (4, 5):
        raise UnsafePickleError(f"{source}: an array's state must be (version,) shape, dtype, fortran, data")
    shape, dtype, fortran, raw = state[-4:]
    if type(fortran) not in (bool, int):
        raise UnsafePickleError(f"{source}: an array's fortran flag must be a boolean")
    if isinstance(raw, str):  # Python 2 pickles: bytes decoded as latin-1, as numpy reads them
        raw = raw.encode("latin-1")
    return _from_bytes(raw, _plain(dtype), _shape(shape), bool(fortran), f"{source}: array state")


def _dtype_from_state(inst: np.dtype, state: Any, source: str) -> np.dtype:
    """The dtype `inst.__setstate__(state)` would make, as a new dtype: a plain dtype's state may only
    restate its size, alignment and flags and choose a byte order. numpy's own `__setstate__` is
    never called: it accepts fields past the item's end, sizes and object flags it does not check."""
    inst = _plain(inst)
    if not (isinstance(state, tuple) and len(state) == 8 and all(type(x) is int for x in state[5:8])
            and type(state[1]) is str and state[1] in ("<", ">", "|", "=") and all(x is None for x in state[2:5])
            and state[5] in (-1, inst.itemsize) and state[6] in (-1, inst.alignment) and state[7] == inst.flags):
        raise UnsafePickleError(f"{source}: refusing dtype state {_brief.repr(state)} for {inst}: only a plain "
                                f"dtype's own size, alignment and flags, and a byte order")
    return _plain(inst.newbyteorder(state[1]) if state[1] in ("<", ">") else inst)


class _JoblibArray:
    """Stand-in for joblib's NumpyArrayWrapper; the array's bytes follow it in the stream."""


def _read_joblib_array(wrapper: _JoblibArray, read: Callable[[int], bytes], source: str) -> np.ndarray:
    """The array whose bytes follow a joblib wrapper in the stream (`read` never returns more than
    the file holds)."""
    d = wrapper.__dict__
    if d.get("subclass", NDARRAY) is not NDARRAY:
        raise UnsafePickleError(f"{source}: refusing joblib array of subclass {_brief.repr(d.get('subclass'))}")
    if "dtype" not in d or "shape" not in d or d.get("order", "C") not in ("C", "F"):
        raise ConversionError(f"{source}: a joblib array wrapper without dtype, shape and order C/F")
    dtype, shape = _dtype(d["dtype"]), _shape(d["shape"])
    if d.get("numpy_array_alignment_bytes") is not None:
        pad = read(1)
        read(pad[0] if pad else 0)
    nbytes = math.prod(shape) * dtype.itemsize
    buf = read(nbytes)
    if len(buf) != nbytes:
        raise ConversionError(f"{source}: truncated joblib array: expected {nbytes} bytes, got {len(buf)}")
    if d.get("order") == "F":
        return _from_bytes(buf, dtype, shape[::-1], False, source).T.copy()
    return _from_bytes(buf, dtype, shape, False, source)


NUMPY: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): NDARRAY,  # a token: only _reconstruct and joblib's wrapper accept it
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


class _Memo(dict):
    """The unpickler's memo, remembering where each object is stored so a rebuilt one replaces it."""

    def __init__(self) -> None:
        super().__init__()
        self._keys: dict[int, list[Any]] = {}

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self._keys.setdefault(id(value), []).append(key)

    def replace(self, old: Any, new: Any) -> None:
        for key in self._keys.pop(id(old), ()):
            if self.get(key) is old:
                self[key] = new


class RestrictedUnpickler(pickle._Unpickler):  # the pure-Python unpickler lets opcodes be extended
    """Unpickler whose globals are looked up in `allowed` only; everything else is refused."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, fh: io.BufferedIOBase, allowed: Allowed, source: str,
                 persistent_load: Callable[[Any], Any] | None = None):
        super().__init__(fh)
        self._fh, self._allowed, self._source = fh, allowed, source
        self._names = {id(v): ".".join(k) for k, v in allowed.items()}
        self._callables = {id(v) for v in allowed.values() if callable(v)}
        self.memo = _Memo()
        start = fh.tell()
        self._end = fh.seek(0, io.SEEK_END)
        fh.seek(start)
        self._file_read = self._bounded_read
        if persistent_load is not None:
            self.persistent_load = persistent_load

    def _bounded_read(self, n: int = -1) -> bytes:
        """Reads at most what the file still holds: a declared length never allocates more."""
        left = max(self._end - self._fh.tell(), 0)
        return self._fh.read(left if n is None or n < 0 else min(n, left))

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self._source}: refusing to load global {module}.{name}: this reader rebuilds arrays "
                f"only and admits exactly {sorted('.'.join(k) for k in self._allowed)}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._source}: unexpected persistent id {_brief.repr(pid)}")

    def _check_call(self, func: Any, args: Any, opcode: str, new: bool = False) -> None:
        """Only allow-listed callables (classes, for NEWOBJ) may be called; tokens never. An ordered
        dict is made empty (its items come by SETITEMS, where keys are checked)."""
        if id(func) not in self._callables or (new and not isinstance(func, type)):
            what = self._names.get(id(func), type(func).__name__)
            raise UnsafePickleError(f"{self._source}: refusing {opcode} of {what}: it cannot be called here "
                                    f"(numpy.ndarray may only be passed to _reconstruct)")
        if func is collections.OrderedDict and args:
            raise UnsafePickleError(f"{self._source}: refusing {opcode} of collections.OrderedDict with arguments")

    def _load_reduce(self) -> None:
        self._check_call(self.stack[-2], self.stack[-1], "REDUCE")
        pickle._Unpickler.load_reduce(self)

    def _load_newobj(self) -> None:
        self._check_call(self.stack[-2], self.stack[-1], "NEWOBJ", new=True)
        pickle._Unpickler.load_newobj(self)

    def _load_newobj_ex(self) -> None:
        self._check_call(self.stack[-3], self.stack[-2] or self.stack[-1], "NEWOBJ_EX", new=True)
        pickle._Unpickler.load_newobj_ex(self)

    def _instantiate(self, klass: Any, args: list) -> None:  # INST and OBJ
        self._check_call(klass, args, "INST/OBJ")
        super()._instantiate(klass, args)

    def _scalar_keys(self, keys: Any) -> None:
        """Dict keys and set items must be scalars: hashing a deeply nested tuple recurses in C."""
        for k in keys:
            if type(k) not in _KEY_TYPES:
                raise UnsafePickleError(f"{self._source}: refusing a dict key or set item of type "
                                        f"{type(k).__name__}: weight files key by strings and numbers")

    def _load_setitem(self) -> None:
        self._scalar_keys(self.stack[-2:-1])
        pickle._Unpickler.load_setitem(self)

    def _load_setitems(self) -> None:  # after MARK, self.stack holds the marked items: key, value, ...
        self._scalar_keys(self.stack[::2])
        pickle._Unpickler.load_setitems(self)

    def _load_dict(self) -> None:
        self._scalar_keys(self.stack[::2])
        pickle._Unpickler.load_dict(self)

    def _load_frozenset(self) -> None:
        self._scalar_keys(self.stack)
        pickle._Unpickler.load_frozenset(self)

    def _load_additems(self) -> None:
        self._scalar_keys(self.stack)
        pickle._Unpickler.load_additems(self)

    def _load_bytearray8(self) -> None:
        # The stock opcode allocates the declared length before reading: a 20-byte file could ask for 8 GB.
        n, = struct.unpack("<Q", self.read(8))
        data = self.read(n)
        if len(data) != n:
            raise ConversionError(f"{self._source}: BYTEARRAY8 of {n} bytes, {len(data)} left in the file")
        self.append(bytearray(data))

    def _load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if type(inst) is np.ndarray:
            new = _array_from_state(state, self._source)
        elif isinstance(inst, np.dtype):
            new = _dtype_from_state(inst, state, self._source)
        elif type(inst) in (_JoblibArray, collections.OrderedDict) and isinstance(state, dict) \
                and all(type(k) is str for k in state):
            inst.__dict__.update(state)
            new = _read_joblib_array(inst, self._bounded_read, self._source) if type(inst) is _JoblibArray else inst
        else:
            raise UnsafePickleError(f"{self._source}: refusing to set the state of "
                                    f"{self._names.get(id(inst), type(inst).__name__)}: only arrays, dtypes, "
                                    f"ordered dicts and joblib array wrappers take a state (as a dict)")
        if new is not inst:
            self.stack[-1] = new
            self.memo.replace(inst, new)

    dispatch[pickle.REDUCE[0]] = _load_reduce
    dispatch[pickle.NEWOBJ[0]] = _load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = _load_newobj_ex
    dispatch[pickle.BYTEARRAY8[0]] = _load_bytearray8
    dispatch[pickle.BUILD[0]] = _load_build
    dispatch[pickle.SETITEM[0]] = _load_setitem
    dispatch[pickle.SETITEMS[0]] = _load_setitems
    dispatch[pickle.DICT[0]] = _load_dict
    dispatch[pickle.FROZENSET[0]] = _load_frozenset
    dispatch[pickle.ADDITEMS[0]] = _load_additems


_CORRUPT = (EOFError, pickle.UnpicklingError, IndexError, KeyError, struct.error, ValueError, TypeError,
            AttributeError, OverflowError, LookupError, RecursionError)


def loads(data: bytes | io.BufferedIOBase, allowed: Allowed, source: str = "<bytes>",
          persistent_load: Callable[[Any], Any] | None = None) -> Any:
    """Unpickles one object from bytes or an open, seekable binary file, admitting only `allowed`
    globals. Raises UnsafePickleError for what the allow-list refuses, ConversionError for a
    truncated or malformed pickle (with the byte offset)."""
    fh = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    try:
        return RestrictedUnpickler(fh, allowed, source, persistent_load).load()
    except (UnsafePickleError, ConversionError) as e:
        if str(e).startswith(source):
            raise
        raise type(e)(f"{source}: {e}") from e  # a stand-in's refusal, named by file
    except _CORRUPT as e:
        raise ConversionError(f"{source}: truncated or corrupt pickle at byte {fh.tell()}: "
                              f"{type(e).__name__}: {_brief.repr(str(e))[1:-1]}") from e


def load(path: str | os.PathLike, allowed: Allowed = NUMPY) -> Any:
    """Unpickles a whole file with `allowed` globals only."""
    with open(path, "rb") as fh:
        return loads(fh, allowed, os.fspath(path))
