"""Does CycleGAN balancing help? `fer2013_vgg:quick` trained four ways x 3 seeds (README: results).

    python -m ferjax.run --experiment=compare_balancing \\
        --config.generator_checkpoint=runs/cyclegan_neutral2disgust/cpu/generator

Arms: as_is, cyclegan (disgust topped up to the median class size with generated images),
oversample (topped up with copies of the real disgust images), class_weighted (loss weights);
add `gan_train` to --config.arms for GAN-train (the real disgust images replaced by as many
generated ones).
Writes WORKDIR/comparison.md (tables: mean +- sd over seeds; bootstrap 95% intervals of the
difference from as_is over PrivateTest images) with confusion PNGs; rerun to resume.
Variant `tiny`: 2 arms x 2 seeds of a few steps on a few hundred images (tests).
"""
import ml_collections

VARIANTS = ("tiny",)


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "compare_balancing" + (f":{variant}" if variant else "")
    c.task = "compare_balancing"
    c.recipe = "fer2013_vgg:quick"  # any classifier experiment
    c.recipe_overrides = ()  # extra overrides for every run, e.g. ("train.epochs=3",)
    c.arms = "as_is,cyclegan,oversample,class_weighted"  # and optionally gan_train
    c.seeds = 3  # seeds 0 .. seeds-1 of every arm
    c.generator_checkpoint = ""  # the cyclegan arm's generator folder
    c.source_class = "neutral"
    c.target_class = "disgust"
    c.target_count = 0  # 0: the median Training class size
    c.balance_seed = 0  # which source images are translated / copied; the bootstrap's seed
    c.bootstrap = 2000  # resamples of the test images
    c.data = ml_collections.ConfigDict({"fer2013_path": "", "tfds_data_dir": "", "skip_bad_rows": False,
                                        "limit_per_split": 0})
    c.reproduce_command = "python -m ferjax.run --experiment=compare_balancing " \
                          "--config.generator_checkpoint=GENERATOR_DIR"
    if variant == "tiny":
        c.recipe = "fer2013_vgg:tiny"
        c.arms = "as_is,oversample,class_weighted"
        c.seeds = 2
        c.bootstrap = 200
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of compare_balancing; expected one of {VARIANTS}")
    return c
