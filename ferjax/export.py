"""Exports a registered pretrained classifier to ONNX, with a model card beside the file.

    ferjax export MODEL --format onnx --out FILE.onnx [--int8]
    ferjax.export.to_onnx(MODEL, "FILE.onnx", int8=False)

The graph is what `ferjax.inference.Predictor` computes: the model's own input scaling, the network
(batch norm in inference mode, dropout off, logit adjustment already in the output bias of the
`*_adjusted` weights) and a softmax. Input `faces`: [N, 48, 48, 1] float32 grey levels 0..255 (NHWC,
N symbolic); first output `probabilities`: [N, 7] in FER2013 order (`EMOTIONS`). Weights are embedded
(one self-contained file). The conversion is jax2onnx's (the `onnx` extra); `--int8` quantises it
with ONNX Runtime's dynamic quantiser (int8 weights, activations quantised per call, so an int8
model's output for one face depends slightly on the other faces of its batch). The card
(`FILE.json`) gives the labels, input layout, normalisation, the .onnx's sha256, the source model
and its weights' sha256, and the ferjax version that wrote it.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ferjax import __version__
from ferjax.atomic import atomic_write_bytes, file_sha256
from ferjax.data.records import EMOTIONS
from ferjax.images import face_batch
from ferjax.jax_setup import CACHE_ENV

FORMATS = ("onnx",)
SUFFIX = ".onnx"
OPSET = 18  # the lowest opset whose operators cover every shipped model's graph (BitwiseOr: 18)
INPUT_NAME, OUTPUT_NAME, BATCH_DIM = "faces", "probabilities", "N"
INSTALL_HINT = "ONNX export needs the onnx extra: pip install 'ferjax[onnx]' (jax2onnx, onnx, onnxruntime)"
_log = logging.getLogger(__name__)


def card_path(onnx_path: str | os.PathLike) -> Path:
    """The model card's path beside `onnx_path` (same name, .json); the file must end in .onnx."""
    onnx_path = Path(onnx_path)
    if onnx_path.suffix != SUFFIX or onnx_path.name == SUFFIX:
        raise ValueError(f"export path {onnx_path}: expected a file name ending in {SUFFIX} "
                         f"(its model card is written beside it as {onnx_path.with_suffix('.json').name})")
    return onnx_path.with_suffix(".json")


def shipped_models() -> list[str]:
    """Registered pretrained models whose weights file is present (the shipped ones, and e.g.
    `vggface` once converted)."""
    from ferjax.registry import PRETRAINED  # noqa: PLC0415

    return [name for name in PRETRAINED.names() if PRETRAINED.get(name)().weights.is_file()]


def _require_onnx() -> None:
    try:
        import jax2onnx  # noqa: F401, PLC0415
        import onnx  # noqa: F401, PLC0415
        import onnxruntime  # noqa: F401, PLC0415
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT}; missing: {e.name}") from e


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def probabilities_fn(model: Any, variables: Any):
    """The function Predictor jits: grey faces [N,48,48,1] 0..255 -> softmax probabilities [N,7]."""
    import jax  # noqa: PLC0415

    return lambda faces: jax.nn.softmax(model.apply(variables, faces, train=False), axis=-1)


_settled = False


def _settle_converter() -> None:
    """jax2onnx 0.17.1 lowers strided slices with a symbolic batch one way (Slice) in the first
    conversion of a process and another way (GatherND) in every later one, so mini_xception's
    file depended on what the process had converted before. One tiny conversion first makes every
    export the same bytes (the later form, whose equality docs/deploy.md measures)."""
    global _settled
    if not _settled:
        import jax2onnx  # noqa: PLC0415

        jax2onnx.to_onnx(lambda x: x[:, 1:3] * 2.0, inputs=[(BATCH_DIM, 8, 8, 1)], opset=OPSET)
        _settled = True


