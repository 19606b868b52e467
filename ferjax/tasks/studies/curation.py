"""Does curation help? One recipe trained on the original and on the curated Training split,
several seeds each (`compare_curation`), scored on the untouched PrivateTest with the original
labels and with the FER+ majority labels.

The `original` arm is the balancing study's `as_is` arm (same recipe, same seeds): with
`reuse_baseline_from` pointing at that study's folder its finished runs are reused, not retrained.
"""
from __future__ import annotations

import time
from pathlib import Path

import ml_collections

from ferjax.data.fer2013 import class_index
from ferjax.tasks.studies import study


def compare_curation(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains both arms x seeds, scores them and writes comparison.md/.json with confusion PNGs."""
    t0 = time.perf_counter()
    if not config.curated_dir:
        raise ValueError("set --config.curated_dir=DIR, the derived dataset a curate_fer2013 run wrote")
    if not (Path(config.curated_dir) / "manifest.json").exists():
        raise ValueError(f"{config.curated_dir} holds no derived dataset (no manifest.json); point "
                         f"--config.curated_dir at the dataset folder of a curate_fer2013 run")
    try:
        focus = class_index(config.focus_class)
    except ValueError as e:
        raise ValueError(f"--config.focus_class: {e}") from None
    arms = {"as_is": [], "curated": ["dataset=derived", f"data.derived_dir={config.curated_dir}"]}
    common = [*study.data_overrides(config.data), *config.recipe_overrides]
    reuse = {"as_is": Path(config.reuse_baseline_from) / "as_is"} if config.reuse_baseline_from else None
    runs = study.run_arms(config.recipe, arms, range(config.seeds), common, workdir, reuse)
    scores = study.score_test_labels(runs, study.fer2013_splits(config.recipe, common), "as_is", focus,
                                     config.bootstrap, config.seed)
    header = (f"Recipe `{config.recipe}`, {config.seeds} seeds per arm: `as_is` trained on FER2013 Training, "
              f"`curated` on the curated Training split ({config.curated_dir}); tested on PrivateTest "
              f"(never curated). Bootstrap: {config.bootstrap} resamples of the test images. Made by "
              f"`{config.reproduce_command}`.")
    report = study.write_report(scores, focus, Path(workdir), "Curation study", header)
    return {"experiment": config.name, "report": str(report), "mean_over_seeds": study.mean_table(scores),
            "wall_seconds": round(time.perf_counter() - t0, 1)}
