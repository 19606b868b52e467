"""Train a VGG-style classifier on FER2013 under the `original` protocol.

Variants: `cpu` (default; vgg_small, sized for a 2-core CPU), `quick` (the comparison recipe: vgg_small at
half width for 2 epochs, a few minutes on 2 cores, for multi-seed studies such as balancing and
curation), `gpu` (vgg13, longer), `paper`
(the paper's VGG-Face transfer recipe: the same config as `vggface_fer2013:paper`), `tiny` (a few
steps on a few hundred images, for smoke tests).
"""
import ml_collections

from ferjax.experiments.common import classifier_train_block, data_block

VARIANTS = ("cpu", "quick", "gpu", "paper", "tiny")


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    variant = variant or "cpu"
    c = ml_collections.ConfigDict()
    c.name = f"fer2013_vgg:{variant}"
    c.task = "train_classifier"
    c.classifier = "vgg_small"
    c.classifier_kwargs = ml_collections.ConfigDict({"dropout": 0.4, "width": 1.0})
    c.dataset = "fer2013"
    c.protocol = "original"
    c.loss = "cross_entropy"
    c.loss_kwargs = ml_collections.ConfigDict({"num_classes": 7, "label_smoothing": 0.1})
    c.data = data_block()  # with --config.dataset=derived: data.derived_dir, a derived dataset folder
    c.augment = ml_collections.ConfigDict({"crop_pad": 4, "flip": True, "rotate_deg": 10.0,
                                           "jitter": 0.1})
    t = c.train = classifier_train_block()
    c.export_to = ""
    c.export_name = ""
    c.export_note = ""
    c.reproduce_command = f"python -m ferjax.run --experiment=fer2013_vgg:{variant}"
    if variant == "cpu":
        pass
    elif variant == "quick":
        # ~300 img/s on the 2-core VM (2.3x the full width): ~3.5 minutes with evaluation
        c.classifier_kwargs.width = 0.5
        t.epochs = 2
        t.warmup_epochs = 0.25
        t.early_stop_patience = 0
    elif variant == "gpu":
        c.classifier = "vgg13"
        t.epochs = 100
        t.early_stop_patience = 20
    elif variant == "paper":  # the recipe's one home is vggface_fer2013
        from ferjax.experiments import vggface_fer2013  # noqa: PLC0415

        return vggface_fer2013.get_config("paper")
    elif variant == "tiny":
        c.classifier_kwargs.dropout = 0.0
        c.data.limit_per_split = 256
        c.augment.rotate_deg = 0.0
        t.batch_size = 32
        t.eval_batch_size = 64
        t.epochs = 2
        t.log_every_steps = 2
        t.checkpoint_every_steps = 4
        t.early_stop_patience = 0
    else:
        raise ValueError(f"unknown variant {variant!r} of fer2013_vgg; expected one of {VARIANTS}")
    return c
