"""ONNX export equality on FER2013 PrivateTest (3,589 faces): the figures on docs/deploy.md.

    nice python tools/onnx_equality.py [--fer2013-path=../shared/data/fer2013] [--models=a,b] [--json=FILE]

For each shipped classifier (`ferjax.export.shipped_models()`): exports it as float32 and as int8
(`ferjax.export.to_onnx`) into a temporary folder, runs the JAX Predictor (the default batch
buckets) and ONNX Runtime (CPU; float32 in batches of 64; int8 one face per call, so that no face's
activation scale depends on others, and in batches of 64 for comparison) on every PrivateTest face,
and prints float32 argmax agreement and max |probability difference| against JAX, and the
accuracies of JAX, float32 ONNX and int8 ONNX. Prints a Markdown table and, with --json, writes
every figure.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ferjax import export, pretrained
from ferjax.data import fer2013
from ferjax.inference import Predictor


def private_test(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(faces [N,48,48,1] float32, labels [N]) of the test split (PrivateTest), in file order."""
    records = [r for r in fer2013.iter_records(fer2013.find_source(path)) if r.split == "test"]
    return np.stack([r.image for r in records]).astype(np.float32), np.array([r.label for r in records])


def measure(name: str, faces: np.ndarray, labels: np.ndarray, folder: Path) -> dict:
    start = time.perf_counter()
    float_path, int8_path = folder / f"{name}.onnx", folder / f"{name}_int8.onnx"
    float_card = export.to_onnx(name, float_path)
    int8_card = export.to_onnx(name, int8_path, int8=True)
    model, variables, card = pretrained.load(name)
    reference = Predictor(model, variables, class_names=card.get("classes"))(faces)
    float_probs = export.predict(export.session(float_path), faces, batch=64)
    int8_sess = export.session(int8_path)
    int8_probs = export.predict(int8_sess, faces, batch=1)
    int8_probs_64 = export.predict(int8_sess, faces, batch=64)
    f32 = export.compare(reference, float_probs, labels)
    i8 = export.compare(reference, int8_probs, labels)
    i8_64 = export.compare(reference, int8_probs_64, labels)
    return {"model": name, "n": f32["n"],
            "float32_argmax_agreement": f32["argmax_agreement"], "float32_max_abs_diff": f32["max_abs_diff"],
            "accuracy_jax": f32["accuracy_reference"], "accuracy_float32_onnx": f32["accuracy_exported"],
            "accuracy_int8_onnx": i8["accuracy_exported"], "int8_argmax_agreement": i8["argmax_agreement"],
            "int8_max_abs_diff": i8["max_abs_diff"], "accuracy_int8_onnx_batch64": i8_64["accuracy_exported"],
            "float32_bytes": float_card["bytes"], "int8_bytes": int8_card["bytes"],
            "float32_sha256": float_card["sha256"], "int8_sha256": int8_card["sha256"],
            "source_weights_sha256": float_card["source_weights_sha256"],
            "seconds": round(time.perf_counter() - start, 1)}


def table(rows: list[dict]) -> str:
    lines = ["| model | float32: argmax agreement | float32: max abs prob. diff | accuracy JAX | "
             "accuracy float32 ONNX | accuracy int8 ONNX | int8 - float32 (points) | int8: agreement with JAX | "
             "int8 accuracy, batches of 64 | size float32 / int8 (MB) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        n = r["n"]
        lines.append(
            f"| `{r['model']}` | {r['float32_argmax_agreement']:.2%} ({round(r['float32_argmax_agreement'] * n)}/{n}) "
            f"| {r['float32_max_abs_diff']:.1e} | {r['accuracy_jax']:.4f} | {r['accuracy_float32_onnx']:.4f} "
            f"| {r['accuracy_int8_onnx']:.4f} | {100 * (r['accuracy_int8_onnx'] - r['accuracy_float32_onnx']):+.2f} "
            f"| {r['int8_argmax_agreement']:.2%} | {r['accuracy_int8_onnx_batch64']:.4f} "
            f"| {r['float32_bytes'] / 1e6:.2f} / {r['int8_bytes'] / 1e6:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fer2013-path", default="../shared/data/fer2013")
    p.add_argument("--models", default="", help="comma-separated (default: every shipped model)")
    p.add_argument("--json", type=Path, default=None, help="also write every figure here")
    a = p.parse_args(argv)
    names = [n for n in a.models.split(",") if n] or export.shipped_models()
    faces, labels = private_test(a.fer2013_path)
    print(f"{len(faces)} PrivateTest faces; models: {', '.join(names)}", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ferjax-onnx-equality-") as tmp:
        for name in names:
            rows.append(measure(name, faces, labels, Path(tmp)))
            print(json.dumps(rows[-1]), file=sys.stderr)
    print(table(rows))
    if a.json:
        a.json.write_text(json.dumps({"rows": rows, "machine": platform.machine(), "python": platform.python_version(),
                                      "date": time.strftime("%Y-%m-%d")}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
