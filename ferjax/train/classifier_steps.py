"""Jit-compiled train and eval steps for expression classifiers."""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, PartitionSpec as P

from ferjax.data.augment import augment_batch
from ferjax.nn import init_variables
from ferjax.train import sharding


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    lr_scale: jax.Array  # set by the host's reduce-on-plateau

    @property
    def live_variables(self) -> dict:
        """The weights the optimizer updates."""
        return {"params": self.params, "batch_stats": self.batch_stats}

    @property
    def variables(self) -> dict:
        """The weights to evaluate, select and export."""
        return self.live_variables


@flax.struct.dataclass
class EmaTrainState(TrainState):
    """A state that also keeps a moving average of the weights (`train.ema_decay` > 0); a
    subclass, so that states (and checkpoints) without one keep their old structure."""
    ema: Any = None  # {"params", "batch_stats"}

    @property
    def variables(self) -> dict:
        return self.ema


def create_state(model: nn.Module, tx: optax.GradientTransformation, seed: int,
                 input_shape=(1, 48, 48, 1), variables: Any = None, ema: bool = False) -> TrainState:
    """Fresh state (or one around given `variables`, e.g. converted pretrained weights); `ema`
    keeps a moving average of the weights, starting from the initial ones."""
    if variables is None:
        variables = init_variables(model, jax.random.key(seed), jnp.zeros(input_shape, jnp.float32))
    params = variables["params"]
    fields = dict(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables.get("batch_stats", {}),
                  opt_state=tx.init(params), lr_scale=jnp.ones((), jnp.float32))
    if not ema:
        return TrainState(**fields)
    return EmaTrainState(**fields, ema=jax.tree.map(jnp.copy, {"params": params,
                                                                "batch_stats": fields["batch_stats"]}))


def ema_update(ema: Any, live: Any, step: jax.Array, decay: float) -> Any:
    """One step of the weights' exponential moving average. The decay ramps up as
    min(decay, (1 + step) / (10 + step)), so early averages do not cling to the random start."""
    d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
    return jax.tree.map(lambda e, x: e + (1.0 - d) * (x - e), ema, live)


def l2_adversarial(loss_of_input: Callable, x: jax.Array, key: jax.Array, eps: float,
                   steps: int) -> jax.Array:
    """Inputs within L2 distance `eps` of each example of `x` (pixels in [0, 255]) that raise
    `loss_of_input`: projected gradient ascent (Madry et al.) from a random start inside the ball,
    `steps` normalised steps of 2.5 eps / steps, each projected back onto the ball and [0, 255]."""
    axes = tuple(range(1, x.ndim))

    def norm(v):
        return jnp.sqrt(jnp.sum(v * v, axis=axes, keepdims=True)) + 1e-12
    k_dir, k_rad = jax.random.split(key)
    d = jax.random.normal(k_dir, x.shape, x.dtype)
    d = d / norm(d) * eps * jax.random.uniform(k_rad, (x.shape[0],) + (1,) * len(axes), x.dtype)
    d = jnp.clip(x + d, 0.0, 255.0) - x
    for _ in range(steps):
        g = jax.grad(loss_of_input)(x + d)
        d = d + (2.5 * eps / steps) * g / norm(g)
        d = d * jnp.minimum(1.0, eps / norm(d))
        d = jnp.clip(x + d, 0.0, 255.0) - x
    return jax.lax.stop_gradient(x + d)


