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


def put_batch(batch: dict, mesh: Mesh) -> dict:
    """Places this process's slice of a global batch on the mesh, split along the batch axis."""
    sharding = batch_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
