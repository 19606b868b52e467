"""Multi-seed studies: one classifier recipe trained several ways ("arms"), each with several
seeds, scored on the untouched test split as mean +- sd over seeds, with a paired bootstrap
interval over test images for each arm's difference from the baseline arm.

Used by the balancing study (`compare_balancing`) and the curation study (`compare_curation`).
Each run is an ordinary `train_classifier` run in WORKDIR/ARM/seedS: a killed study restarted with
the same command skips finished runs and resumes the interrupted one; a finished run whose config
differs from the one the study would train now is refused, naming the fields.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Mapping, Sequence

import ml_collections
import numpy as np

from ferjax import config as cfg_lib
from ferjax.data.fer2013 import EMOTIONS
from ferjax.eval.metrics import classification_report, confusion_matrix
from ferjax.eval.plots import plot_confusions
from ferjax.config import changed_fields, flat_config, recipe_defaults

METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
# the label set of the test rows without an exact or near duplicate in Training
NO_TWIN = "original_without_training_twins"
DATA_KEYS = ("fer2013_path", "tfds_data_dir", "skip_bad_rows", "limit_per_split")
"""Data config keys a study passes on to every run (where the files are), never `derived_dir`."""


def data_overrides(data: ml_collections.ConfigDict) -> list[str]:
    """`data.KEY=VALUE` overrides that point every run at the study's files (keys left at their
    empty default keep the recipe's own value)."""
    return [f"data.{k}={data[k]}" for k in DATA_KEYS if data.get(k)]


LOCATION_FIELDS = ("data.fer2013_path", "data.tfds_data_dir", "reproduce_command")


def _refuse_stale(run_dir: Path, config: ml_collections.ConfigDict, defaults: dict) -> None:
    """A finished run is reused only when it was trained with the config the study asks for now
    (file locations aside). An option its config lacks (added to ferjax after it ran) counts as
    unchanged when the study asks for the recipe's default (`defaults`, a `flat_config`): new
    options default to the earlier behaviour."""
    old = flat_config(ml_collections.ConfigDict(json.loads((run_dir / "config.json").read_text())))
    new = flat_config(config)
    changed = changed_fields(old, new, LOCATION_FIELDS, defaults=defaults)
    if changed:
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:6])
        raise ValueError(f"{run_dir} finished with another config ({detail}); delete that folder to "
                         f"retrain it, or use another --workdir")


def run_arms(recipe: str, arms: Mapping[str, Sequence[str]], seeds: Sequence[int],
             common: Sequence[str], workdir: str | Path,
             reuse: Mapping[str, str | Path] | None = None,
             post_hoc: Mapping[str, str] | None = None) -> dict[str, list[Path]]:
    """Trains `recipe` with each arm's overrides (after `common`) and `train.seed=S` for every
    seed (all arms of seed 0 first, then of seed 1, ...) into WORKDIR/ARM/seedS; returns the run
    folders per arm. `reuse` maps an arm to another study's folder of that arm (FOLDER/seedS):
    its finished runs stand in for training, when their config is the one this study would train
    (e.g. the shared `as_is` baseline). `post_hoc` maps an arm whose overrides only act after
    training (`train.logit_adjustment`) to the arm it shares its training with (listed before it):
    that arm's finished checkpoints are copied in and only the evaluation runs again."""
    from ferjax.tasks.train_classifier import train_classifier  # noqa: PLC0415

    workdir, reuse, post_hoc = Path(workdir), reuse or {}, post_hoc or {}
    # Seed-major: an interrupted study already holds every arm at its first seeds.
    plan = [(arm, seed) for seed in seeds for arm in arms]
    configs = {(arm, seed): cfg_lib.build(recipe, [*common, *arms[arm], f"train.seed={seed}"])
               for arm, seed in plan}  # every config checked before the first run starts
    defaults = recipe_defaults(recipe)
    runs: dict[str, list[Path]] = {arm: [] for arm in arms}
    for i, (arm, seed) in enumerate(plan, 1):
        run_dir = workdir / arm / f"seed{seed}"
        shared = Path(reuse[arm]) / f"seed{seed}" if arm in reuse else None
        if shared and (shared / "report.json").exists() and not (run_dir / "report.json").exists():
            run_dir = shared
        runs[arm].append(run_dir)
        if (run_dir / "report.json").exists():
            _refuse_stale(run_dir, configs[arm, seed], defaults)
            print(f"[{i}/{len(plan)}] {arm} seed {seed}: done before, kept ({run_dir})", flush=True)
            continue
        base = runs[post_hoc[arm]][-1] if arm in post_hoc else None
        if base is not None and (base / "report.json").exists() and not (run_dir / "checkpoints").exists():
            print(f"[{i}/{len(plan)}] {arm} seed {seed}: the {post_hoc[arm]} run's weights, evaluated "
                  f"again -> {run_dir}", flush=True)
            partial = run_dir / ".checkpoints.copying"  # renamed when complete: a kill leaves no half copy
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(base / "checkpoints", partial)
            partial.rename(run_dir / "checkpoints")
        else:
            print(f"[{i}/{len(plan)}] {arm} seed {seed}: training {recipe} -> {run_dir}", flush=True)
        train_classifier(configs[arm, seed], str(run_dir))
    return runs


