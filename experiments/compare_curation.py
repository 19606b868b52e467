"""Does curation help? `fer2013_vgg:quick` on original vs curated Training, 3 seeds each.

    python -m ferjax.run --experiment=compare_curation --config.curated_dir=CURATED \\
        --config.reuse_baseline_from=runs/compare_balancing/default

Scored on PrivateTest with the original and the FER+ majority labels (mean +- sd over seeds,
bootstrap 95% intervals of the difference); the `as_is` runs of the balancing study are reused
when `reuse_baseline_from` points at it. Variant `tiny`: 2 seeds of a few steps (tests).
"""
import ml_collections

VARIANTS = ("tiny",)


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    from ferjax.experiments.common import study_config

    c = study_config("compare_curation", variant,
                     "python -m ferjax.run --experiment=compare_curation --config.curated_dir=CURATED "
                     "--config.reuse_baseline_from=BALANCING_STUDY")
    c.curated_dir = ""  # the derived dataset folder of a curate_fer2013 run
    c.reuse_baseline_from = ""  # a compare_balancing folder whose as_is runs are reused
    c.focus_class = "disgust"  # the class whose recall is reported beside the summary metrics
    c.seed = 0  # the bootstrap's seed
    return c
