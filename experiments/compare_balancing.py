"""Does CycleGAN balancing help? `fer2013_vgg:quick` trained four ways x 3 seeds (docs/studies/balancing.md).

    python -m ferjax.run --experiment=compare_balancing \\
        --config.generator_checkpoint=runs/cyclegan_neutral2disgust/cpu/generator

Arms: as_is, cyclegan (disgust topped up to the median class size with generated images),
oversample (topped up with copies of the real disgust images), class_weighted (loss weights);
add `gan_train` to --config.arms for GAN-train (the real disgust images replaced by as many
generated ones), and `cyclegan_matched` for the cyclegan arm plus matched negatives (each generated
image's round trip F(G(x)) labelled neutral; balance_fer2013's `matched_negatives`), and
`cyclegan_detail` for the cyclegan arm with the source photograph's fine detail in place of the
generator's (balance_fer2013's `source_detail_sigma`), and `logit_adjusted` for the as_is
classifiers with post-hoc logit adjustment (no training of its own).
Writes WORKDIR/comparison.md (tables: mean +- sd over seeds; bootstrap 95% intervals of the
difference from as_is over PrivateTest images) with confusion PNGs; rerun to resume.
Variant `tiny`: 2 arms x 2 seeds of a few steps on a few hundred images (tests).
"""
import ml_collections

VARIANTS = ("tiny",)


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    from ferjax.experiments.common import study_config

    c = study_config("compare_balancing", variant, "python -m ferjax.run --experiment=compare_balancing "
                                                   "--config.generator_checkpoint=GENERATOR_DIR")
    c.arms = "as_is,oversample,class_weighted" if variant else \
        "as_is,cyclegan,oversample,class_weighted"  # and optionally gan_train, cyclegan_matched, cyclegan_detail, logit_adjusted
    c.generator_checkpoint = ""  # the cyclegan (and gan_train) arm's generator folder
    # the cyclegan_matched arm's reverse generator ("": generator_reverse beside generator_checkpoint)
    c.reverse_generator_checkpoint = ""
    # the cyclegan_detail arm's blur (px): generated coarse content + the source image's fine detail
    c.source_detail_sigma = 1.0
    c.source_class = "neutral"
    c.target_class = "disgust"
    c.target_count = 0  # 0: the median Training class size
    c.balance_seed = 0  # which source images are translated / copied; the bootstrap's seed
    return c
