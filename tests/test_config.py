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
    with pytest.raises(cfg.ConfigError, match=r"unknown variant 'foo' of experiment 'realtime'.* "
                                              r"Variants: yunet, ssd"):
        cfg.build("realtime:foo")  # was a KeyError from realtime's variant table
    with pytest.raises(cfg.ConfigError, match="Did you mean: ferplus"):
        cfg.build("evaluate:ferplu")
    with pytest.raises(cfg.ConfigError, match=r"Variants: \(none\)|Variants: quick"):
        cfg.build("realtime_bench:slow")


@pytest.mark.parametrize("spec, override, message", [
    ("realtime_bench", "detectors=yunet,nope", "config.detectors: unknown detector 'nope'"),
    ("realtime_bench", "detectors=yunet,,haar", None),
    ("fer2013_vgg", "train.batch_size=0", r"config.train.batch_size=0: expected an integer > 0"),
    ("fer2013_vgg", "train.eval_batch_size=-8", "config.train.eval_batch_size=-8: expected an integer > 0"),
    ("fer2013_vgg", "train.log_every_steps=0", "config.train.log_every_steps=0: expected an integer > 0"),
    ("fer2013_vgg", "train.checkpoint_every_steps=0", "checkpoint_every_steps=0: expected an integer > 0"),
    ("fer2013_vgg", "protocol=orignal", "config.protocol='orignal': dataset 'fer2013' expects one of "
                                        "'original', 'ferplus'"),
    ("evaluate", "protocol=paper", "config.protocol='paper': dataset 'fer2013' expects"),
    ("realtime", "detector_args.haar.scale_factor=1.0",
     r"config.detector_args.haar.scale_factor=1.0: detector 'haar' expects a number > 1.0"),
    ("realtime", "detector_args.yunet.threshold=1.5", "detector 'yunet' expects a number in"),
    ("realtime", "video_out=out.xyz", r"config.video_out='out.xyz': expected '' \(no video\) or a file name "
                                      r"ending in .mp4 or .avi"),
    ("realtime", "video_out=out.AVI", None),
    ("realtime", "video_out=", None),
    ("realtime", "display=maybe", "config.display='maybe': expected one of"),
    ("realtime", "buckets=(1,0)", "config.buckets=\\(1, 0\\): expected a non-empty sequence"),
    ("realtime", "pretrained=fer2013_vgg_smal", "Did you mean: fer2013_vgg_small"),
    ("fer2013_vgg", "classifier_kwargs.dropout=0.5", None),
    ("fer2013_vgg", "train.compute_dtype=float16", "config.train.compute_dtype='float16': expected one of"),
])
def test_values_validated_before_work(spec, override, message):
    """Every component name, bound and output format is checked when the config is built."""
    if message is None:
        cfg.build(spec, [override])
    else:
        with pytest.raises(cfg.ConfigError, match=message):
            cfg.build(spec, [override])


def test_config_is_locked_after_build():
    c = cfg.build("fer2013_vgg:tiny")
    with pytest.raises(AttributeError):
        c.train.batch_sise = 3  # a misspelt field cannot be added by a task
    with pytest.raises(AttributeError):
        _ = c.train.batch_sise


def test_variants_are_declared_and_listed():
    assert cfg.variants("fer2013_vgg") == ("cpu", "quick", "gpu", "paper", "tiny")
    out = run_cli("--list").stdout
    assert "| `fer2013_vgg` | `cpu`, `quick`, `gpu`, `paper`, `tiny` |" in out
    assert "| `realtime_bench` | `quick` |" in out


def test_cli_refuses_bad_values_before_work(tmp_path):
    """One line naming the field, exit code 2, nothing written: here with real work to avoid."""
    for override in ("--config.detectors=yunet,nope", "--config.video_out=out.xyz"):
        proc = run_cli("--experiment=realtime_bench", override, f"--workdir={tmp_path / 'w'}",
                       check=False)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.startswith("error: config.") and "Traceback" not in proc.stderr
        assert not (tmp_path / "w").exists()


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
