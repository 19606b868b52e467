"""Blocks that several experiment families share (not an experiment itself: `ferjax.config`
leaves this module out of the experiment list)."""
from __future__ import annotations

import ml_collections


def study_config(name: str, variant: str | None, reproduce_command: str) -> ml_collections.ConfigDict:
    """The fields every study experiment has (recipe, seeds, bootstrap, data files); variant
    `tiny` trains `fer2013_vgg:tiny` with 2 seeds (tests)."""
    if variant not in (None, "tiny"):
        raise ValueError(f"unknown variant {variant!r} of {name}; expected tiny or none")
    c = ml_collections.ConfigDict()
    c.name = name + (f":{variant}" if variant else "")
    c.task = name
    c.recipe = "fer2013_vgg:tiny" if variant else "fer2013_vgg:quick"  # any classifier experiment
    c.recipe_overrides = ()  # extra overrides for every run, e.g. ("train.epochs=3",)
    c.seeds = 2 if variant else 3  # seeds 0 .. seeds-1 of every arm
    c.bootstrap = 200 if variant else 2000  # resamples of the test images
    c.data = ml_collections.ConfigDict({"fer2013_path": "", "tfds_data_dir": "", "skip_bad_rows": False,
                                        "limit_per_split": 0})
    c.reproduce_command = reproduce_command
    return c
