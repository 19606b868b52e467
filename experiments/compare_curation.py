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
    c = ml_collections.ConfigDict()
    c.name = "compare_curation" + (f":{variant}" if variant else "")
    c.task = "compare_curation"
    c.recipe = "fer2013_vgg:quick"
    c.recipe_overrides = ()
    c.seeds = 3
    c.curated_dir = ""  # the derived dataset folder of a curate_fer2013 run
    c.reuse_baseline_from = ""  # a compare_balancing folder whose as_is runs are reused
    c.focus_class = "disgust"  # the class whose recall is reported beside the summary metrics
    c.seed = 0  # the bootstrap's seed
    c.bootstrap = 2000
    c.data = ml_collections.ConfigDict({"fer2013_path": "", "tfds_data_dir": "", "skip_bad_rows": False,
                                        "limit_per_split": 0})
    c.reproduce_command = ("python -m ferjax.run --experiment=compare_curation --config.curated_dir=CURATED "
                           "--config.reuse_baseline_from=BALANCING_STUDY")
    if variant == "tiny":
        c.recipe = "fer2013_vgg:tiny"
        c.seeds = 2
        c.bootstrap = 200
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of compare_curation; expected one of {VARIANTS}")
    return c