def build(name: str, opset: int = OPSET) -> tuple[Any, dict]:
    """(float32 onnx.ModelProto, source card) for registered pretrained model `name`."""
    _require_onnx()
    import jax2onnx  # noqa: PLC0415
    import onnx  # noqa: PLC0415

    from ferjax import pretrained  # noqa: PLC0415

    _settle_converter()
    model, variables, source_card = pretrained.load(name)
    proto = jax2onnx.to_onnx(probabilities_fn(model, variables), inputs=[(BATCH_DIM, 48, 48, 1)],
                             model_name=name, opset=opset, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
    # jax2onnx annotates intermediate values with shapes, some of them in NHWC order for tensors
    # its layout pass made NCHW (ONNX Runtime then warns "Error merging shape info"); the
    # annotations are optional, the inputs' and outputs' shapes stay.
    del proto.graph.value_info[:]
    onnx.checker.check_model(proto, full_check=True)
    return proto, source_card


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """ONNX Runtime's quantiser logs a warning per tensor it leaves in float on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_int8(proto: Any) -> Any:
    """Dynamic int8 quantisation of a float model; returns the new proto. First ONNX Runtime's
    `quant_pre_process` (shape inference and graph optimisation: jax2onnx's graphs transpose the
    convolution kernels at run time, and only constant kernels, folded here, are stored as int8),
    then `quantize_dynamic` with its defaults (int8 weights per tensor, activations quantised per
    call)."""
    import onnx  # noqa: PLC0415
    from onnxruntime.quantization import quantize_dynamic  # noqa: PLC0415
    from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="ferjax-int8-") as tmp:
        src, pre, dst = Path(tmp) / "float.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(proto.SerializeToString())
        with _quiet_root_logger():
            quant_pre_process(src, pre)
            quantize_dynamic(pre, dst)
        return onnx.load_model(dst)


def _card(name: str, source_card: dict, onnx_bytes: bytes, int8: bool, opset: int) -> dict:
    from ferjax import pretrained  # noqa: PLC0415

    labels = list(source_card.get("classes") or EMOTIONS)
    return {
        "name": f"{name}_int8" if int8 else name,
        "format": "onnx",
        "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "bytes": len(onnx_bytes),
        "labels": labels,
        "input": {"name": INPUT_NAME, "shape": [BATCH_DIM, 48, 48, 1], "dtype": "float32", "layout": "NHWC",
                  "content": "48x48 grey face crops (the crop ferjax's Analyzer makes), one channel"},
        "normalisation": "none outside the graph: feed grey levels 0..255 as float32; the model's own "
                         "scaling is inside the graph",
        "outputs": [{"name": OUTPUT_NAME, "shape": [BATCH_DIM, len(labels)], "dtype": "float32",
                     "content": "softmax probabilities in the order of `labels` (FER2013's)"}],
        "logit_adjustment": ("in the weights' output bias (inside the graph)" if "logit_adjustment" in source_card
                             else "none"),
        "quantization": ("dynamic int8: onnxruntime.quantization quant_pre_process, then quantize_dynamic "
                         "(defaults): int8 weights, activations quantised per call, so a face's output "
                         "depends slightly on the rest of its batch" if int8 else "none (float32)"),
        "opset": opset,
        "source_model": name,
        "source_classifier": source_card.get("classifier"),
        "source_weights_sha256": pretrained.weights_sha256(name),
        "source_accuracy": source_card.get("accuracy"),
        "source_test_split": source_card.get("test_split"),
        "converter": {"jax2onnx": _version("jax2onnx"), "onnx": _version("onnx"),
                      "onnxruntime": _version("onnxruntime"), "jax": _version("jax"), "flax": _version("flax")},
        "ferjax_version": __version__,
        "command": f"ferjax export {name} --format onnx --out FILE{SUFFIX}" + (" --int8" if int8 else ""),
    }


def to_onnx(name: str, path: str | os.PathLike, int8: bool = False, opset: int = OPSET) -> dict:
    """Writes registered pretrained model `name` as a self-contained ONNX file at `path` (ending in
    .onnx) and its model card beside it (`card_path`); returns the card. `int8`: dynamic int8
    quantisation. Refuses a path not ending in .onnx before any work."""
    path = Path(path)
    card_file = card_path(path)
    proto, source_card = build(name, opset)
    if int8:
        proto = quantize_int8(proto)
    meta = {"ferjax_source_model": name, "ferjax_labels": json.dumps(list(source_card.get("classes") or EMOTIONS)),
            "ferjax_input": f"{INPUT_NAME} [{BATCH_DIM},48,48,1] float32 grey 0..255",
            "ferjax_version": __version__}
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"ferjax {name}: {OUTPUT_NAME} = softmax(classifier({INPUT_NAME})), FER2013 label order"
    data = proto.SerializeToString()
    card = _card(name, source_card, data, int8, opset)
    atomic_write_bytes(path, data)
    atomic_write_bytes(card_file, (json.dumps(card, indent=2) + "\n").encode())
    return card


def session(path: str | os.PathLike, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session for an exported file."""
    _require_onnx()
    import onnxruntime as ort  # noqa: PLC0415

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    # Idle intra-op threads sleep instead of spinning: in the video loop the classifier alternates
    # with OpenCV's detector, whose threads a spinning pool would starve (backend_bench measures it).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])


def predict(sess: Any, faces: np.ndarray, batch: int = 64) -> np.ndarray:
    """Probabilities [N,7] of an exported model for grey faces [N,48,48(,1)] 0..255, `batch` at a time."""
    faces = np.asarray(faces, np.float32)
    if faces.ndim == 3:
        faces = faces[..., None]
    if faces.ndim != 4 or faces.shape[1:] != (48, 48, 1):
        raise ValueError(f"expected faces of shape [N,48,48] or [N,48,48,1], got {faces.shape}")
    out = [sess.run([OUTPUT_NAME], {INPUT_NAME: faces[i:i + batch]})[0] for i in range(0, len(faces), batch)]
    return np.concatenate(out, 0) if out else np.zeros((0, len(EMOTIONS)), np.float32)


class OnnxPredictor:
    """`ferjax.inference.Predictor`'s interface on ONNX Runtime (CPU): classifies [N,48,48] or
    [N,48,48,1] grey faces (0..255) into class probabilities with an exported float32 file. The
    batch is symbolic, so nothing is padded; batches larger than the largest bucket are split, as
    Predictor does. The session is safe to share between threads."""

    backend = "onnxruntime-cpu"  # what classifies, for benchmark rows

    def __init__(self, path: str | os.PathLike, name: str, class_names: Sequence[str] | None = None,
                 buckets: Sequence[int] | None = None, threads: int | None = None):
        from ferjax.inference import DEFAULT_BUCKETS  # noqa: PLC0415  (it imports JAX)

        self.path, self.name = Path(path), name
        self.class_names = tuple(class_names) if class_names else None
        self.buckets = tuple(sorted(set(int(b) for b in (buckets or DEFAULT_BUCKETS))))
        self.session = session(path, threads)

    def warmup(self) -> float:
        import time  # noqa: PLC0415

        start = time.perf_counter()
        for b in self.buckets:
            self(np.zeros((b, 48, 48, 1), np.float32))
        return time.perf_counter() - start

    def __call__(self, faces: np.ndarray) -> np.ndarray:
        return predict(self.session, face_batch(faces), batch=self.buckets[-1])


def cache_dir() -> Path:
    """Where exports made on first use live: $FERJAX_CACHE_DIR/onnx (default ~/.cache/ferjax/onnx)."""
    return Path(os.environ.get(CACHE_ENV, "~/.cache/ferjax")).expanduser() / "onnx"


def cached_onnx(name: str) -> Path:
    """The float32 export of registered pretrained model `name` in `cache_dir()`, keyed by its
    weights' sha256 (retrained weights under the same name get a new file); exported on first
    use, and again when the file no longer matches the sha256 its card records."""
    from ferjax import pretrained  # noqa: PLC0415

    path = cache_dir() / f"{name}-{pretrained.weights_sha256(name)}{SUFFIX}"
    card = card_path(path)
    try:
        ok = path.is_file() and json.loads(card.read_text())["sha256"] == file_sha256(path)
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        _log.info("exporting %s to ONNX at %s (first use)", name, path)
        to_onnx(name, path)
    return path


def load_onnx_predictor(name: str | None = None, buckets: Sequence[int] | None = None) -> OnnxPredictor:
    """An OnnxPredictor for a registered pretrained model (default: the model shipped with ferjax),
    exported into ferjax's cache on first use (`cached_onnx`)."""
    from ferjax import pretrained  # noqa: PLC0415

    name = name or pretrained.DEFAULT
    path = cached_onnx(name)
    return OnnxPredictor(path, name, json.loads(card_path(path).read_text())["labels"], buckets)


def compare(reference: np.ndarray, exported: np.ndarray, labels: np.ndarray | None = None) -> dict:
    """Agreement of two [N,7] probability arrays: argmax agreement, the largest absolute
    difference, and the accuracy of each against `labels` when given."""
    reference, exported = np.asarray(reference, np.float64), np.asarray(exported, np.float64)
    out = {"n": int(len(reference)),
           "argmax_agreement": float(np.mean(reference.argmax(1) == exported.argmax(1))) if len(reference) else 1.0,
           "max_abs_diff": float(np.abs(reference - exported).max()) if len(reference) else 0.0}
    if labels is not None:
        labels = np.asarray(labels)
        out["accuracy_reference"] = float(np.mean(reference.argmax(1) == labels))
        out["accuracy_exported"] = float(np.mean(exported.argmax(1) == labels))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="ferjax export",
        description="Export a registered pretrained classifier (see `ferjax list`) as one self-contained "
                    "ONNX file: input faces [N,48,48,1] float32 grey 0..255, output probabilities [N,7] "
                    "in FER2013 order; its model card is written beside it (FILE.json). Needs the onnx "
                    "extra: pip install 'ferjax[onnx]'.")
    p.add_argument("model", help="registered pretrained model name (e.g. fer2013_distilled_adjusted)")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="output format (default: onnx)")
    p.add_argument("--out", required=True, type=Path, help="output file, ending in .onnx")
    p.add_argument("--int8", action="store_true",
                   help="dynamic int8 quantisation with ONNX Runtime's quantiser (smaller; slightly different outputs)")
    p.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    a = p.parse_args(argv)
    try:
        card_path(a.out)
        card = to_onnx(a.model, a.out, int8=a.int8, opset=a.opset)
    except (ImportError, ValueError, FileNotFoundError, KeyError) as e:
        print(f"ferjax export: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"onnx": str(a.out), "card": str(card_path(a.out)), "sha256": card["sha256"],
                      "bytes": card["bytes"], "source_model": card["source_model"],
                      "quantization": "int8" if a.int8 else "none"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
