"""Losses: classification, adversarial (LSGAN) and the paper's cycle loss (L1 + L2 + 1 - SSIM) / 3."""
from __future__ import annotations

from typing import Callable

import dm_pix as pix
import jax
import jax.numpy as jnp
import optax

from ferjax.registry import LOSSES


@LOSSES.register("cross_entropy")
def cross_entropy(num_classes: int = 7, label_smoothing: float = 0.0,
                  class_weights: tuple = (), distill_weight: float = 0.0) -> Callable:
    """Softmax cross-entropy on integer labels, with optional label smoothing and class weights.

    With `class_weights` (one per class) it is the weighted mean, normalised by the batch's total
    weight (PyTorch's `CrossEntropyLoss(weight=...)` convention). With `distill_weight` w > 0
    (knowledge distillation) the target is (1 - w) * smoothed one-hot + w * the teacher's class
    probabilities, passed as the loss's third argument."""
    if class_weights and len(class_weights) != num_classes:
        raise ValueError(f"cross_entropy: {len(class_weights)} class_weights for {num_classes} classes")
    if not 0.0 <= distill_weight <= 1.0:
        raise ValueError(f"cross_entropy: distill_weight={distill_weight} outside [0, 1]")
    weights = jnp.asarray(class_weights, jnp.float32) if class_weights else None

    def loss(logits: jax.Array, labels: jax.Array, teacher_probs: jax.Array | None = None) -> jax.Array:
        targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
        if distill_weight:
            if teacher_probs is None:
                raise ValueError("cross_entropy: distill_weight > 0 needs the teacher's probabilities "
                                 "(a `teacher_probs` batch field; set distill.teachers)")
            targets = (1.0 - distill_weight) * targets + distill_weight * teacher_probs
        per_example = optax.softmax_cross_entropy(logits, targets)
        if weights is None:
            return per_example.mean()
        w = weights[labels].astype(per_example.dtype)
        return (w * per_example).sum() / w.sum()

    return loss


@LOSSES.register("lsgan")
def lsgan() -> Callable:
    """Least-squares GAN loss: mean((prediction - target)^2), target 1 for real, 0 for fake."""

    def loss(prediction: jax.Array, target: float) -> jax.Array:
        return jnp.mean((prediction - target) ** 2)

    return loss


@LOSSES.register("ssim")
def ssim(max_val: float = 2.0) -> Callable:
    """1 - SSIM (dm-pix) for [N,H,W,C] images in [-1, 1] (max_val = dynamic range)."""

    def loss(a: jax.Array, b: jax.Array) -> jax.Array:
        return 1.0 - jnp.mean(pix.ssim(a, b, max_val=max_val))

    return loss


@LOSSES.register("cycle_l1_l2_ssim")
def cycle_l1_l2_ssim(max_val: float = 2.0) -> Callable:
    """The paper's cycle-consistency loss: (L1 + L2 + (1 - SSIM)) / 3."""
    dssim = ssim(max_val)

    def loss(a: jax.Array, b: jax.Array) -> jax.Array:
        return (jnp.mean(jnp.abs(a - b)) + jnp.mean((a - b) ** 2) + dssim(a, b)) / 3.0

    return loss


@LOSSES.register("l1")
def l1() -> Callable:
    """Mean absolute error (CycleGAN's original cycle and identity loss)."""
    return lambda a, b: jnp.mean(jnp.abs(a - b))
