"""The split host CPU (`split_host_cpu`): device count and XLA:CPU's collective timeout."""
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO

# Two CPU devices; device 0 reaches the all-reduce `delay` seconds after device 1.
STARVED_ALL_REDUCE = textwrap.dedent("""
    import os, sys, time
    from ferjax.jax_setup import split_host_cpu
    split_host_cpu(2)
    print("XLA_FLAGS=" + os.environ["XLA_FLAGS"], flush=True)
    import jax, jax.numpy as jnp, numpy as np
    from jax.experimental import io_callback
    from jax.sharding import Mesh, PartitionSpec as P
    delay = float(sys.argv[1])

    def late(i):
        time.sleep(delay if int(i[0]) == 0 else 0.0)
        return i

    def body(x):
        i = jax.lax.axis_index("d").reshape(1)
        i = io_callback(late, jax.ShapeDtypeStruct((1,), i.dtype), i)  # side effect: never dropped
        return jax.lax.psum(x + 0.0 * i, "d")
    mesh = Mesh(np.array(jax.devices()), ("d",))
    f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=P("d"), out_specs=P("d"), check_vma=False))
    print("sum", np.asarray(f(jnp.arange(2.0))).tolist(), flush=True)
""")


def _run(delay: float, extra_flags: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": extra_flags}
    return subprocess.run([sys.executable, "-c", STARVED_ALL_REDUCE, str(delay)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def test_split_cpu_sets_a_collective_timeout_that_xla_accepts():
    """Two devices, and the hour-long collective timeout in XLA_FLAGS; XLA starts with it (an
    unknown flag would abort) and the all-reduce gives the right sum."""
    from ferjax.jax_setup import COLLECTIVE_TIMEOUT_S, _knows_collective_timeout

    proc = _run(0.0)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--xla_force_host_platform_device_count=2" in proc.stdout
    if not _knows_collective_timeout():
        pytest.skip("this jaxlib predates --xla_cpu_collective_call_terminate_timeout_seconds")
    assert f"--xla_cpu_collective_call_terminate_timeout_seconds={COLLECTIVE_TIMEOUT_S}" in proc.stdout
    assert "sum [1.0, 1.0]" in proc.stdout


@pytest.mark.slow
def test_a_device_70_seconds_late_at_an_all_reduce_no_longer_aborts_the_process():
    """XLA:CPU's default kills the process when a device is more than 60 s late at an all-reduce
    (a warning at 20 s, the end 40 s later: what a training on a loaded 2-core machine met); with
    split_host_cpu's timeout the late device is waited for. The control sets the old 40 s."""
    from ferjax.jax_setup import _knows_collective_timeout

    if not _knows_collective_timeout():
        pytest.skip("this jaxlib predates --xla_cpu_collective_call_terminate_timeout_seconds")
    control = _run(70.0, "--xla_cpu_collective_call_terminate_timeout_seconds=40")
    assert control.returncode != 0 and "Termination timeout" in control.stderr
    fixed = _run(70.0)
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert "sum [1.0, 1.0]" in fixed.stdout
