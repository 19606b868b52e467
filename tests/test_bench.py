"""The benchmark's CycleGAN rows build the step each profile trains with (class guide included).
In a subprocess: `ferjax.bench` defines absl flags that `ferjax.run` defines too."""
import os
import subprocess
import sys

import pytest

from conftest import REPO

CHECK = """
import numpy as np
from ferjax.bench import cyclegan_step
call, compile_s, batch, devices = cyclegan_step({profile!r}, 2)
first, second = float(call()), float(call())  # the donated state is carried between calls
assert compile_s > 0 and batch == 2 and devices >= 1, (compile_s, batch, devices)
assert np.isfinite(first) and np.isfinite(second) and first != second, (first, second)
print("ok")
"""


@pytest.mark.parametrize("profile", ["tiny", "cpu"])
def test_cyclegan_step_of_a_profile_compiles_and_runs(profile):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", CHECK.format(profile=profile)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
