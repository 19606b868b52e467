"""Post-hoc logit adjustment (Menon et al., 2021, "Long-tail learning via logit adjustment").

A classifier trained on FER2013's skewed classes (happy 25% of Training, disgust 1.5%) favours the
frequent ones. Subtracting `tau * log(prior)` from its logits, with the Training class frequencies
as the prior, moves decisions towards the rare classes; `tau` is chosen on the selection split
(PublicTest), never on the test split. The offset is folded into the output layer's bias, so the
adjusted model is an ordinary set of weights that every consumer (evaluation, the real-time
pipeline, the service) runs unchanged.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from ferjax.eval.metrics import classification_report
from ferjax.eval.predict import predict_logits

TAUS = (0.0, 0.25, 0.5, 0.75, 1.0)


def class_prior(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Class frequencies of `labels` (a class absent from them counts as one example)."""
    counts = np.bincount(np.asarray(labels), minlength=num_classes).astype(np.float64)
    counts = np.maximum(counts, 1.0)
    return counts / counts.sum()


def offset(prior: np.ndarray, tau: float) -> np.ndarray:
    """The float32 logit offset -tau * log(prior)."""
    return (-tau * np.log(prior)).astype(np.float32)


def select(logits: np.ndarray, labels: np.ndarray, prior: np.ndarray,
           class_names: Sequence[str], taus: Sequence[float] = TAUS) -> dict:
    """The tau of `taus` whose adjusted logits score the highest mean of accuracy and balanced
    accuracy on (`logits`, `labels`), the selection split (ties: the smaller tau). Returns
    {tau, offset, prior, criterion, table: one row per tau}."""
    if len(logits) == 0 or len(logits) != len(labels):
        raise ValueError(f"logit adjustment needs selection logits and labels of one length "
                         f"(got {len(logits)} and {len(labels)})")
    table = []
    for tau in taus:
        report = classification_report(labels, (logits + offset(prior, tau)).argmax(-1), class_names)
        table.append({"tau": float(tau), "accuracy": report["accuracy"],
                      "balanced_accuracy": report["balanced_accuracy"],
                      "score": (report["accuracy"] + report["balanced_accuracy"]) / 2})
    best = max(table, key=lambda row: (row["score"], -row["tau"]))
    return {"tau": best["tau"], "offset": offset(prior, best["tau"]), "prior": prior,
            "criterion": "mean of accuracy and balanced accuracy on the selection split", "table": table}


def select_on_validation(logits_fn: Callable[[dict], np.ndarray], splits: Mapping[str, Mapping[str, np.ndarray]],
                         batch_size: int, class_names: Sequence[str]) -> dict:
    """`select` on the `validation` split's logits (by `logits_fn`, a batch dict -> [B, K]), with
    the `train` split's class frequencies as the prior."""
    validation = splits["validation"]
    return select(predict_logits(logits_fn, validation["image"], batch_size), validation["label"],
                  class_prior(splits["train"]["label"], len(class_names)), class_names)


def card_entry(choice: dict) -> dict:
    """The JSON-ready record of a `select` result for a model card or a report."""
    return {"tau": choice["tau"], "prior": np.round(choice["prior"], 6).tolist(),
            "offset": np.round(choice["offset"], 6).tolist(), "criterion": choice["criterion"],
            "selected_on": "validation (PublicTest)", "table": choice["table"]}


def fold_into_output_bias(model: Any, variables: Any, shift: np.ndarray, probe: np.ndarray) -> Any:
    """`variables` with `shift` added to the output layer's bias: the bias leaf of the logits'
    shape whose change moves the logits of `probe` (a few real input images) by exactly `shift`
    (checked, so a model whose last layer has no bias is refused rather than silently changed)."""
    shift = np.asarray(shift, np.float32)
    probe = np.asarray(probe, np.float32)
    base = np.asarray(model.apply(variables, probe, train=False), np.float64)
    candidates = [path for path, leaf in jax.tree_util.tree_leaves_with_path(variables)
                  if jax.tree_util.keystr(path).endswith("['bias']") and np.shape(leaf) == shift.shape]
    for target in reversed(candidates):  # the output layer is usually the last one
        moved = jax.tree_util.tree_map_with_path(
            lambda path, leaf, t=target: leaf + shift if path == t else leaf, variables)
        delta = np.asarray(model.apply(moved, probe, train=False), np.float64) - base
        if np.allclose(delta, shift, atol=1e-3):
            return moved
    raise ValueError(f"no bias of shape {shift.shape} moves this classifier's logits one for one: "
                     f"logit adjustment needs an output layer with a bias; use "
                     f"--config.train.logit_adjustment=none")
