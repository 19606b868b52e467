"""Batched prediction over a whole split (with test-time augmentation) and its evaluation report."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ferjax.data.pipeline import eval_batches
from ferjax.eval.metrics import classification_report
from ferjax.eval.plots import plot_confusion


def _flip_averaged(apply):
    """Test-time augmentation: mean of the logits of each image and its mirror image."""
    return lambda v, x: (apply(v, x) + apply(v, x[:, :, ::-1])) / 2


TTA_MODES = {"none": lambda apply: apply, "flip": _flip_averaged}
"""Test-time augmentations by name: each wraps an `apply(variables, images) -> logits`."""


def predict_logits(logits_fn: Callable[[dict], np.ndarray], images: np.ndarray,
                   batch_size: int) -> np.ndarray:
    """[N, K] logits for every image; `logits_fn` maps a batch dict to [B, K] logits."""
    out = []
    for batch in eval_batches({"image": images}, batch_size):
        mask = batch.pop("mask")
        out.append(np.asarray(logits_fn(batch), np.float64)[mask])
    return np.concatenate(out) if out else np.zeros((0, 0))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax(logits / temperature) in NumPy (numerically stable)."""
    z = logits / temperature
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def mean_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean softmax cross-entropy (natural log) of integer labels."""
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def evaluate_split(logits_fn: Callable[[dict], np.ndarray], split: dict, batch_size: int,
                   class_names: Sequence[str], protocol: str, split_name: str,
                   out_dir: str | Path | None = None, title: str = "") -> dict:
    """Metrics (and mean cross-entropy `loss`) for one split; with `out_dir`, also a normalized
    confusion-matrix PNG and `predictions_{split}.npz` (float32 logits, labels and, where the split
    has them, source rows), which multi-seed comparisons bootstrap over."""
    logits = predict_logits(logits_fn, split["image"], batch_size)
    report = classification_report(split["label"], logits.argmax(-1), class_names)
    report.update(loss=mean_cross_entropy(logits, split["label"]), protocol=protocol, split=split_name)
    if out_dir is not None:
        path = Path(out_dir) / f"confusion_{split_name}.png"
        plot_confusion(np.asarray(report["confusion_matrix"]), class_names, path,
                       f"{title} {split_name} ({protocol}): acc {report['accuracy']:.3f}")
        report["confusion_png"] = str(path)
        saved = {"logits": logits.astype(np.float32), "label": np.asarray(split["label"])}
        if "row" in split:
            saved["row"] = np.asarray(split["row"])
        predictions = Path(out_dir) / f"predictions_{split_name}.npz"
        with open(predictions, "wb") as f:  # np.savez on a path would append ".npz" to a temp name
            np.savez_compressed(f, **saved)
        report["predictions"] = str(predictions)
    return report
