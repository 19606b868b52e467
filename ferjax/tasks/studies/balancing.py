"""Does CycleGAN balancing help? One recipe trained four ways, several seeds each (`compare_balancing`).

Arms: `as_is` (the original Training split), `cyclegan` (target class topped up with images the
generator translated from the source class), `oversample` (topped up with copies of the real
target-class images, to the same count) and `class_weighted` (the original data, loss weights
n / (K n_class)); optionally `gan_train` (GAN-train: the real target-class images replaced by as
many generated ones) and `logit_adjusted` (the as_is classifiers with post-hoc logit adjustment,
tau chosen on PublicTest: no training of its own). The arms' datasets are derived datasets written by the `balance` task into
WORKDIR/data/ARM and reused on a rerun. Scores: the untouched test split (PrivateTest) with
the original labels, and with the FER+ majority labels where fer2013new.csv is present.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import ml_collections
import numpy as np

from ferjax import config as cfg_lib
from ferjax.data import derived
from ferjax.tasks.balance import balance
from ferjax.data.fer2013 import class_index
from ferjax.tasks.studies import shortcut
from ferjax.tasks.studies import study
from ferjax.train.generator_export import REVERSE

ARMS = ("as_is", "cyclegan", "oversample", "class_weighted", "gan_train", "cyclegan_matched", "cyclegan_detail",
        "logit_adjusted")
# arm -> balance_fer2013 overrides of its derived dataset
BALANCED = {"cyclegan": ("method=generator",), "oversample": ("method=oversample",),
            "gan_train": ("method=generator", "replace_real=True"), "cyclegan_matched": ("method=generator",),
            "cyclegan_detail": ("method=generator",)}


def reverse_generator(config: ml_collections.ConfigDict) -> str:
    """The cyclegan_matched arm's reverse generator: `reverse_generator_checkpoint`, or the
    `generator_reverse` folder beside `generator_checkpoint`."""
    if config.reverse_generator_checkpoint:
        return config.reverse_generator_checkpoint
    from ferjax.train.generator_export import resolve_generator  # noqa: PLC0415

    return str(resolve_generator(config.generator_checkpoint).parent / REVERSE)


def _prepare(config: ml_collections.ConfigDict, arm: str, workdir: Path) -> Path:
    """The arm's derived dataset (made once; a rerun with another generator is refused)."""
    out = workdir / "data" / arm
    generated = "method=generator" in BALANCED[arm]
    target_count = 0 if arm == "gan_train" else config.target_count  # gan_train: as many as the real
    overrides = [*study.data_overrides(config.data), *BALANCED[arm], f"out_dir={out}",
                 f"source_class={config.source_class}", f"target_class={config.target_class}",
                 f"target_count={target_count}", f"seed={config.balance_seed}"]
    if generated:
        if not config.generator_checkpoint:
            raise ValueError(f"the {arm} arm needs --config.generator_checkpoint=DIR (the `generator` "
                             "folder of a cyclegan_neutral2disgust run) or a registered pretrained "
                             "generator, or leave it out with "
                             "--config.arms=as_is,oversample,class_weighted")
        overrides.append(f"generator_checkpoint={config.generator_checkpoint}")
    reverse = reverse_generator(config) if arm == "cyclegan_matched" else None
    if reverse:
        if not Path(reverse).is_dir():
            raise ValueError(f"the cyclegan_matched arm needs the reverse generator {reverse}: "
                             f"export it with `python -m ferjax.train.generator_export --run=RUN_DIR` or set "
                             f"--config.reverse_generator_checkpoint=DIR")
        overrides.append(f"matched_negatives={reverse}")
    sigma = config.source_detail_sigma if arm == "cyclegan_detail" else 0.0
    if sigma:
        overrides.append(f"source_detail_sigma={sigma}")
    if (out / "manifest.json").exists():
        made = json.loads((out / "manifest.json").read_text())["info"]["balance"]
        made_sigma = made.get("source_detail_sigma", 0.0)  # datasets made before the option: 0
        if made_sigma != sigma:
            raise ValueError(f"{out} was made with source_detail_sigma {made_sigma}, not {sigma}: delete "
                             f"{out} and {workdir / arm} to redo the arm, or use another --workdir")
        for key, path, have in (
                ("generator", config.generator_checkpoint if generated else None, made.get("generator_checkpoint")),
                ("reverse generator", reverse, made.get("matched_negatives", {}).get("generator_checkpoint"))):
            wanted = str(Path(path).resolve()) if path else None
            if have != wanted:
                raise ValueError(f"{out} was made with the {key} {have}, not {wanted}: delete {out} and "
                                 f"{workdir / arm} to redo the arm, or use another --workdir")
        print(f"{arm}: balanced data made before, kept ({out})", flush=True)
        return out
    summary = balance(cfg_lib.build("balance_fer2013", overrides), str(workdir / "data"))
    print(f"{arm}: {json.dumps({k: summary[k] for k in ('train_per_class_after', 'wall_seconds')})}", flush=True)
    return out


