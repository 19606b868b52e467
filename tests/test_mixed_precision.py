"""Mixed precision (`train.compute_dtype=bfloat16`): forward passes agree with float32, parameters
stay float32, and a short training run reaches the float32 run's validation accuracy within 1 point."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_cli, synthetic_rows, write_csv
from ferjax.registry import CLASSIFIERS


@pytest.mark.parametrize("name,kwargs", [("vgg_small", {"width": 0.5}),
                                         ("vggface_fer", {"image_size": 48, "widths": (4, 4, 8, 8, 8)})])
def test_bfloat16_forward_matches_float32(name, kwargs):
    x = np.random.default_rng(0).integers(0, 256, (4, 48, 48, 1)).astype(np.float32)
    f32 = CLASSIFIERS.create(name, **kwargs)
    bf16 = CLASSIFIERS.create(name, dtype="bfloat16", **kwargs)
    variables = f32.init(jax.random.key(0), x, train=False)
    assert bf16.init(jax.random.key(0), x, train=False)["params"] is not None
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(bf16.init(jax.random.key(0), x, train=False)))
    a = np.asarray(f32.apply(variables, x, train=False))
    b = bf16.apply(variables, x, train=False)
    assert b.dtype == jnp.float32  # logits come back in float32 for the loss
    assert np.linalg.norm(np.asarray(b) - a) / np.linalg.norm(a) < 0.05


# Two CLI trainings, 127 s of the 1,293 s default suite on the 2-core VM (2026-12-02): an accuracy
# claim rather than a unit check; the forward-parity test above stays in the default suite.
@pytest.mark.slow
def test_bfloat16_training_reaches_float32_accuracy_within_one_point(tmp_path):
    data = tmp_path / "data"
    # a task with a ceiling below 100%: 15% random labels in every split
    write_csv(data / "fer2013.csv", synthetic_rows((700, 350, 70), background=120, band=190, label_noise=0.15))
    accuracy = {}
    for dtype in ("float32", "bfloat16"):
        wd = tmp_path / dtype
        proc = run_cli("--experiment=fer2013_vgg:tiny", f"--workdir={wd}", "--jax_cache_dir=",
                       "--config.data.limit_per_split=0", "--config.classifier_kwargs.width=0.25",
                       "--config.train.epochs=3", f"--config.train.compute_dtype={dtype}",
                       env_extra={"FER2013_PATH": str(data), "TFDS_DATA_DIR": str(tmp_path / "tfds")})
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        accuracy[dtype] = summary["validation_report"]["accuracy"]
    # 15% random labels cap validation accuracy near 0.87; both runs must learn the task
    assert accuracy["float32"] > 0.7, accuracy
    assert abs(accuracy["bfloat16"] - accuracy["float32"]) <= 0.01, accuracy
