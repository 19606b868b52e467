"""Confident learning (Northcutt et al. 2021) on out-of-fold probabilities, through `cleanlab`.

`cleanlab.filter.find_label_issues` decides which given labels are wrong; each such example goes
to its confident class (the most probable class, other than the given one, whose probability
reaches that class's per-class threshold, `cleanlab.count.get_confident_thresholds`: the mean
probability of the class over the examples labelled with it, and the floor `min_prob`), or, when
no other class is confident, is removed (`unconfident="remove"`) or keeps its label ("keep").
cleanlab is an optional dependency: `pip install 'ferjax[curate]'`.
"""
from __future__ import annotations

import dataclasses

import numpy as np

EXTRA = "curate"
FILTERS = ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given")
UNCONFIDENT = ("remove", "keep")


@dataclasses.dataclass
class Relabeling:
    """Per-example decisions: `issue` (the given label is judged wrong), `new_label` (the confident
    class; -1 where an issue has none and is removed; the given label where it is kept), the
    per-class `thresholds` (the floor applied), and the given label's probability and the confident
    class's (NaN: none) as scores."""

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


def check_settings(filter_by: str, min_prob: float, unconfident: str) -> None:
    """A ValueError naming the `relabel.*` setting that is not valid."""
    if filter_by not in FILTERS:
        raise ValueError(f"relabel.filter_by={filter_by!r}; expected one of {list(FILTERS)}")
    if unconfident not in UNCONFIDENT:
        raise ValueError(f"relabel.unconfident={unconfident!r}; expected one of {list(UNCONFIDENT)}")
    if not 0.0 <= min_prob < 1.0:
        raise ValueError(f"relabel.min_prob={min_prob}; expected a probability in [0, 1)")


def confident_relabeling(labels: np.ndarray, probs: np.ndarray, filter_by: str = "prune_by_noise_rate",
                         candidates: np.ndarray | None = None, min_prob: float = 0.0,
                         unconfident: str = "remove") -> Relabeling:
    """Confident-learning decisions for `labels` [N] given out-of-fold `probs` [N, K]; examples
    outside `candidates` (bool [N], e.g. already removed) are never issues. A class is confident
    for an example when its probability reaches both its per-class threshold and `min_prob`."""
    labels, probs = np.asarray(labels, np.int64), np.asarray(probs, np.float64)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"probabilities {list(probs.shape)} do not match {len(labels)} labels")
    if not np.isfinite(probs).all():
        raise ValueError("out-of-fold probabilities hold NaN or inf (a fold did not predict its rows)")
    check_settings(filter_by, min_prob, unconfident)
    cl = require_cleanlab()
    # n_jobs=1: cleanlab's worker processes fork, and forking a process running JAX can deadlock
    issue = np.asarray(cl.filter.find_label_issues(labels, probs, filter_by=filter_by, n_jobs=1), bool)
    if candidates is not None:
        issue &= np.asarray(candidates, bool)
    thresholds = np.maximum(np.asarray(cl.count.get_confident_thresholds(labels, probs), np.float64), min_prob)
    confident = probs >= thresholds[None, :]
    confident[np.arange(len(labels)), labels] = False
    masked = np.where(confident, probs, -np.inf)
    best = masked.argmax(1)
    has = confident.any(1)
    new_label = np.where(issue & has, best, np.where(issue & (unconfident == "remove"), -1, labels))
    confident_prob = np.where(has, probs[np.arange(len(labels)), best], np.nan)
    return Relabeling(issue, new_label, thresholds, probs[np.arange(len(labels)), labels], confident_prob)
