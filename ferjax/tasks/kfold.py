"""Out-of-fold class probabilities for every Training image from k cross-validated classifiers.

Training is split into `folds` class-stratified folds. Fold f's classifier trains with the recipe
experiment's config (`ferjax.tasks.train_classifier.train_classifier`, its loop, checkpoints and
resume) on the other folds, less a class-stratified `selection_fraction` of them that picks its
best checkpoint; it then predicts fold f. Only Training images are read: PublicTest and PrivateTest
play no part. Everything lives under `WORKDIR/folds/KEY/`, KEY a digest of the recipe config, the
data fingerprint, the fold count, seed and selection fraction: a finished fold (`oof.npz`) is not
retrained, an interrupted one resumes from its latest checkpoint, and the assembled probabilities
(`oof.npz` beside the fold folders) make a rerun with other thresholds take seconds.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Mapping

import ml_collections
import numpy as np

from ferjax.atomic import save_npz
from ferjax.data.derived import fingerprint
from ferjax.eval.predict import softmax

OOF_FILE = "oof.npz"


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold id 0..folds-1 per example: each class's examples shuffled and dealt round robin."""
    labels = np.asarray(labels)
    if folds < 2:
        raise ValueError(f"kfold.folds={folds}: cross-validation needs at least 2 folds")
    if len(labels) < folds:
        raise ValueError(f"{len(labels)} Training examples cannot make {folds} folds")
    rng = np.random.default_rng(seed)
    out = np.empty(len(labels), np.int64)
    start = 0
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        out[idx] = (start + np.arange(len(idx))) % folds  # keep fold sizes even across classes
        start += len(idx)
    return out


def _selection_mask(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A class-stratified `fraction` of the examples (at least one per class present)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        mask[idx[:max(1, int(round(fraction * len(idx))))]] = True
    return mask


def cache_key(recipe: ml_collections.ConfigDict, train: Mapping[str, np.ndarray], folds: int, seed: int,
              selection_fraction: float) -> str:
    """Digest naming one cross-validation: recipe config, data fingerprint, folds, seed, fraction."""
    what = {"recipe": json.loads(recipe.to_json_best_effort()), "data": fingerprint(train),
            "folds": folds, "seed": seed, "selection_fraction": selection_fraction}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def out_of_fold_probabilities(recipe: ml_collections.ConfigDict, train: Mapping[str, np.ndarray],
                              folds: int, seed: int, selection_fraction: float,
                              workdir: str | Path) -> tuple[np.ndarray, dict]:
    """([N, K] out-of-fold softmax probabilities in Training order, info) for `train`
    (image, label, row); cached and resumable as the module docstring says."""
    train = {k: np.asarray(train[k]) for k in ("image", "label", "row")}
    if not 0.0 < selection_fraction < 0.5:
        raise ValueError(f"kfold.selection_fraction={selection_fraction}: expected a number in (0, 0.5)")
    key = cache_key(recipe, train, folds, seed, selection_fraction)
    root = Path(workdir) / "folds" / key
    info = {"folds": folds, "seed": seed, "selection_fraction": selection_fraction, "cache": str(root),
            "recipe": recipe.get("name", "")}
    done = root / OOF_FILE
    if done.is_file():
        with np.load(done) as z:
            if np.array_equal(z["row"], train["row"]):
                return z["probs"], {**info, "cached": True, **json.loads(str(z["info"]))}
    fold_of = stratified_folds(train["label"], folds, seed)
    probs = np.full((len(train["label"]), 0), np.nan)
    per_fold = []
    t0 = time.perf_counter()
    for f in range(folds):
        fold_probs, fold_info = _fold(recipe, train, fold_of, f, seed, selection_fraction, root / str(f))
        if probs.shape[1] == 0:
            probs = np.full((len(train["label"]), fold_probs.shape[1]), np.nan)
        probs[fold_of == f] = fold_probs
        per_fold.append(fold_info)
    run = {"per_fold": per_fold, "seconds": round(time.perf_counter() - t0, 1),
           "oof_accuracy": float((probs.argmax(1) == train["label"]).mean())}
    save_npz(done, probs=probs, row=train["row"], fold=fold_of, info=np.asarray(json.dumps(run)))
    return probs, {**info, "cached": False, **run}


def _fold(recipe: ml_collections.ConfigDict, train: Mapping[str, np.ndarray], fold_of: np.ndarray, f: int,
          seed: int, selection_fraction: float, fold_dir: Path) -> tuple[np.ndarray, dict]:
    """Trains fold `f`'s classifier (or reads its finished `oof.npz`) and returns its probabilities
    on the held-out fold, in Training order."""
    from ferjax.tasks.train_classifier import train_classifier  # noqa: PLC0415  (imports JAX models)

    held = fold_of == f
    done = fold_dir / OOF_FILE
    if done.is_file():
        with np.load(done) as z:
            if np.array_equal(z["row"], train["row"][held]):
                return z["probs"], json.loads(str(z["info"]))
    rest = np.flatnonzero(~held)
    select = rest[_selection_mask(train["label"][rest], selection_fraction, seed + 1000 + f)]
    fit_on = np.setdiff1d(rest, select)

    def part(index: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v[index] for k, v in train.items()}

    data = {"train": part(fit_on), "validation": part(select), "test": part(np.flatnonzero(held))}
    summary = train_classifier(recipe, str(fold_dir), data)
    with np.load(fold_dir / "predictions_test.npz") as z:
        if not np.array_equal(z["row"], train["row"][held]):
            raise RuntimeError(f"{fold_dir}/predictions_test.npz does not hold fold {f}'s rows")
        probs = softmax(z["logits"].astype(np.float64))
    test = summary.get("test_report", {})
    info = {"fold": f, "train": len(fit_on), "selection": len(select), "held_out": int(held.sum()),
            "held_out_accuracy": test.get("accuracy"), "wall_seconds": summary.get("wall_seconds"),
            "best_step": summary.get("best_step")}
    save_npz(done, probs=probs, row=train["row"][held], info=np.asarray(json.dumps(info)))
    return probs, info
