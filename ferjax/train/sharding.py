"""Device mesh for data-parallel training over all (local and, after jax.distributed, global) devices."""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def data_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh with axis `data` (Auto axis type, so linen Dropout works inside sharded steps)."""
    devices = jax.devices()[: num_devices or None]
    return Mesh(np.asarray(devices), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def process_slice(batch: dict) -> dict:
    """This process's contiguous share of a global batch (all of it on a single host)."""
    n, i = jax.process_count(), jax.process_index()
    if n == 1:
        return batch
    size = len(next(iter(batch.values())))
    if size % n:
        raise ValueError(f"global batch of {size} does not split over {n} processes")
    part = size // n
    return {k: v[i * part:(i + 1) * part] for k, v in batch.items()}


def put_batch(batch: dict, mesh: Mesh) -> dict:
    """Places a global batch on the mesh, split along the batch axis; each process uploads only
    its own share, so every host can iterate the same global order."""
    sharding = batch_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v)
            for k, v in process_slice(batch).items()}


def is_primary() -> bool:
    """Whether this process writes the run's files (configs, reports, plots, exports): process 0
    under jax.distributed, always on a single host. Checkpoints go through Orbax, which coordinates
    its own writes."""
    return jax.process_index() == 0


def fetch(array: jax.Array) -> np.ndarray:
    """A global array as numpy on every process (gathers across hosts when needed)."""
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(array))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(array, tiled=True))

