"""Blocks that several experiment families share (not an experiment itself: `ferjax.config`
leaves this module out of the experiment list)."""
from __future__ import annotations

import ml_collections


def data_block(derived_dir: bool = True) -> ml_collections.ConfigDict:
    """Where FER2013 is read from: `fer2013_path` (else $FER2013_PATH or TFDS's manual folder), the
    prepared TFDS folder, whether malformed rows are skipped, a per-split cap (smoke tests), and,
    with `derived_dir`, the folder of a derived dataset (`--config.dataset=derived`)."""
    d = {"fer2013_path": "", "tfds_data_dir": "", "skip_bad_rows": False, "limit_per_split": 0}
    if derived_dir:
        d["derived_dir"] = ""
    return ml_collections.ConfigDict(d)


def train_block(**fields) -> ml_collections.ConfigDict:
    """The fields of ferjax's training loop (ferjax.train.loop, schedules, sharding), at the values
    most recipes use; `fields` set a family's own values (and may add fields)."""
    t = ml_collections.ConfigDict()
    t.seed = 0
    t.batch_size = 128
    t.epochs = 24
    t.optimizer = "adamw"
    t.learning_rate = 2e-3
    t.b1 = 0.9
    t.b2 = 0.999
    t.weight_decay = 5e-4  # adamw
    t.momentum = 0.9  # sgd (Nesterov)
    t.grad_clip = 0.0
    t.schedule = "cosine"
    t.final_lr_ratio = 0.01  # cosine: the last step's learning rate over the first
    t.warmup_epochs = 1.0
    t.decay_start_epoch = 0
    t.plateau = ml_collections.ConfigDict({"factor": 0.5, "patience": 100, "min_scale": 1e-3})
    t.early_stop_patience = 10
    t.select_metric = "accuracy"
    t.select_mode = "max"
    t.log_every_steps = 20
    t.checkpoint_every_steps = 100
    t.max_steps = 0
    t.num_devices = 0
    for key, value in fields.items():
        t[key] = value
    return t


def classifier_train_block(**fields) -> ml_collections.ConfigDict:
    """`train_block` plus what a classifier run adds: evaluation batch, batch-norm sync, mixed
    precision, fine-tuning, class weights, logit adjustment, a moving average of the weights and
    adversarial training."""
    t = train_block()
    t.eval_batch_size = 256
    t.sync_batch_norm = False  # per-device batch statistics (DDP semantics); True: global batch
    t.compute_dtype = "float32"  # or "bfloat16" (mixed precision; parameters stay float32)
    t.init_from = ""  # a registered pretrained model (same classifier) whose weights start the run
    t.class_weighting = "none"  # or "balanced": loss weights n / (7 n_class) from the Training labels
    # "select": after training, subtract tau * log(Training class frequency) from the logits, tau chosen
    # on PublicTest (ferjax.eval.logit_adjustment); folded into the exported output bias
    t.logit_adjustment = "none"
    t.ema_decay = 0.0  # > 0: evaluate, select and export a moving average of the weights (e.g. 0.999)
    # > 0: adversarial training on L2 PGD examples within this radius (pixels in [0, 1]), each of
    # adversarial_steps steps costing about one more train step: a robust classifier (class guides)
    t.adversarial_eps = 0.0
    t.adversarial_steps = 1
    t.adversarial_warmup_epochs = 0.0  # the radius grows from 0 over these epochs
    for key, value in fields.items():
        t[key] = value
    return t


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
    c.data = data_block(derived_dir=False)
    c.reproduce_command = reproduce_command
    return c
