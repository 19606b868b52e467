"""A 48x48 classifier for the `ferplus` protocol: FER2013 images with FER+ majority labels.

Training, PublicTest (selection) and PrivateTest (report) keep the rows that have a FER+ majority
label (`ferplus_majority` in ferjax/data/ferplus.py: the plurality of the 8 emotion votes, ties,
unknown, not-a-face and contempt dropped; 7 classes). The model trains towards each image's vote
distribution over the 7 classes (`vote_targets.weight` 1: Barsoum et al.'s probabilistic label
distribution, PLD) instead of the one-hot majority label.

Variants: `cpu` (default; vgg_small from random weights, 22 epochs, evaluating and exporting a
moving average of the weights; sized for at most 90 minutes on the 2-core VM with evaluation),
`finetune` (vgg_small starting from the shipped `fer2013_distilled`, trained on the same Training
images with Kaggle labels: 14 epochs at half the learning rate), `gpu` (vgg13, 100 epochs), `tiny`
(smoke tests).
"""
import ml_collections

from ferjax.experiments import fer2013_vgg

VARIANTS = ("cpu", "finetune", "gpu", "tiny")


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    variant = variant or "cpu"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} of ferplus_vgg; expected {', '.join(VARIANTS)}")
    c = fer2013_vgg.get_config("cpu" if variant == "finetune" else variant)  # the base recipe's variant
    c.name = f"ferplus_vgg:{variant}"
    c.reproduce_command = f"python -m ferjax.run --experiment=ferplus_vgg:{variant}"
    c.protocol = "ferplus"
    # target = (1 - weight) * smoothed one-hot majority label + weight * the FER+ vote distribution
    c.vote_targets = ml_collections.ConfigDict({"weight": 1.0})
    if variant == "cpu":
        c.train.epochs = 22
        c.train.ema_decay = 0.999  # select and export a moving average of the weights (~5 epochs)
    elif variant == "finetune":
        c.train.init_from = "fer2013_distilled"
        c.train.epochs = 14
        c.train.learning_rate = 1e-3
        c.train.warmup_epochs = 0.5
    return c
