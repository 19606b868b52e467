"""VGG-Face from its three published formats into ferjax's `vggface` classifier.

The Flax model's convention (registry/classifiers.py): RGB input minus VGGFACE_RGB_MEAN, conv
kernels HWIO, fc6 over pool5 flattened in H, W, C order. Caffe's VGG_FACE.caffemodel and
keras-vggface were trained on BGR input, so conv1_1's input channels are reversed; Caffe and
PyTorch flatten pool5 as C, H, W, so fc6's rows are reordered; vgg_face_dag.pth is RGB already.
Layer widths, fc sizes and the input size are read from the file, so reduced-width files convert too.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ferjax.convert import Converted
from ferjax.convert.mapping import ConversionError

CONVS = tuple(f"conv{b}_{i}" for b, n in enumerate((2, 2, 3, 3, 3), 1) for i in range(1, n + 1))
FCS = ("fc6", "fc7", "fc8")


def _kwargs(conv_out: dict[str, int], fc: dict[str, tuple[int, int]], path: str) -> dict:
    """Classifier kwargs (widths, top, sizes, input size) implied by the file's layer shapes."""
    try:
        widths = [conv_out[f"conv{b}_1"] for b in range(1, 6)]
    except KeyError as e:
        raise ConversionError(f"{path}: missing layer {e.args[0]}") from None
    kw = {"widths": widths, "include_top": bool(fc)}
    if fc:
        missing = [n for n in FCS if n not in fc]
        if missing:
            raise ConversionError(f"{path}: missing layer weights {missing} (a file has all of fc6-fc8 or none)")
        cells = fc["fc6"][0] / widths[4]
        side = math.isqrt(int(cells))
        if side * side != cells:
            raise ConversionError(f"{path}: fc6 takes {fc['fc6'][0]} inputs, not pool5's s*s*{widths[4]}")
        kw.update(image_size=32 * side, fc_width=fc["fc6"][1], num_identities=fc["fc8"][1])
    return kw


def _note(kw: dict, bgr: bool, chw: bool) -> str:
    parts = ["conv1_1 input channels reversed (BGR file -> RGB model)" if bgr else "RGB file, channels kept"]
    if kw["include_top"] and chw:
        parts.append("fc6 rows reordered from C,H,W to H,W,C flatten")
    return "; ".join(parts)


def from_keras(path: Path) -> Converted:
    """keras-vggface's rcmalli_vggface_tf_(notop_)vgg16.h5 (BGR, channels_last)."""
    from ferjax.convert import keras_h5  # noqa: PLC0415

    kf = keras_h5.read(path)
    arrays = keras_h5.to_flax(kf, str(path))
    conv_out = {n: kf.layers[n]["kernel"].shape[-1] for n in CONVS if "kernel" in kf.layers.get(n, {})}
    fc = {n: kf.layers[n]["kernel"].shape for n in FCS if "kernel" in kf.layers.get(n, {})}
    kw = _kwargs(conv_out, fc, str(path))
    if "params/conv1_1/kernel" in arrays:
        arrays["params/conv1_1/kernel"] = arrays["params/conv1_1/kernel"][:, :, ::-1, :]
    return Converted(arrays, "vggface", kw, _note(kw, bgr=True, chw=False))


def _from_oihw(layers: dict[str, tuple[np.ndarray, np.ndarray]], path: str, bgr: bool) -> Converted:
    """Conv weights [O,I,kh,kw] and fc weights [O,I] with a C,H,W flatten (Caffe, PyTorch)."""
    arrays: dict[str, np.ndarray] = {}
    conv_out = {n: w.shape[0] for n, (w, _) in layers.items() if n in CONVS and w.ndim == 4}
    fc = {n: (int(np.prod(w.shape[1:])), w.shape[0]) for n, (w, _) in layers.items() if n in FCS}
    kw = _kwargs(conv_out, fc, path)
    for name, (w, b) in layers.items():
        if name in CONVS:
            if w.ndim != 4:
                raise ConversionError(f"{path}: {name} weight has shape {w.shape}, expected [O, I, kh, kw]")
            k = w.transpose(2, 3, 1, 0)
            arrays[f"params/{name}/kernel"] = k[:, :, ::-1, :] if name == "conv1_1" and bgr else k
        elif name == "fc6" and kw["include_top"]:
            side, c = kw["image_size"] // 32, kw["widths"][4]
            w = w.reshape(w.shape[0], c, side, side).transpose(2, 3, 1, 0).reshape(-1, w.shape[0])
            arrays["params/fc6/kernel"] = w
        else:  # fc7, fc8, or a layer the model lacks (the mapping step names it)
            arrays[f"params/{name}/kernel"] = w.reshape(w.shape[0], -1).T
        if b is not None:
            arrays[f"params/{name}/bias"] = b.reshape(-1)
    return Converted(arrays, "vggface", kw, _note(kw, bgr=bgr, chw=True))


def from_caffe(path: Path) -> Converted:
    """VGG_FACE.caffemodel (BGR input; V1 `layers` or current `layer`)."""
    from ferjax.convert import caffe  # noqa: PLC0415

    layers = {}
    for name, blobs in caffe.read(path).items():
        if len(blobs) not in (1, 2):
            raise ConversionError(f"{path}: layer {name} has {len(blobs)} blobs, expected weight (+ bias)")
        w = blobs[0]
        if name in FCS and w.ndim > 2:
            w = w.reshape(w.shape[-2], w.shape[-1])  # legacy InnerProduct blobs are [1, 1, O, I]
        layers[name] = (w, blobs[1] if len(blobs) == 2 else None)
    return _from_oihw(layers, os.fspath(path), bgr=True)


def from_pytorch(path: Path) -> Converted:
    """vgg_face_dag.pth (RGB input, mean in its meta = VGGFACE_RGB_MEAN): keys conv1_1.weight .. fc8.bias."""
    from ferjax.convert import torch_pth  # noqa: PLC0415

    state = torch_pth.read(path)
    layers: dict[str, list] = {}
    for key, a in state.items():
        name, _, leaf = key.rpartition(".")
        if leaf not in ("weight", "bias") or not name:
            raise ConversionError(f"{path}: key {key!r} is not <layer>.weight or <layer>.bias")
        layers.setdefault(name, [None, None])[leaf == "bias"] = a
    for name, (w, _) in layers.items():
        if w is None:
            raise ConversionError(f"{path}: {name}.bias without {name}.weight")
    return _from_oihw({n: (w, b) for n, (w, b) in layers.items()}, os.fspath(path), bgr=False)
