"""Batched prediction over a whole split and its evaluation report."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ferjax.data.pipeline import eval_batches
from ferjax.eval.metrics import classification_report
from ferjax.eval.plots import plot_confusion


def predict_labels(logits_fn: Callable[[dict], np.ndarray], images: np.ndarray,
                   batch_size: int) -> np.ndarray:
    """Argmax predictions for every image; `logits_fn` maps a batch dict to [B, K] logits."""
    preds = []
    for batch in eval_batches({"image": images}, batch_size):
        mask = batch.pop("mask")
        logits = np.asarray(logits_fn(batch))
        preds.append(logits.argmax(-1)[mask])
    return np.concatenate(preds) if preds else np.zeros((0,), np.int64)


def evaluate_split(logits_fn: Callable[[dict], np.ndarray], split: dict, batch_size: int,
                   class_names: Sequence[str], protocol: str, split_name: str,
                   out_dir: str | Path | None = None, title: str = "") -> dict:
    """Metrics for one split; with `out_dir`, also a normalized confusion-matrix PNG."""
    preds = predict_labels(logits_fn, split["image"], batch_size)
    report = classification_report(split["label"], preds, class_names)
    report.update(protocol=protocol, split=split_name)
    if out_dir is not None:
        path = Path(out_dir) / f"confusion_{split_name}.png"
        plot_confusion(np.asarray(report["confusion_matrix"]), class_names, path,
                       f"{title} {split_name} ({protocol}): acc {report['accuracy']:.3f}")
        report["confusion_png"] = str(path)
    return report
