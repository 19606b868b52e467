"""The paper's classifier recipe (seed §III-D): VGG-Face transfer learning on FER2013 (`original`).

`vggface_fer` = VGG-Face's 13 conv layers (weights from `--config.backbone_weights`, a file made
by `python -m ferjax.convert`), flatten, Dense 128, Dropout 0.3, Dense 7; Adam 1e-3 with beta1
0.5, batch 128, early stopping and the best checkpoint on PublicTest accuracy, reduce-on-plateau.
`--config.classifier_kwargs.trainable_from=head|conv5_1|...` freezes the backbone by configuration.

Variants:
- `paper` (default): 48x48 grey resized to 224x224 RGB, 20 epochs: a GPU run (VGG-16 at 224
  forwards ~3 images/s on the 2-core development CPU, GUIDE.md §5).
- `cpu`: the same recipe at 48x48 input (no resize; pool5 is 1x1x512), batch 64, 3 epochs, sized
  for about an hour on a 2-core CPU. With converted weights it shows transfer learning at low
  resolution; without them it trains VGG-16 from random weights and shows only that the pipeline
  (transfer head, freezing, curves, confusion matrix) runs end to end, not the paper's accuracy.
- `tiny`: a few steps of a narrow VGG-Face on a few hundred images (smoke tests).
"""
import ml_collections

from ferjax.experiments import fer2013_vgg

VARIANTS = ("paper", "cpu", "tiny")


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    variant = variant or "paper"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} of vggface_fer2013; expected {', '.join(VARIANTS)}")
    c = fer2013_vgg.get_config("cpu")  # shared data, logging and checkpoint fields
    c.name = f"vggface_fer2013:{variant}"
    c.reproduce_command = f"python -m ferjax.run --experiment=vggface_fer2013:{variant}"
    c.backbone_weights = ""  # a converted VGG-Face msgpack (top or notop); "" = random initialisation
    c.classifier = "vggface_fer"
    c.classifier_kwargs = ml_collections.ConfigDict({
        "image_size": 224, "dropout": 0.3, "trainable_from": "",
        "backbone_weights": c.get_ref("backbone_weights")})
    c.loss_kwargs.label_smoothing = 0.0
    c.augment.update(crop_pad=0, flip=False, rotate_deg=0.0, jitter=0.0)  # the paper names no augmentation
    t = c.train
    t.optimizer = "adam"
    t.learning_rate = 1e-3
    t.b1 = 0.5
    t.weight_decay = 0.0
    t.batch_size = 128
    t.eval_batch_size = 128
    t.epochs = 20
    t.schedule = "constant"
    t.warmup_epochs = 0.0
    t.plateau.update(factor=0.5, patience=2)
    t.early_stop_patience = 5
    t.select_metric = "accuracy"
    if variant == "cpu":
        c.classifier_kwargs.image_size = 48
        t.batch_size = 64
        t.eval_batch_size = 256
        t.epochs = 3
        t.plateau.patience = 1
        t.early_stop_patience = 2
    elif variant == "tiny":
        c.classifier_kwargs.update(image_size=32, widths=(4, 4, 8, 8, 8))
        c.data.limit_per_split = 128
        t.batch_size = 32
        t.eval_batch_size = 64
        t.epochs = 1
        t.log_every_steps = 2
        t.checkpoint_every_steps = 2
        t.early_stop_patience = 0
    return c
