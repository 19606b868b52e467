"""One process of a two-process run of `fit` under jax.distributed, slowed to ~20 steps/s so a test
can send SIGTERM mid-run.

Usage: preempt_worker.py PROCESS_ID NUM_PROCESSES PORT WORKDIR. Prints `training` when the loop
starts; exits 3 with `interrupted ... at step N` after a preemption notice.
"""
import sys
import time

pid, nproc, port, workdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=nproc, process_id=pid)
import flax.linen as nn  # noqa: E402
import numpy as np  # noqa: E402

from ferjax.data.pipeline import TrainBatches  # noqa: E402
from ferjax.experiments.fer2013_vgg import get_config  # noqa: E402
from ferjax.registry import LOSSES  # noqa: E402
from ferjax.train import sharding  # noqa: E402
from ferjax.train.classifier_steps import create_state, make_steps  # noqa: E402
from ferjax.train.loop import Interrupted, fit  # noqa: E402
from ferjax.train.schedules import make_optimizer, make_schedule  # noqa: E402


class Linear(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(7)(x.reshape(x.shape[0], -1) / 255.0)


c = get_config("tiny")
c.train.update(epochs=10_000, log_every_steps=1_000_000, checkpoint_every_steps=1_000_000)
c.augment.update(crop_pad=0, flip=False, rotate_deg=0.0, jitter=0.0)
rng = np.random.default_rng(0)
arrays = {"image": rng.integers(0, 255, (256, 48, 48, 1)).astype(np.uint8),
          "label": rng.integers(0, 7, 256).astype(np.int32)}
batches = TrainBatches(arrays, 8, 0)
mesh = sharding.data_mesh()
model = Linear()
tx = make_optimizer(c.train, make_schedule(c.train, batches.steps_per_epoch))
train, _ = make_steps(model, tx, LOSSES.create("cross_entropy"), c.augment, 0, mesh)


def slow_step(state, batch):
    time.sleep(0.05)
    return train(state, batch)


state = jax.device_put(create_state(model, tx, 0), sharding.replicated(mesh))
print("training", flush=True)
try:
    fit(state, slow_step, batches, lambda s: {"accuracy": 0.0}, c.train, workdir, mesh)
except Interrupted as e:
    print(f"interrupted {e}", flush=True)
    sys.exit(3)
print("finished without a preemption notice", flush=True)
