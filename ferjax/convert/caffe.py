"""Caffe `.caffemodel` weights read without Caffe or protobuf: a minimal wire-format reader.

Understands a NetParameter's current `layer` (field 100, LayerParameter: name 1, blobs 7), the
legacy V1 `layers` (field 2, V1LayerParameter: name 4, blobs 6) that VGG_FACE.caffemodel uses,
and V0 layers nested in V1 (field 1: name 1, blobs 50). A BlobProto's shape is its `shape`
(field 7) or the legacy num/channels/height/width (1-4); data is float (5) or double (8),
packed or not. Errors name the message and byte offset.
"""
from __future__ import annotations

import math
import os
from typing import Iterator

import numpy as np

from ferjax.convert.mapping import ConversionError

_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


class _Reader:
    """Walks protobuf fields of one buffer; every error names the file, message and offset."""

    def __init__(self, buf: memoryview, source: str):
        self.buf, self.source = buf, source

    def _fail(self, what: str, at: int, msg: str) -> ConversionError:
        return ConversionError(f"{self.source}: {msg} at byte {at} in {what} (truncated file, or not a "
                               f"Caffe model)")

    def varint(self, i: int, end: int, what: str) -> tuple[int, int]:
        result = shift = 0
        start = i
        while True:
            if i >= end:
                raise self._fail(what, start, "varint runs past the end")
            b = self.buf[i]
            i += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result, i
            shift += 7
            if shift > 63:
                raise self._fail(what, start, "varint longer than 10 bytes")

    def fields(self, start: int, end: int, what: str) -> Iterator[tuple[int, int, int | tuple[int, int]]]:
        """(field number, wire type, value) with value an int or a (start, end) byte range."""
        i = start
        while i < end:
            at = i
            key, i = self.varint(i, end, what)
            field, wire = key >> 3, key & 7
            if field == 0:
                raise self._fail(what, at, "field number 0")
            if wire == _VARINT:
                value, i = self.varint(i, end, what)
            elif wire in (_FIXED64, _FIXED32, _BYTES):
                if wire == _BYTES:
                    n, i = self.varint(i, end, what)
                else:
                    n = 8 if wire == _FIXED64 else 4
                if i + n > end:
                    raise self._fail(what, at, f"field {field} needs {n} bytes, {end - i} left")
                value = (i, i + n)
                i += n
            else:
                raise self._fail(what, at, f"field {field} has unsupported wire type {wire}")
            yield field, wire, value


def _varints(r: _Reader, wire: int, value, what: str) -> list[int]:
    """Packed (one byte range) or unpacked (one element) repeated varints, as Python ints (a file's
    dimension may be any 64-bit number; numpy's int64 would overflow or wrap)."""
    if wire == _VARINT:
        return [value]
    a, b = value
    out, i = [], a
    while i < b:
        v, i = r.varint(i, b, what)
        out.append(v)
    return out


def _numbers(r: _Reader, wire: int, value, dtype: str, what: str) -> np.ndarray:
    """Packed (one byte range) or unpacked (one element) repeated float/double values."""
    if wire == _VARINT:
        raise ConversionError(f"{r.source}: {what}: a varint where {dtype} values belong")
    a, b = value
    item = np.dtype(dtype).itemsize
    if (b - a) % item:
        raise ConversionError(f"{r.source}: {what}: {b - a} bytes is not a whole number of {dtype}")
    return np.frombuffer(r.buf[a:b], dtype)


def _blob(r: _Reader, start: int, end: int, what: str) -> np.ndarray:
    legacy = {1: 0, 2: 0, 3: 0, 4: 0}
    shape, chunks = None, []
    for field, wire, value in r.fields(start, end, what):
        if field == 7 and wire == _BYTES:
            shape = tuple(d for f, w, v in r.fields(*value, what + ".shape") if f == 1
                          for d in _varints(r, w, v, what + ".shape"))
        elif field in legacy and wire == _VARINT:
            legacy[field] = value
        elif field == 5:
            chunks.append(_numbers(r, wire, value, "<f4", what + ".data"))
        elif field == 8:
            chunks.append(_numbers(r, wire, value, "<f8", what + ".double_data"))
    data = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if shape is None:
        shape = tuple(legacy.values()) if any(legacy.values()) else (data.size,)
    if len(shape) > 32 or any(d >= 2**31 for d in shape):
        raise ConversionError(f"{r.source}: {what}: shape {shape} has over 32 dimensions or one of 2**31 or more")
    if math.prod(shape) != data.size:
        raise ConversionError(f"{r.source}: {what}: shape {shape} needs {math.prod(shape)} values, "
                              f"the blob holds {data.size} (truncated?)")
    return data.reshape(shape)


# (field of the layer list in NetParameter, field of the name, field of the blobs, format)
_LAYER_KINDS = {100: (1, 7, "layer"), 2: (4, 6, "V1 layers")}


def read(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """{layer name: [blobs]} of every layer with weights, in file order."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        r = _Reader(memoryview(f.read()), path)
    layers: dict[str, list[np.ndarray]] = {}
    for field, wire, value in r.fields(0, len(r.buf), "NetParameter"):
        if field not in _LAYER_KINDS or wire != _BYTES:
            continue
        name_field, blob_field, kind = _LAYER_KINDS[field]
        name, blobs, at = None, [], value[0]
        for f, w, v in r.fields(*value, f"{kind} at byte {at}"):
            if f == name_field and w == _BYTES:
                name = bytes(r.buf[v[0]:v[1]]).decode("utf-8", "replace")
            elif f == blob_field and w == _BYTES:
                blobs.append(v)
            elif field == 2 and f == 1 and w == _BYTES:  # a V0 layer inside a V1 entry
                for f0, w0, v0 in r.fields(*v, f"V0 layer at byte {v[0]}"):
                    if f0 == 1 and w0 == _BYTES:
                        name = bytes(r.buf[v0[0]:v0[1]]).decode("utf-8", "replace")
                    elif f0 == 50 and w0 == _BYTES:
                        blobs.append(v0)
        if blobs:
            if not name:
                raise ConversionError(f"{path}: a {kind} entry at byte {at} has weights but no name")
            if name in layers:
                raise ConversionError(f"{path}: layer {name} appears twice")
            layers[name] = [_blob(r, a, b, f"{name}.blobs[{i}]") for i, (a, b) in enumerate(blobs)]
    if not layers:
        raise ConversionError(f"{path}: no layer with weights found: not a Caffe NetParameter (.caffemodel)")
    return layers
