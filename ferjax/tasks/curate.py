"""The `curate` task: removal signals + confident-learning relabels -> a derived dataset and a report.

Curation decisions (`decide`) read only the curation view of the data (images, labels, rows; no
FER+ votes) and models trained on Training images; the FER+ votes are read afterwards, by the
scoring step and for the captions of the example grids. Outputs under WORKDIR: `dataset/` (the
derived dataset; `--config.out_dir` elsewhere), `report/report.md` with its PNG grids and
`report/summary.json`, `cache/` (detector passes) and `folds/` (the cross-validated classifiers).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Mapping

import ml_collections
import numpy as np

from ferjax.atomic import atomic_write_bytes, refuse_existing
from ferjax.curation import report, scoring
from ferjax.tasks.kfold import out_of_fold_probabilities
from ferjax.config import invoked_command
from ferjax.curation.relabel import check_settings, confident_relabeling, require_cleanlab
from ferjax.curation.signals import SignalResult, curation_view
from ferjax.data.derived import DerivedBuilder
from ferjax.data.fer2013 import EMOTIONS

GRID_SIZE = 32  # examples per PNG grid


def signal_names(config: ml_collections.ConfigDict) -> list[str]:
    value = config.curation_signals
    items = value.split(",") if isinstance(value, str) else list(value)
    return [n.strip() for n in items if n.strip()]


def run_signals(config: ml_collections.ConfigDict, view: Mapping, cache_dir: Path) -> dict[str, SignalResult]:
    """Every configured signal's result on the curation view."""
    from ferjax.registry import CURATION_SIGNALS  # noqa: PLC0415

    out = {}
    for name in signal_names(config):
        args = dict(config.curation_signal_args.get(name, {}) or {})
        t0 = time.perf_counter()
        out[name] = CURATION_SIGNALS.create_accepting(name, args)(view, cache_dir)
        out[name].info["seconds"] = round(time.perf_counter() - t0, 2)
        print(f"signal {name}: {out[name].count} Training rows flagged", flush=True)
    return out


def decide(config: ml_collections.ConfigDict, view: Mapping, workdir: Path) -> dict:
    """All curation decisions from the curation view: per Training row the action, label, reason
    and scores, plus the signal results and the relabeling info."""
    train = view["train"]
    labels = np.asarray(train["label"])
    n = len(labels)
    signals = run_signals(config, view, workdir / "cache")
    removed = np.zeros(n, bool)
    reasons = [[] for _ in range(n)]
    for name, res in signals.items():
        if len(res.flagged) != n:
            raise ValueError(f"signal {name!r} returned {len(res.flagged)} flags for {n} Training rows")
        for i in np.flatnonzero(res.flagged):
            reasons[i].append(f"{name}: {res.reason[i]}")
        removed |= res.flagged
    scores = [{name: float(res.score[i]) for name, res in signals.items() if np.isfinite(res.score[i])}
              for i in range(n)]
    action = np.where(removed, "removed", "kept").astype(object)
    new_label = labels.copy()
    relabeling = None
    k = config.kfold
    if k.folds:
        recipe = kfold_recipe(k)
        probs, info = out_of_fold_probabilities(recipe, train, k.folds, k.seed, k.selection_fraction, workdir)
        r = config.relabel
        rel = confident_relabeling(labels, probs, r.filter_by, candidates=~removed, min_prob=r.min_prob,
                                   unconfident=r.unconfident)
        for i in range(n):
            scores[i].update(cl_given_prob=float(rel.given_prob[i]))
            if np.isfinite(rel.confident_prob[i]):
                scores[i]["cl_confident_prob"] = float(rel.confident_prob[i])
        for i in np.flatnonzero(rel.issue):
            if rel.new_label[i] == labels[i]:  # no confident class, kept (relabel.unconfident=keep)
                reasons[i].append(f"confident learning: label issue, no confident class, kept "
                                  f"(p({EMOTIONS[labels[i]]})={rel.given_prob[i]:.2f})")
            elif rel.new_label[i] >= 0:
                action[i], new_label[i] = "relabeled", rel.new_label[i]
                reasons[i].append(
                    f"confident learning: p({EMOTIONS[new_label[i]]})={rel.confident_prob[i]:.2f} >= "
                    f"threshold {rel.thresholds[new_label[i]]:.2f}, p({EMOTIONS[labels[i]]})={rel.given_prob[i]:.2f}")
            else:
                action[i] = "removed"
                reasons[i].append(f"confident learning: label issue, no confident class "
                                  f"(p({EMOTIONS[labels[i]]})={rel.given_prob[i]:.2f})")
        relabeling = {**{kk: v for kk, v in info.items() if kk != "per_fold"}, "per_fold": info.get("per_fold"),
                      "filter_by": r.filter_by, "min_prob": r.min_prob, "unconfident": r.unconfident,
                      "thresholds": rel.thresholds.round(4).tolist(),
                      "issues": int(rel.issue.sum()), "relabeled": int((action == "relabeled").sum()),
                      "removed": int((rel.issue & (rel.new_label < 0)).sum()),
                      "kept": int((rel.issue & (rel.new_label == labels)).sum())}
    return {"action": action.astype(str), "label": new_label, "reason": ["; ".join(r) for r in reasons],
            "scores": scores, "signals": signals, "relabeling": relabeling}


