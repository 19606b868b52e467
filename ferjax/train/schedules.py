"""Learning-rate schedules, optimizers, and host-side reduce-on-plateau / early stopping."""
from __future__ import annotations

import dataclasses

import ml_collections
import optax


def make_schedule(cfg: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """`constant`, `cosine` (with warmup), or `linear_decay` (constant, then linear to 0: CycleGAN).
    `cfg`: a train block (experiments/common.py `train_block`), every field declared."""
    lr = cfg.learning_rate
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    kind = cfg.schedule
    if kind == "constant":
        main = optax.constant_schedule(lr)
    elif kind == "cosine":
        main = optax.cosine_decay_schedule(lr, max(1, total - warmup), alpha=cfg.final_lr_ratio)
    elif kind == "linear_decay":
        start = int(cfg.decay_start_epoch * steps_per_epoch)
        main = optax.join_schedules(
            [optax.constant_schedule(lr), optax.linear_schedule(lr, 0.0, max(1, total - start))],
            [max(0, start - warmup)])
    else:
        raise ValueError(f"unknown schedule {kind!r}; expected constant, cosine or linear_decay")
    if warmup:
        return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])
    return main


def make_optimizer(cfg: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
    """adam / adamw / sgd (momentum) with optional global-norm clipping."""
    name = cfg.optimizer
    if name == "adam":
        opt = optax.adam(schedule, b1=cfg.b1, b2=cfg.b2)
    elif name == "adamw":
        opt = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)
    elif name == "sgd":
        opt = optax.sgd(schedule, momentum=cfg.momentum, nesterov=True)
    else:
        raise ValueError(f"unknown optimizer {name!r}; expected adam, adamw or sgd")
    if cfg.grad_clip:
        opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), opt)
    return opt


@dataclasses.dataclass
class ReduceOnPlateau:
    """Multiplies the learning rate by `factor` after `patience` epochs without improvement."""

    factor: float = 0.5
    patience: int = 3
    min_scale: float = 1e-3
    mode: str = "max"
    scale: float = 1.0
    best: float | None = None
    bad_epochs: int = 0

    def update(self, value: float) -> float:
        if self.best is None or (value > self.best if self.mode == "max" else value < self.best):
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= self.patience:
                self.scale = max(self.min_scale, self.scale * self.factor)
                self.bad_epochs = 0
        return self.scale


@dataclasses.dataclass
class EarlyStopping:
    """Stops after `patience` epochs without improvement (0 disables)."""

    patience: int = 0
    mode: str = "max"
    best: float | None = None
    bad_epochs: int = 0

    def update(self, value: float) -> bool:
        """Records `value`; True when training should stop."""
        if self.best is None or (value > self.best if self.mode == "max" else value < self.best):
            self.best, self.bad_epochs = value, 0
            return False
        self.bad_epochs += 1
        return bool(self.patience) and self.bad_epochs >= self.patience
