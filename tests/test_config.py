"""Experiment lookup, typed overrides and their errors, checked before any work starts."""
import pytest

from ferjax import config as cfg
from conftest import run_cli


def test_variants_and_overrides():
    c = cfg.build("fer2013_vgg:tiny", ["train.batch_size=16", "train.learning_rate=0.01",
                                       "augment.flip=false", "data.fer2013_path=/x",
                                       "classifier=vgg13"])
    assert c.train.batch_size == 16 and isinstance(c.train.batch_size, int)
    assert c.train.learning_rate == 0.01
    assert c.augment.flip is False
    assert c.data.fer2013_path == "/x"
    assert c.classifier == "vgg13"
    assert cfg.build("fer2013_vgg").classifier == "vgg_small"  # default variant: cpu


@pytest.mark.parametrize("override, message", [
    ("train.bach_size=3", "Did you mean: train.batch_size"),
    ("train.batch_size=three", "expected int"),
    ("augment.flip=maybe", "expected true or false"),
    ("train", "expected --config.KEY=VALUE"),
    ("classifier=resnet_nope", "unknown classifier 'resnet_nope'"),
    ("loss=crossentropy", "Did you mean: cross_entropy"),
])
def test_bad_overrides(override, message):
    with pytest.raises(cfg.ConfigError, match=message):
        cfg.build("fer2013_vgg", [override])


def test_unknown_experiment_and_variant():
    with pytest.raises(cfg.ConfigError, match="Did you mean: fer2013_vgg"):
        cfg.build("fer2013_vg")
    with pytest.raises(cfg.ConfigError, match="unknown variant 'huge'"):
        cfg.build("fer2013_vgg:huge")


def test_cli_fails_fast_with_clear_message(tmp_path):
    proc = run_cli("--experiment=fer2013_vgg", "--config.train.bach_size=3",
                   f"--workdir={tmp_path / 'w'}", check=False)
    assert proc.returncode == 2
    assert "unknown config key 'train.bach_size'" in proc.stderr
    assert not (tmp_path / "w").exists()  # nothing was started


def test_missing_data_says_where_to_get_it(tmp_path):
    proc = run_cli("--experiment=fer2013_vgg:tiny", f"--config.data.fer2013_path={tmp_path / 'nope'}",
                   f"--workdir={tmp_path / 'w'}", check=False)
    assert proc.returncode == 1
    assert "kaggle.com" in proc.stderr and "FER2013_PATH" in proc.stderr