def kfold_recipe(k: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config that trains each cross-validation fold: `kfold.recipe` with its overrides."""
    from ferjax import config as cfg_lib  # noqa: PLC0415

    try:
        return cfg_lib.build(k.recipe, k.recipe_overrides.split())
    except (cfg_lib.ConfigError, KeyError) as e:
        raise ValueError(f"kfold.recipe={k.recipe!r} with overrides {k.recipe_overrides!r}: {e}") from None


def _grids(out: Path, splits: Mapping, decisions: dict) -> dict[str, str]:
    """PNG grids of removed (by group) and relabeled examples with FER+ votes under each image, and
    of the FER+ not-a-face images that no non-face signal flagged (with the votes present)."""
    train = splits["train"]
    votes = train.get("ferplus_votes")
    labels, action, new = np.asarray(train["label"]), decisions["action"], decisions["label"]
    rng = np.random.default_rng(0)
    groups: dict[str, np.ndarray] = {}
    for name, res in decisions["signals"].items():
        groups.setdefault(f"removed_{res.group}", np.zeros(len(labels), bool))
        groups[f"removed_{res.group}"] |= res.flagged
    flagged_any = np.any([g for g in groups.values()], axis=0) if groups else np.zeros(len(labels), bool)
    groups["removed_no_confident_class"] = (action == "removed") & ~flagged_any
    groups["relabeled"] = action == "relabeled"
    if votes is not None and scoring.skipped_reason(votes) is None:  # scoring only: after every decision
        groups["missed_non_face"] = scoring.not_a_face(votes) & ~groups.get(
            "removed_non_face", np.zeros(len(labels), bool))
    grids = {}
    for name, mask in groups.items():
        idx = np.flatnonzero(mask)
        if len(idx) > GRID_SIZE:
            idx = np.sort(rng.choice(idx, GRID_SIZE, replace=False))
        captions = []
        for i in idx:
            head = f"row {train['row'][i]}: {EMOTIONS[labels[i]]}"
            if action[i] == "relabeled":
                head += f" -> {EMOTIONS[new[i]]}"
            text = report.votes_text(votes[i] if votes is not None else None)
            captions.append(head + ("\n" + text.replace(", ", ",", 2).replace(", ", "\n", 1) if text else ""))
        path = report.example_grid(train["image"][idx], captions, out / f"{name}.png",
                                   f"{name.replace('_', ' ')}: {int(mask.sum())} rows, {len(idx)} shown")
        if path is not None:
            grids[name] = str(path)
    return grids


def curate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs curation (module docstring) and returns the summary the command prints last."""
    t0 = time.perf_counter()
    workdir = Path(workdir)
    if config.kfold.folds:  # everything the relabeling step needs, checked before any work
        require_cleanlab()
        kfold_recipe(config.kfold)
        check_settings(config.relabel.filter_by, config.relabel.min_prob, config.relabel.unconfident)
        if config.kfold.folds < 2 or not 0.0 < config.kfold.selection_fraction < 0.5:
            raise ValueError(f"kfold.folds={config.kfold.folds} (0, or at least 2) and "
                             f"kfold.selection_fraction={config.kfold.selection_fraction} (in (0, 0.5))")
    out_dir = Path(config.out_dir) if config.out_dir else workdir / "dataset"
    if config.out_dir:  # the default folder belongs to this workdir and is replaced on a rerun
        try:
            refuse_existing(out_dir, config.overwrite)
        except FileExistsError as e:
            raise ValueError(f"{e} (--config.out_dir=DIR, --config.overwrite=True)") from None
    builder = DerivedBuilder(config.dataset, config.data, config.protocol)
    splits = builder.base_splits
    decisions = decide(config, curation_view(splits), workdir)
    rows = np.asarray(splits["train"]["row"])
    for i, act in enumerate(decisions["action"]):
        if act == "removed":
            builder.remove(rows[i], decisions["reason"][i], decisions["scores"][i])
        elif act == "relabeled":
            builder.relabel(rows[i], int(decisions["label"][i]), decisions["reason"][i], decisions["scores"][i])
        else:
            builder.annotate(rows[i], decisions["scores"][i])
    signals = decisions["signals"]
    info = {"curation": {"signals": {n: r.info for n, r in signals.items()},
                         "relabeling": decisions["relabeling"]}, "config": config.to_dict()}
    command = invoked_command()
    builder.write(out_dir, command, info, overwrite=True)
    labels = np.asarray(splits["train"]["label"])
    non_face = {n: r.flagged for n, r in signals.items() if r.group == "non_face"}
    ferplus = scoring.score(splits["train"].get("ferplus_votes"), labels, decisions["label"],
                            decisions["action"], non_face, EMOTIONS, rows)
    report_dir = workdir / "report"
    grids = _grids(report_dir, splits, decisions)
    counts = builder.counts()
    summary = {
        "experiment": config.name, "base": f"{config.dataset} ({config.protocol})", "output": str(out_dir),
        "actions": {a: counts[a] for a in ("kept", "relabeled", "removed")},
        "train_per_class_before": counts["train_per_class_before"],
        "train_per_class_after": counts["train_per_class_after"],
        "signals": {n: {"group": r.group, "flagged": r.count, "info": r.info} for n, r in signals.items()},
        "relabeling": decisions["relabeling"], "ferplus": ferplus,
        "report": str(report_dir / "report.md"),
        "train_with": f"--config.dataset=derived --config.data.derived_dir={out_dir}",
        "wall_seconds": round(time.perf_counter() - t0, 1)}
    report_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(report_dir / "report.md", report.markdown(summary, grids, command).encode())
    atomic_write_bytes(report_dir / "summary.json", json.dumps(summary, indent=2, default=str).encode())
    return summary