def _load_predictions(run_dir: Path, rows: np.ndarray) -> np.ndarray:
    """Predicted class per test image, in the order of `rows`."""
    path = run_dir / "predictions_test.npz"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the run did not finish its test evaluation")
    with np.load(path) as f:
        if "row" in f and not np.array_equal(f["row"], rows):
            raise ValueError(f"{path}: its test rows differ from the study's test split")
        return f["logits"].argmax(-1)


def _metrics(y: np.ndarray, pred: np.ndarray, focus: int) -> dict[str, float]:
    report = classification_report(y, pred, EMOTIONS)
    return {**{m: report[m] for m in METRICS}, "focus_recall": report["per_class_recall"][EMOTIONS[focus]]}


def _bootstrap_metrics(y: np.ndarray, preds: np.ndarray, idx: np.ndarray, focus: int) -> dict[str, np.ndarray]:
    """Metrics [B, runs] of `preds` [runs, N] on the bootstrap resamples `idx` [B, N] (vectorised
    confusion matrices)."""
    k = len(EMOTIONS)
    n_boot, runs = len(idx), len(preds)
    yb = y[idx]                                            # [B, N]
    codes = yb[:, None, :] * k + preds[:, idx].transpose(1, 0, 2)   # [B, runs, N]
    offsets = (np.arange(n_boot * runs) * k * k).reshape(n_boot, runs, 1)
    cm = np.bincount((codes + offsets).ravel(), minlength=n_boot * runs * k * k).reshape(n_boot, runs, k, k)
    tp = np.diagonal(cm, axis1=2, axis2=3).astype(np.float64)
    support, predicted = cm.sum(3), cm.sum(2)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp),
                   where=(precision + recall) > 0)
    present = support > 0
    n_present = np.maximum(present.sum(2), 1)
    return {"accuracy": tp.sum(2) / len(y),
            "balanced_accuracy": (recall * present).sum(2) / n_present,
            "macro_f1": (f1 * present).sum(2) / n_present,
            "focus_recall": recall[:, :, focus]}


def resampled_means(y: np.ndarray, preds: np.ndarray, focus: int, n_boot: int, seed: int) -> dict[str, np.ndarray]:
    """Seed-mean metrics [n_boot] of `preds` [runs, N] on resamples of the test images drawn as
    `score` draws them (the same `seed` and N give the same resamples)."""
    idx = np.random.default_rng(seed).integers(0, len(y), (n_boot, len(y)))
    return {m: v.mean(1) for m, v in _bootstrap_metrics(np.asarray(y), np.asarray(preds), idx, focus).items()}


def load_predictions(runs: Mapping[str, Sequence[Path]], rows: np.ndarray) -> dict[str, np.ndarray]:
    """{arm: [seeds, N] predicted classes} of every run's test predictions, in the order of `rows`."""
    return {arm: np.stack([_load_predictions(d, rows) for d in dirs]) for arm, dirs in runs.items()}


def score(predictions: Mapping[str, np.ndarray], y: np.ndarray, keep: np.ndarray,
          baseline: str, focus: int, n_boot: int = 1000, seed: int = 0) -> dict:
    """Per arm of `load_predictions`: metrics mean/sd over seeds on the test images `keep` (labels
    `y`), summed confusion matrix, and (other arms) the bootstrap 95% interval of the difference of
    seed-mean metrics from `baseline`, resampling test images (the same resamples for every arm)."""
    y = y[keep]
    preds = {arm: p[:, keep] for arm, p in predictions.items()}
    idx = np.random.default_rng(seed).integers(0, len(y), (n_boot, len(y)))
    boot = {arm: _bootstrap_metrics(y, p, idx, focus) for arm, p in preds.items()}
    per_seed = {arm: [_metrics(y, q, focus) for q in p] for arm, p in preds.items()}
    out = {}
    for arm, p in preds.items():
        entry = {"n_test": int(len(y)), "seeds": len(p), "per_seed": per_seed[arm],
                 "confusion_matrix": sum(confusion_matrix(y, q, len(EMOTIONS)) for q in p).tolist()}
        for m in (*METRICS, "focus_recall"):
            vals = np.array([s[m] for s in per_seed[arm]])
            entry[m] = {"mean": float(vals.mean()), "sd": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0}
            if arm != baseline:
                base = np.mean([s[m] for s in per_seed[baseline]])
                lo, hi = np.percentile(boot[arm][m].mean(1) - boot[baseline][m].mean(1), [2.5, 97.5])
                entry[m].update(diff=float(vals.mean() - base), diff_ci95=[float(lo), float(hi)],
                                ci_excludes_zero=bool(lo > 0 or hi < 0))
        out[arm] = entry
    return out


