"""The benchmark's CycleGAN rows build the step each profile trains with (class guide included)."""
import numpy as np
import pytest

from ferjax.bench import cyclegan_step


@pytest.mark.parametrize("profile", ["tiny", "cpu"])
def test_cyclegan_step_of_a_profile_compiles_and_runs(profile):
    call, compile_s, batch, devices = cyclegan_step(profile, 2)
    assert compile_s > 0 and batch == 2 and devices >= 1
    first, second = float(call()), float(call())  # the donated state is carried between calls
    assert np.isfinite(first) and np.isfinite(second) and first != second
