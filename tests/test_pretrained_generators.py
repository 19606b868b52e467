"""The shipped pretrained generator (`registry/pretrained_generators.py`): its name resolves to the
packaged pair, the model card matches the files, the generator translates, and `balance_fer2013`
runs on it by name (with its reverse generator beside it for matched negatives)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ferjax import config as cfg_lib
from ferjax.atomic import file_sha256
from ferjax.registry import PRETRAINED_GENERATORS
from ferjax.tasks import balance as balance_task
from ferjax.train.generator_export import (CARD, FORWARD, REVERSE, WEIGHTS, load_generator, read_meta,
                                           resolve_generator)

NAME = "cyclegan_neutral2disgust_cpu"


def test_the_shipped_generator_resolves_and_matches_its_card():
    assert NAME in PRETRAINED_GENERATORS.names()
    pair = resolve_generator(NAME).parent
    card = json.loads((pair / CARD).read_text())
    assert card["name"] == NAME and card["experiment"] == "cyclegan_neutral2disgust:cpu"
    for folder in (FORWARD, REVERSE):
        assert card["sha256"][folder] == file_sha256(pair / folder / WEIGHTS)
        assert read_meta(pair / folder)["step"] == card["steps"]
    assert 0.0 <= card["quality"]["gan_test_target_rate"] <= 1.0 and 0.0 < card["quality"]["cycle_ssim"] <= 1.0
    g = load_generator(pair / FORWARD)
    assert (g.meta["source_class"], g.meta["target_class"]) == ("neutral", "disgust")
    x = np.linspace(-1, 1, 2 * 48 * 48, dtype=np.float32).reshape(2, 48, 48, 1)
    y = np.asarray(g.model.apply(g.variables, x, train=False))
    assert y.shape == x.shape and np.isfinite(y).all() and np.abs(y).max() <= 1.0 and not np.allclose(y, x)


@pytest.mark.slow  # about 15 s on the 2-core VM: in the slow set (pytest -m slow), which CI runs too
def test_balance_runs_on_the_shipped_generator_by_name(synthetic_csv, tfds_dir, tmp_path):
    config = cfg_lib.build("balance_fer2013", [
        f"generator_checkpoint={NAME}", f"data.fer2013_path={synthetic_csv}", f"data.tfds_data_dir={tfds_dir}",
        f"out_dir={tmp_path / 'out'}", "target_count=40", "batch_size=8",
        f"matched_negatives={resolve_generator(NAME).parent / REVERSE}"])
    summary = balance_task.balance(config, str(tmp_path))
    assert summary["generated"] == 40 - 23 and summary["matched_negatives"] == summary["generated"]
    assert summary["generator_checkpoint"] == str(resolve_generator(NAME).resolve())
