"""Did a balanced classifier learn the examples added to its Training split, or tell them apart?

A classifier trained on a balanced set can fit the added target-class examples by something only
they have (a generator's blur or texture) instead of the expression. Then it calls the added
examples the target class while calling the real target-class Training images it was trained on
something else: a shortcut. `target_rates` measures both for one finished run.
"""
from __future__ import annotations

import json
from pathlib import Path

import jax
import ml_collections
import numpy as np

from ferjax.registry import CLASSIFIERS
from ferjax.train.checkpoint import best_variables


def run_predictor(run_dir: str | Path, batch_size: int = 256):
    """images [N,48,48,1] uint8 -> predicted class, by a finished classifier run's best checkpoint
    (with the run's logit adjustment, when its report records one)."""
    from ferjax.tasks.train_classifier import classifier_kwargs  # noqa: PLC0415

    variables = best_variables(run_dir)
    config = ml_collections.ConfigDict(json.loads((Path(run_dir) / "config.json").read_text()))
    model = CLASSIFIERS.create(config.classifier, **classifier_kwargs(config))
    report = Path(run_dir) / "report.json"
    adjustment = json.loads(report.read_text()).get("logit_adjustment") if report.is_file() else None
    shift = np.asarray(adjustment["offset"], np.float32) if adjustment else np.float32(0.0)
    apply = jax.jit(lambda x: (model.apply(variables, x, train=False) + shift).argmax(-1))

    def predict(images: np.ndarray) -> np.ndarray:
        x = np.asarray(images, np.float32)
        return np.concatenate([np.asarray(apply(x[i:i + batch_size])) for i in range(0, len(x), batch_size)]
                              or [np.zeros(0, np.int64)])

    return predict


def target_rates(run_dir: str | Path, target: int, real: np.ndarray, added: np.ndarray | None,
                 added_other: np.ndarray | None = None) -> dict:
    """The fraction of the real target-class Training images (`real`), of the added target-class
    examples (`added`, None for an arm that adds none) and of the added examples of other classes
    (`added_other`, e.g. matched negatives) that the run's classifier calls class `target`."""
    predict = run_predictor(run_dir)
    out = {"real": int(len(real)), "real_target_rate": float(np.mean(predict(real) == target))}
    if added is not None and len(added):
        out.update(added=int(len(added)), added_target_rate=float(np.mean(predict(added) == target)))
    if added_other is not None and len(added_other):
        out.update(added_other=int(len(added_other)),
                   added_other_target_rate=float(np.mean(predict(added_other) == target)))
    return out
