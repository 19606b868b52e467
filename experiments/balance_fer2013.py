"""Balance FER2013's Training split with a generator (CycleGAN neutral -> disgust) into a derived dataset.

    python -m ferjax.run --experiment=balance_fer2013 --config.generator_checkpoint=DIR

DIR holds generator.json and generator.msgpack (ferjax.train.generator_export). Source-class
Training images, each at most once, are translated until the target class has `target_count`
examples (0: the median Training class size). Train on the result with
`--config.dataset=derived --config.data.derived_dir=OUT` in any classifier experiment.
`--config.method=oversample` instead adds seeded copies of the real target-class images up to the
same count (random oversampling; no generator). To balance
a curated set, set `dataset=derived` and `data.derived_dir` to it here too. `replace_real=True`
puts generated images in place of the real target-class ones (GAN-train).
`matched_negatives=RUN/generator_reverse` also adds each generated image's round trip F(G(x)),
labelled with the source class. `source_detail_sigma=S` keeps each generated image's coarse
content (blurred at S px) and puts the source photograph's fine detail back (a generator's blur and
checkerboard are a signature a classifier can learn instead of the expression).
"""
import ml_collections

from ferjax.experiments.common import data_block


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    if variant:
        raise ValueError(f"balance_fer2013 has no variants (got {variant!r})")
    c = ml_collections.ConfigDict()
    c.name = "balance_fer2013"
    c.task = "balance"
    c.dataset = "fer2013"  # the base: any registered dataset (`derived` for a curated set)
    c.protocol = "original"
    c.data = data_block()
    # "generator": translate source_class images with generator_checkpoint; "oversample": add copies
    # of the real target_class images (random oversampling, the baseline CycleGAN balancing must beat)
    c.method = "generator"
    c.generator_checkpoint = ""  # folder with generator.json + generator.msgpack, or a registered pretrained generator
    c.source_class = "neutral"
    c.target_class = "disgust"
    c.target_count = 0  # examples of target_class afterwards; 0: the median Training class size
    # True: remove the real target_class examples first (GAN-train: generated in place of the real);
    # target_count 0 then means as many as were removed
    c.replace_real = False
    # a reverse generator folder (a CycleGAN run's generator_reverse): beside each generated target
    # image G(x), add the round trip F(G(x)) labelled source_class, so that the generators' look
    # is found on both labels and cannot tell the target class ("" : off)
    c.matched_negatives = ""
    # > 0: each generated image = its Gaussian blur at this sigma (px) + the source image's fine
    # detail (source - its blur), so the generator's texture does not mark the added images (0: off)
    c.source_detail_sigma = 0.0
    c.batch_size = 64  # images per generator call
    c.seed = 0  # which source images are translated
    c.out_dir = ""  # default: WORKDIR/dataset
    c.overwrite = False
    return c