def fer2013_splits(recipe: str, common: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
    """FER2013's splits (original labels, FER+ votes beside them) where the recipe's data config
    with the study's `common` overrides finds them."""
    from ferjax.registry import DATASETS  # noqa: PLC0415

    return DATASETS.create("fer2013", cfg=cfg_lib.build(recipe, common).data, protocol="original")


def score_test_labels(runs: Mapping[str, Sequence[Path]], splits: Mapping[str, Mapping[str, np.ndarray]],
                      baseline: str, focus: int, n_boot: int, seed: int) -> dict[str, dict]:
    """`score` on the untouched FER2013 test split of `fer2013_splits(...)`: with its original labels;
    with them on the rows whose image has no exact or near duplicate in Training (a model trained on
    such a twin has seen the test face; ferjax.curation.signals.training_twins); and, where
    fer2013new.csv gives them, with the FER+ majority labels (only the rows that have one)."""
    from ferjax.data.ferplus import ferplus_majority  # noqa: PLC0415
    from ferjax.curation.signals import training_twins  # noqa: PLC0415

    test = splits["test"]
    preds = load_predictions(runs, test["row"])
    every = np.ones(len(test["label"]), bool)
    scores = {"original": score(preds, test["label"], every, baseline, focus, n_boot, seed)}
    twin = training_twins(splits["train"]["image"], test["image"])
    if twin.any() and not twin.all():  # a table of no rows (or of all of them again) says nothing
        scores[NO_TWIN] = score(preds, test["label"], ~twin, baseline, focus, n_boot, seed)
    ferplus = ferplus_majority(test["ferplus_votes"])
    if (ferplus >= 0).any():
        scores["ferplus"] = score(preds, ferplus, ferplus >= 0, baseline, focus, n_boot, seed)
    else:
        print("FER+ scoring skipped: no fer2013new.csv votes beside the FER2013 source", flush=True)
    return scores


def mean_table(scores: Mapping[str, Mapping[str, dict]]) -> dict:
    """{label set: {arm: {metric: seed mean}}} for the printed summary."""
    return {ls: {arm: {m: round(e[m]["mean"], 4) for m in (*METRICS, "focus_recall")} for arm, e in s.items()}
            for ls, s in scores.items()}


def markdown_table(scores: Mapping[str, dict], focus_name: str, label_set: str) -> str:
    """One row per arm: each metric as mean +- sd (points), and the difference from the
    baseline with its bootstrap 95% interval."""
    cols = (*METRICS, "focus_recall")
    names = {"accuracy": "accuracy", "balanced_accuracy": "balanced acc.", "macro_f1": "macro-F1",
             "focus_recall": f"{focus_name} recall"}
    head = "| arm | " + " | ".join(names[c] for c in cols) + " |"
    lines = [f"Test labels: {label_set}; mean +- sd over seeds, in points; in brackets the difference "
             f"from the baseline and its bootstrap 95% interval.", "", head,
             "| --- |" + " ---: |" * len(cols)]
    for arm, e in scores.items():
        cells = []
        for c in cols:
            m = e[c]
            cell = f"{100 * m['mean']:.1f} +- {100 * m['sd']:.1f}"
            if "diff" in m:
                lo, hi = m["diff_ci95"]
                cell += f" ({100 * m['diff']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}])"
            cells.append(cell)
        lines.append(f"| {arm} (n={e['n_test']}, {e['seeds']} seeds) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(scores_by_labels: Mapping[str, Mapping[str, dict]], focus: int, workdir: Path,
                 title: str, header: str, extra: Sequence[str] = ()) -> Path:
    """comparison.md (tables per test-label set, confusion PNGs per arm, then the `extra`
    Markdown lines) and comparison.json."""
    parts = [f"# {title}", "", header, ""]
    for label_set, scores in scores_by_labels.items():
        parts += [f"## Test labels: {label_set}", "", markdown_table(scores, EMOTIONS[focus], label_set), ""]
        png = workdir / f"confusion_{label_set}.png"
        plot_confusions({arm: np.asarray(e["confusion_matrix"]) for arm, e in scores.items()}, EMOTIONS, png,
                        f"PrivateTest, {label_set} labels: confusion (rows: true class, %), seeds pooled")
        for e in scores.values():
            e["confusion_png"] = str(png)
        parts += [f"![confusion matrices, {label_set} labels]({png.name})", ""]
    (workdir / "comparison.json").write_text(json.dumps(scores_by_labels, indent=2))
    path = workdir / "comparison.md"
    path.write_text("\n".join([*parts, *extra]))
    return path
