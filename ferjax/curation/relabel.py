"""Confident learning (Northcutt et al. 2021) on out-of-fold probabilities, through `cleanlab`.

`cleanlab.filter.find_label_issues` decides which given labels are wrong; each such example goes
to its confident class (the most probable class, other than the given one, whose probability
reaches that class's per-class threshold, `cleanlab.count.get_confident_thresholds`: the mean
probability of the class over the examples labelled with it), or is removed when no other class
is confident. cleanlab is an optional dependency: `pip install 'ferjax[curate]'`.
"""
from __future__ import annotations

import dataclasses

import numpy as np

EXTRA = "curate"
FILTERS = ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given")


@dataclasses.dataclass
class Relabeling:
    """Per-example decisions: `issue` (the given label is judged wrong), `new_label` (the confident
    class; -1 where an issue has none: remove), the per-class `thresholds`, and the given label's
    probability and the confident class's (NaN: none) as scores."""

    issue: np.ndarray
    new_label: np.ndarray
    thresholds: np.ndarray
    given_prob: np.ndarray
    confident_prob: np.ndarray


def require_cleanlab():
    """The cleanlab modules, or an ImportError naming the extra that installs them."""
    try:
        import cleanlab.count  # noqa: PLC0415
        import cleanlab.filter  # noqa: PLC0415
    except ImportError as e:
        raise ImportError(f"relabeling uses cleanlab (confident learning), which is not installed "
                          f"({e}); install the optional extra: pip install 'ferjax[{EXTRA}]' (or set "
                          f"--config.kfold.folds=0 to curate with the removal signals only)") from None
    return cleanlab


def confident_relabeling(labels: np.ndarray, probs: np.ndarray, filter_by: str = "prune_by_noise_rate",
                         candidates: np.ndarray | None = None) -> Relabeling:
    """Confident-learning decisions for `labels` [N] given out-of-fold `probs` [N, K]; examples
    outside `candidates` (bool [N], e.g. already removed) are never issues."""
    labels, probs = np.asarray(labels, np.int64), np.asarray(probs, np.float64)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"probabilities {list(probs.shape)} do not match {len(labels)} labels")
    if not np.isfinite(probs).all():
        raise ValueError("out-of-fold probabilities hold NaN or inf (a fold did not predict its rows)")
    if filter_by not in FILTERS:
        raise ValueError(f"relabel.filter_by={filter_by!r}; expected one of {list(FILTERS)}")
    cl = require_cleanlab()
    # n_jobs=1: cleanlab's worker processes fork, and forking a process running JAX can deadlock
    issue = np.asarray(cl.filter.find_label_issues(labels, probs, filter_by=filter_by, n_jobs=1), bool)
    if candidates is not None:
        issue &= np.asarray(candidates, bool)
    thresholds = np.asarray(cl.count.get_confident_thresholds(labels, probs), np.float64)
    confident = probs >= thresholds[None, :]
    confident[np.arange(len(labels)), labels] = False
    masked = np.where(confident, probs, -np.inf)
    best = masked.argmax(1)
    has = confident.any(1)
    new_label = np.where(issue & has, best, np.where(issue, -1, labels))
    confident_prob = np.where(has, probs[np.arange(len(labels)), best], np.nan)
    return Relabeling(issue, new_label, thresholds, probs[np.arange(len(labels)), labels], confident_prob)