def compare_balancing(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains every arm x seed, scores them and writes comparison.md/.json with confusion PNGs."""
    t0 = time.perf_counter()
    workdir = Path(workdir)
    arms = [a.strip() for a in config.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown or "as_is" not in arms:
        raise ValueError(f"--config.arms={config.arms!r}: choose from {', '.join(ARMS)}, including as_is "
                         f"(the baseline)")
    try:
        focus = class_index(config.target_class)
        class_index(config.source_class)
    except ValueError as e:
        raise ValueError(f"--config.source_class / --config.target_class: {e}") from None
    overrides = {"as_is": [], "class_weighted": ["train.class_weighting=balanced"],
                 "logit_adjusted": ["train.logit_adjustment=select"]}  # as_is's weights, adjusted
    for arm in BALANCED:
        if arm in arms:  # made in ARMS order
            overrides[arm] = ["dataset=derived", f"data.derived_dir={_prepare(config, arm, workdir)}"]
    arm_overrides = {a: overrides[a] for a in arms}
    common = [*study.data_overrides(config.data), *config.recipe_overrides]
    runs = study.run_arms(config.recipe, arm_overrides, range(config.seeds), common, workdir,
                          post_hoc={"logit_adjusted": "as_is"})

    splits = study.fer2013_splits(config.recipe, common)
    scores = study.score_test_labels(runs, splits, "as_is", focus, config.bootstrap, config.balance_seed)
    header = (f"Recipe `{config.recipe}`, {config.seeds} seeds per arm, trained on FER2013 Training "
              f"(arms: {', '.join(arms)}), tested on PrivateTest (never balanced). Bootstrap: "
              f"{config.bootstrap} resamples of the test images. Made by "
              f"`{config.reproduce_command}`.")
    learned = _learned_added(runs, splits["train"], focus, workdir)
    report = study.write_report(scores, focus, workdir, "Balancing study", header,
                                _learned_table(learned, config.target_class))
    return {"experiment": config.name, "report": str(report), "mean_over_seeds": study.mean_table(scores),
            "learned_added": learned, "wall_seconds": round(time.perf_counter() - t0, 1)}


def _learned_added(runs: dict[str, list[Path]], train: dict[str, np.ndarray], focus: int,
                   workdir: Path) -> dict[str, dict]:
    """Per arm, seed means of `shortcut.target_rates`: how often each trained classifier calls the
    real target-class Training images (of FER2013's `train` split), and the examples its arm added
    (with the target label, and apart with another label), the target class."""
    real = train["image"][train["label"] == focus]
    out = {}
    for arm, dirs in runs.items():
        added, others = None, None
        if arm in BALANCED:
            _, entries, images = derived.read(workdir / "data" / arm)
            labels = np.array([e.label for e in entries if e.added_index >= 0], np.int64)
            order = np.array([e.added_index for e in entries if e.added_index >= 0], np.int64)
            added, others = images[order[labels == focus]], images[order[labels != focus]]
        rates = [shortcut.target_rates(d, focus, real, added, others) for d in dirs]
        out[arm] = {k: (float(np.mean([r[k] for r in rates])) if k.endswith("rate") else rates[0][k])
                    for k in rates[0]}
    return out


def _learned_table(learned: dict[str, dict], target: str) -> list[str]:
    """Markdown: the `_learned_added` rates, one row per arm."""
    rows = ["## Added examples: learned, or told apart?", "",
            f"How often each arm's classifiers (mean over seeds) call the real {target} Training images "
            f"and the examples the arm added {target}. A classifier that calls the added examples "
            f"{target} but not the real ones fitted something only the added examples have (a "
            f"shortcut), not the expression.", "",
            f"| arm | real {target} Training images called {target} | added examples called {target} |",
            "| --- | ---: | ---: |"]
    for arm, r in learned.items():
        added = f"{100 * r['added_target_rate']:.1f}% of {r['added']}" if "added" in r else "(none added)"
        if "added_other" in r:  # matched negatives: added examples labelled another class
            added += f" (and {100 * r['added_other_target_rate']:.1f}% of the {r['added_other']} added with another label)"
        rows.append(f"| {arm} | {100 * r['real_target_rate']:.1f}% of {r['real']} | {added} |")
    return [*rows, ""]
