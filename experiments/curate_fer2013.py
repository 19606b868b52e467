"""Curate FER2013's Training split: remove non-faces, duplicates and leaks, relabel with k-fold CNNs.

    python -m ferjax.run --experiment=curate_fer2013[:cpu|gpu|tiny]

Removal signals (the `curation signal` registry kind, thresholds in `curation_signal_args`) and
confident learning on out-of-fold probabilities of `kfold.folds` classifiers trained with the
`kfold.recipe` experiment decide; the result is a derived dataset (WORKDIR/dataset) to train on with
`--config.dataset=derived --config.data.derived_dir=WORKDIR/dataset`, and WORKDIR/report/report.md
scores it against FER+ human votes, which no decision reads. Variants: `cpu` (default; the
`fer2013_vgg:quick` recipe run for 12 epochs instead of 2, 5 folds: five ~12-minute trainings on 76% of
Training, plus a YuNet pass of a few minutes), `gpu` (full-width vgg_small recipe `fer2013_vgg:cpu`,
5 folds), `tiny` (300 rows per split, 2 folds of a few steps: tests).
Rerunning in the same workdir reuses the finished folds and the detector pass (seconds).
"""
import ml_collections

from ferjax.experiments.common import data_block

VARIANTS = ("cpu", "gpu", "tiny")


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    variant = variant or "cpu"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} of curate_fer2013; expected one of {VARIANTS}")
    c = ml_collections.ConfigDict()
    c.name = f"curate_fer2013:{variant}"
    c.task = "curate"
    c.dataset = "fer2013"  # the base: any registered dataset with a Training split
    c.protocol = "original"
    c.data = data_block()
    c.curation_signals = "blank,text_graphics,no_face,non_frontal,duplicates"
    # Thresholds chosen on Training against FER+ (docs/studies/curation.md gives the figures and how)
    c.curation_signal_args = ml_collections.ConfigDict({
        "blank": {"max_std": 2.0},
        "text_graphics": {"min_mode_fraction": 0.5, "min_saturated_fraction": 0.75},
        "no_face": {"detector": "yunet", "detector_kwargs": {"threshold": 0.05}, "size": 160, "pad": 0.0,
                    "min_score": 0.1, "sideways_margin": 0.3, "sideways_max_score": 0.3, "min_face_area": 0.12,
                    "models_dir": ""},
        "non_frontal": {"detector": "yunet", "detector_kwargs": {"threshold": 0.05}, "size": 160, "pad": 0.0,
                        "max_yaw_ratio": 0.6, "min_score": 0.5, "models_dir": ""},
        "duplicates": {"max_distance": 2, "min_std": 2.0, "conflicts": "remove"},
    })
    c.kfold = ml_collections.ConfigDict({
        "folds": 5,  # 0: no relabeling (removal signals only)
        "recipe": "fer2013_vgg:quick",  # the experiment whose config trains each fold's classifier
        "recipe_overrides": "",  # space-separated KEY=VALUE overrides of the recipe config
        "seed": 0,  # fold assignment and selection split
        "selection_fraction": 0.05,  # of each fold's training rows, held out to pick its best checkpoint
    })
    c.relabel = ml_collections.ConfigDict({
        "filter_by": "prune_by_noise_rate",  # cleanlab's filter: which given labels are issues
        # an issue's new class needs this probability besides its per-class threshold: 0.5, more
        # than all other classes together (cleanlab's thresholds alone go down to 0.07 for disgust)
        "min_prob": 0.5,
        "unconfident": "remove",  # an issue with no confident class: "remove" it or "keep" its label
    })
    c.out_dir = ""  # default WORKDIR/dataset (replaced on a rerun); another folder needs overwrite
    c.overwrite = False
    if variant == "cpu":
        # 12 epochs instead of the comparison recipe's 2: folds at 2 epochs reached 35% out-of-fold
        # accuracy, too weak to judge labels
        c.kfold.recipe_overrides = "train.epochs=12 train.warmup_epochs=0.5"
    elif variant == "gpu":
        c.kfold.recipe = "fer2013_vgg:cpu"
    elif variant == "tiny":
        c.data.limit_per_split = 300
        c.kfold.folds = 2
        c.kfold.recipe = "fer2013_vgg:tiny"
        c.kfold.selection_fraction = 0.1
    return c
