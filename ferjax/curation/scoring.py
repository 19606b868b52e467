"""Curation scored against FER+ human votes (GUIDE.md section 3), which curation itself never reads.

- removal: precision and recall of each non-face signal, and of their union, against the Training
  images most FER+ voters called "not a face" (NF majority);
- relabeling: agreement with the FER+ majority label (`ferplus_majority`) over one fixed row set,
  every Training row with a majority label, where a removed row keeps its original label (so removing
  rows cannot raise agreement); the same over the relabeled rows only; an old -> new label table;
  with the CSV rows given, the fixed-set agreement on even and on odd rows apart (a threshold looked
  at on one half can be checked on the other).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ferjax.data.ferplus import ferplus_majority


def skipped_reason(votes: np.ndarray | None) -> str | None:
    """Why FER+ scoring cannot run on these Training votes (None: it can)."""
    if votes is None:
        return "the dataset carries no FER+ votes"
    if not (np.asarray(votes).min(1) >= 0).any():
        return ("no FER+ votes: fer2013new.csv (https://github.com/microsoft/FERPlus) is not beside the "
                "FER2013 CSV")
    return None


def not_a_face(votes: np.ndarray) -> np.ndarray:
    """Training rows whose NF votes outnumber every other column (rows without votes: False)."""
    votes = np.asarray(votes, np.int64)
    return (votes.min(1) >= 0) & (votes[:, 9] > votes[:, :9].max(1))


def precision_recall(flagged: np.ndarray, truth: np.ndarray) -> dict:
    """How many rows are flagged, how many of them are true, and the precision and recall."""
    tp = int((flagged & truth).sum())
    n = int(flagged.sum())
    return {"flagged": n, "true_positives": tp,
            "precision": tp / n if n else None, "recall": tp / int(truth.sum()) if truth.any() else None}


def score(votes: np.ndarray, original: np.ndarray, curated: np.ndarray, action: Sequence[str],
          non_face_flags: Mapping[str, np.ndarray], classes: Sequence[str],
          rows: np.ndarray | None = None) -> dict:
    """FER+ figures for one curation of the Training split (arrays in Training order); see the
    module docstring. `curated` holds each row's label after curation (removed rows: original);
    `rows`, the base CSV rows, adds the even/odd-row agreement."""
    reason = skipped_reason(votes)
    if reason:
        return {"skipped": True, "reason": reason}
    votes = np.asarray(votes)
    truth = not_a_face(votes)
    action = np.asarray(action)
    removal = {name: precision_recall(np.asarray(f, bool), truth) for name, f in non_face_flags.items()}
    if non_face_flags:
        union = np.any([np.asarray(f, bool) for f in non_face_flags.values()], axis=0)
        removal["combined"] = precision_recall(union, truth)
    removal["all_removals"] = precision_recall(action == "removed", truth)
    major = ferplus_majority(votes)
    fixed = major >= 0
    relabeled = fixed & (action == "relabeled")
    table = np.zeros((len(classes), len(classes)), np.int64)
    for a, b in zip(original[action == "relabeled"], curated[action == "relabeled"]):
        table[a, b] += 1
    out = {
        "skipped": False, "ferplus_not_a_face": int(truth.sum()), "removal": removal,
        "relabel": {
            "fixed_rows": int(fixed.sum()),
            "original_agreement": float((original[fixed] == major[fixed]).mean()),
            "curated_agreement": float((curated[fixed] == major[fixed]).mean()),
            "relabeled_rows_with_majority": int(relabeled.sum()),
            "relabeled_old_agreement": float((original[relabeled] == major[relabeled]).mean())
            if relabeled.any() else None,
            "relabeled_new_agreement": float((curated[relabeled] == major[relabeled]).mean())
            if relabeled.any() else None},
        "old_to_new": {"classes": list(classes), "counts": table.tolist()}}
    if rows is not None:
        parity = np.asarray(rows) % 2
        out["relabel"]["by_row_parity"] = {
            name: {"fixed_rows": int((fixed & (parity == p)).sum()),
                   "original_agreement": float((original == major)[fixed & (parity == p)].mean()),
                   "curated_agreement": float((curated == major)[fixed & (parity == p)].mean())}
            for name, p in (("even", 0), ("odd", 1))}
    return out
