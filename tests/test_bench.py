"""`ferjax bench`: its smallest table, and the CycleGAN rows built from the step each profile trains
with (class guide included).
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


# The :cpu profile's step only compiles at its real widths (37 s here); the tiny one runs the same code.
@pytest.mark.slow  # a CycleGAN step compiles for a minute: the slow set (pytest -m slow)
@pytest.mark.parametrize("profile", ["tiny", "cpu"])
def test_cyclegan_step_of_a_profile_compiles_and_runs(profile):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", CHECK.format(profile=profile)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


@pytest.mark.slow  # a long end-to-end run: the slow set (pytest -m slow)
def test_bench_times_both_convolution_gradients_side_by_side(tmp_path):
    """`--conv_grads=xla,custom`: the README's Conv3x3 comparison comes from this command."""
    import json

    out = tmp_path / "bench.json"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "ferjax.bench", "--classifiers=vgg_small",
                           "--predict_batch_sizes=", "--train_batch_sizes=8", "--conv_grads=xla,custom",
                           "--repeats=3", "--iters=1", "--cyclegan=", "--input_pipeline=false",
                           "--torch=false", "--cpu_devices=2", f"--json_out={out}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert sorted(r["runtime"] for r in rows) == ["jax", "jax custom conv grad", "jax x2",
                                                  "jax x2 custom conv grad"]
    assert all(r["images_per_s"] > 0 and r["mode"] == "train" for r in rows)
    # FLOPs counted on the lowered program: about 0.64 GFLOP per vgg_small train image, also when
    # the step is split over 2 devices (a compiled GPU program's count leaves out cuDNN convolutions)
    assert all(0.5 < r["gflops"] / r["images_per_s"] < 0.8 for r in rows), rows


def test_bench_prints_and_writes_a_row_per_measurement(tmp_path):
    """`ferjax bench` in its smallest form (one classifier, predict at batch 1): the Markdown table
    and the JSON rows carry a compile time, a rate and the fraction of the matmul peak."""
    import json

    out = tmp_path / "bench.json"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "ferjax.bench", "--classifiers=vgg_small",
                           "--predict_batch_sizes=1", "--train_batch_sizes=", "--cyclegan=",
                           "--noinput_pipeline", "--notorch", "--repeats=3", "--iters=1", f"--json_out={out}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| vgg_small | predict | float32 | 1 | jax |" in proc.stdout, proc.stdout
    (row,) = json.loads(out.read_text())["rows"]
    assert row["classifier"] == "vgg_small" and row["batch"] == 1
    assert row["compile_s"] > 0 and row["images_per_s"] > 0 and 0 < row["fraction_of_matmul"]
