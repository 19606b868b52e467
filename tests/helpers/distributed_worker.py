"""One process of a data-parallel run: 2 train steps + eval, params and logits saved to a file.

Usage: distributed_worker.py PROCESS_ID NUM_PROCESSES PORT OUT.npz (NUM_PROCESSES=1: no jax.distributed).
"""
import sys
pid, nproc, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
import jax
jax.config.update("jax_enable_x64", True)
if nproc > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=nproc, process_id=pid)
import numpy as np
from ferjax.registry import CLASSIFIERS, LOSSES
from ferjax.train import sharding
from ferjax.train.classifier_steps import create_state, make_steps
from ferjax.train.schedules import make_optimizer, make_schedule
from ferjax.experiments.fer2013_vgg import get_config
c = get_config("tiny")
model = CLASSIFIERS.create("vgg_small", dropout=0.3)
loss = LOSSES.create("cross_entropy", num_classes=7, label_smoothing=0.1)
tx = make_optimizer(c.train, make_schedule(c.train, 10))
rng = np.random.default_rng(0)
batch = {"image": rng.integers(0, 255, (8, 48, 48, 1)).astype(np.uint8), "label": rng.integers(0, 7, 8).astype(np.int32)}
mesh = sharding.data_mesh()
train, ev = make_steps(model, tx, loss, c.augment, 0, mesh, sync_batch_norm=True)  # exact vs one process
variables = jax.tree.map(lambda a: a.astype(np.float64), model.init(jax.random.key(0), np.zeros((1, 48, 48, 1)), train=False))
state = jax.device_put(create_state(model, tx, 0, variables=variables), sharding.replicated(mesh))
for _ in range(2):
    state, m = train(state, sharding.put_batch(batch, mesh))
logits = sharding.fetch(ev(state, sharding.put_batch(batch, mesh)))
leaves = [np.asarray(x.addressable_data(0)) for x in jax.tree.leaves(state.params)]
np.savez(out, logits=logits, *leaves)
print("devices", jax.device_count(), "processes", jax.process_count(), "logits", logits.shape)