def make_steps(model: nn.Module, tx: optax.GradientTransformation, loss_fn: Callable,
               augment: ml_collections.ConfigDict, seed: int, mesh: Mesh, sync_batch_norm: bool = False,
               ema_decay: float = 0.0, adversarial_eps: float = 0.0, adversarial_steps: int = 1,
               adversarial_ramp_steps: int = 0):
    """(train_step, eval_step), jitted over `mesh`: state replicated, batches split on `data`.

    By default each device runs forward and backward on its shard with its own batch-norm
    statistics and one all-reduce averages the gradients (PyTorch DDP's semantics): on a CPU split
    into devices this is what keeps the cores busy side by side. `sync_batch_norm=True` computes
    batch statistics over the global batch instead (one all-reduce per batch-norm layer; the
    result equals a single-device step on the whole batch). On one device both are the same step.
    With an `EmaTrainState` (`create_state(..., ema=True)`) each step also updates the moving
    average of the weights that evaluation and export use. `adversarial_eps` > 0 (L2 radius, pixels
    in [0, 1]) trains on `l2_adversarial` examples of each augmented batch instead of the batch
    itself (adversarial training: a robust classifier, whose input gradients change faces the way
    other classifiers read, for class guides); each attack step costs about one more train step.
    The radius grows linearly from 0 over the first `adversarial_ramp_steps` steps (at the full
    radius from the start, a small network from scratch stays at the majority class).
    """
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay={ema_decay}: expected a decay in [0, 1)")
    if adversarial_eps < 0 or adversarial_steps < 1:
        raise ValueError(f"adversarial_eps={adversarial_eps}, adversarial_steps={adversarial_steps}: "
                         f"expected a radius >= 0 and at least one step")
    base_key = jax.random.key(seed)
    axis = None if sync_batch_norm or mesh.size == 1 else "data"

    def train_step(state: TrainState, batch: dict):
        key = jax.random.fold_in(base_key, state.step)
        if axis:
            key = jax.random.fold_in(key, jax.lax.axis_index(axis))  # own dropout/augment per shard
        k_aug, k_drop = jax.random.split(key)  # (unchanged stream: earlier runs reproduce)
        x = augment_batch(k_aug, batch["image"].astype(jnp.result_type(float)), augment)
        extra = (batch["teacher_probs"],) if "teacher_probs" in batch else ()  # distillation

        def forward(params, inputs):
            return model.apply({"params": params, "batch_stats": state.batch_stats}, inputs,
                               train=True, mutable=["batch_stats"], rngs={"dropout": k_drop})

        if adversarial_eps > 0:
            ramp = jnp.minimum(1.0, (state.step + 1) / adversarial_ramp_steps) if adversarial_ramp_steps else 1.0
            x = l2_adversarial(lambda xi: loss_fn(forward(state.params, xi)[0], batch["label"], *extra),
                               x, jax.random.fold_in(key, 0xAD7), adversarial_eps * 255.0 * ramp,
                               adversarial_steps)

        def objective(params):
            logits, updates = forward(params, x)
            return loss_fn(logits, batch["label"], *extra), (logits, updates)

        (loss, (logits, updates)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        batch_stats = updates.get("batch_stats", state.batch_stats)
        acc = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        if axis:
            grads, batch_stats, loss, acc = jax.lax.pmean((grads, batch_stats, loss, acc), axis)
        steps, opt_state = tx.update(grads, state.opt_state, state.params)
        steps = jax.tree.map(lambda u: u * state.lr_scale, steps)
        new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, steps),
                                  batch_stats=batch_stats, opt_state=opt_state)
        if isinstance(state, EmaTrainState):
            new_state = new_state.replace(
                ema=ema_update(state.ema, new_state.live_variables, state.step, ema_decay))
        return new_state, {"loss": loss, "accuracy": acc, "grad_norm": optax.tree.norm(grads)}

    def eval_step(state: TrainState, batch: dict):
        logits = model.apply(state.variables, batch["image"].astype(jnp.result_type(float)), train=False)
        return logits

    rep, data = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    step_fn = train_step
    if axis:
        step_fn = jax.shard_map(train_step, mesh=mesh, in_specs=(P(), P(axis)), out_specs=(P(), P()),
                                check_vma=False)
    train = jax.jit(step_fn, in_shardings=(rep, data), out_shardings=(rep, rep), donate_argnums=0)
    evaluate = jax.jit(eval_step, in_shardings=(rep, data), out_shardings=data)
    return train, evaluate
