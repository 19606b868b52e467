"""A non-finite loss or gradient norm stops training, naming the step; the last good checkpoint stays."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ferjax.data.pipeline import TrainBatches
from ferjax.experiments.fer2013_vgg import get_config
from ferjax.registry import LOSSES
from ferjax.train import sharding
from ferjax.train.checkpoint import Checkpointer
from ferjax.train.classifier_steps import create_state, make_steps
from ferjax.train.loop import NonFinite, fit
from ferjax.train.schedules import make_optimizer, make_schedule


class _Linear(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(7)(x.reshape(x.shape[0], -1) / 255.0)


def test_non_finite_loss_stops_naming_the_step(tmp_path):
    c = get_config("tiny")
    t = c.train
    t.update(log_every_steps=2, checkpoint_every_steps=4, epochs=1)
    c.augment.update(crop_pad=0, flip=False, rotate_deg=0.0, jitter=0.0)
    rng = np.random.default_rng(0)
    arrays = {"image": rng.integers(0, 255, (512, 48, 48, 1)).astype(np.uint8),
              "label": rng.integers(0, 7, 512).astype(np.int32)}
    batches = TrainBatches(arrays, 32, 0)  # 16 steps per epoch
    mesh = sharding.data_mesh(1)
    model = _Linear()
    tx = make_optimizer(t, make_schedule(t, batches.steps_per_epoch))
    train, _ = make_steps(model, tx, LOSSES.create("cross_entropy"), c.augment, 0, mesh)

    def poisoned(state, batch):  # from step 7 on the weights are NaN, so step 8's loss is
        state, metrics = train(state, batch)
        if int(state.step) >= 7:
            state = state.replace(params=jax.tree.map(lambda p: p * jnp.nan, state.params))
        return state, metrics

    state = create_state(model, tx, 0)
    with pytest.raises(NonFinite, match=r"non-finite loss at step 8; .* Last good checkpoint: step 4"):
        fit(state, poisoned, batches, lambda s: {"accuracy": 0.5}, t, tmp_path, mesh)
    ckpt = Checkpointer(tmp_path / "checkpoints", t.select_metric)
    try:
        assert ckpt.latest.all_steps() == [4]
        restored, _ = ckpt.restore_latest(create_state(model, tx, 0))
        assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(restored.params))
    finally:
        ckpt.close()
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    norms = [r["train_grad_norm"] for r in logged if "train_grad_norm" in r]
    assert [r["step"] for r in logged] == [2, 4, 6] and len(norms) == 3
    assert all(np.isfinite(n) and n > 0 for n in norms)
