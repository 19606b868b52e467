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
    ("fer2013_vgg", "protocol=paper", "config.protocol='paper': dataset 'fer2013' expects one of "
                                      "'original', 'ferplus'"),
    ("evaluate", "protocol=paper", "config.paper_run is empty: protocol 'paper' scores the 20% test part"),
    ("evaluate", "protocol=papr", "config.protocol='papr': expected one of 'original', 'ferplus', 'paper'"),
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


def _every_config():
    for name in cfg.experiment_names():
        for variant in (None, *cfg.variants(name)):
            spec = name if variant is None else f"{name}:{variant}"
            yield spec, cfg.build(spec)


def test_every_numeric_field_of_every_experiment_has_a_bound():
    """A new numeric field without a range in FIELD_RULES (or its component's checks) fails here."""
    unbounded = {spec: fields for spec, c in _every_config() if (fields := cfg.unbounded_fields(c))}
    assert not unbounded, f"numeric fields without a bound (add them to config.FIELD_RULES): {unbounded}"


def test_unbounded_fields_finds_a_new_field():
    c = cfg.load_experiment("fer2013_vgg:tiny")
    c.train.new_knob = 0.5
    c.classifier_kwargs.new_width = 3
    c.detector_args = {"haar": {"min_size": 30, "new_size": 2}}  # min_size: haar declares a bound
    assert sorted(cfg.unbounded_fields(c)) == ["classifier_kwargs.new_width", "detector_args.haar.new_size",
                                               "train.new_knob"]


@pytest.mark.parametrize("spec, override, message", [
    ("fer2013_vgg", "train.grad_clip=-1", r"config.train.grad_clip=-1.0: expected a finite number >= 0.0"),
    ("fer2013_vgg", "classifier_kwargs.dropout=1.5", r"config.classifier_kwargs.dropout=1.5: expected a number "
                                                    r"in \[0.0, 1.0\)"),
    ("fer2013_vgg", "train.learning_rate=inf", "config.train.learning_rate=inf: expected a finite number > 0.0"),
    ("fer2013_vgg", "train.learning_rate=nan", "config.train.learning_rate=nan: expected a finite number > 0.0"),
    ("fer2013_vgg", "train.weight_decay=-0.1", "config.train.weight_decay=-0.1: expected a finite number >= 0.0"),
    ("fer2013_vgg", "train.weight_decay=inf", "config.train.weight_decay=inf: expected a finite"),
    ("fer2013_vgg", "train.warmup_epochs=-1", "config.train.warmup_epochs=-1.0: expected a finite number >= 0.0"),
    ("fer2013_vgg", "classifier_kwargs.width=-0.5", r"config.classifier_kwargs.width=-0.5: expected a number "
                                                   r"in \(0.0, 4.0\]"),
    ("fer2013_vgg", "augment.crop_pad=-2", r"config.augment.crop_pad=-2: expected an integer in \[0, 24\]"),
    ("fer2013_vgg", "loss_kwargs.label_smoothing=2", r"config.loss_kwargs.label_smoothing=2.0: expected a number "
                                                    r"in \[0.0, 1.0\)"),
    ("fer2013_vgg", "loss_kwargs.num_classes=0", "config.loss_kwargs.num_classes=0: expected the integer 7"),
    ("fer2013_vgg", "train.b1=2", r"config.train.b1=2.0: expected a number in \[0.0, 1.0\)"),
    ("fer2013_vgg", "train.ema_decay=nan", r"config.train.ema_decay=nan: expected a number in \[0.0, 1.0\)"),
    ("fer2013_vgg", "train.adversarial_eps=inf", "config.train.adversarial_eps=inf: expected a finite number"),
    ("fer2013_vgg", "train.optimizer=sgdd", "config.train.optimizer='sgdd': expected one of 'adam', 'adamw', 'sgd'"),
    ("fer2013_vgg", "train.schedule=bogus", "config.train.schedule='bogus': expected one of 'constant', 'cosine'"),
    ("fer2013_vgg", "train.select_metric=bogus", "config.train.select_metric='bogus': expected one of 'accuracy'"),
    ("fer2013_vgg", "train.select_metric=cycle_ssim", "config.train.select_metric='cycle_ssim': task "
                                                      "'train_classifier' reports accuracy, balanced_accuracy"),
    ("cyclegan_neutral2disgust", "train.select_metric=accuracy", "task 'cyclegan_train' reports cycle_ssim"),
    ("cyclegan_neutral2disgust", "gan.diff_augment=brightness,blur", "config.gan.diff_augment='brightness,blur': "
                                                                    "expected empty or comma-separated names"),
    ("cyclegan_neutral2disgust", "gan.class_guide=fer2013_vgg_small,nope", "config.gan.class_guide: unknown "
                                                                          "pretrained model 'nope'"),
    ("fer2013_distill", "distill.teachers=fer2013_vgg_small,nope", "config.distill.teachers: unknown pretrained"),
    ("fer2013_distill", "distill.teacher_weights=1", "config.distill.teacher_weights='1': expected 2 weights"),
    ("fer2013_distill", "distill.temperature=0", "config.distill.temperature=0.0: expected a finite number > 0.0"),
    ("evaluate", "tta=flipp", "config.tta='flipp': expected one of 'none', 'flip'"),
    ("evaluate", "split=tests", "config.split='tests': expected one of"),
    ("realtime", "detector_args.haar.scale_factor=inf", "detector 'haar' expects a number > 1.0"),
    ("realtime", "detector_args.ssd_resnet10.input_size=(300,)", "input_size=\\(300,\\): expected a sequence of 2"),
    ("fer2013_vgg", "export_to=x.json", r"config.export_to='x.json': expected '' \(no export\) or a file name "
                                        r"ending in .msgpack"),
    ("evaluate", "export_to=model", "config.export_to='model': expected '' \\(no export\\) or a file name"),
    ("fer2013_vgg", "export_to=out/x.msgpack", None),
    ("fer2013_vgg", "train.grad_clip=0", None),
    ("fer2013_vgg", "train.optimizer=sgd", None),
])
def test_training_values_refused_before_work(spec, override, message):
    """Values that trained silently wrong (or failed after the data loaded) are refused by name and range."""
    if message is None:
        cfg.build(spec, [override])
    else:
        with pytest.raises(cfg.ConfigError, match=message):
            cfg.build(spec, [override])


def test_name_lists_match_the_code():
    """The names config accepts are exactly those the code builds (so neither side drifts)."""
    import numpy as np
    import optax

    from ferjax.eval.predict import TTA_MODES
    from ferjax.eval.predict import evaluate_split
    from ferjax.train.cyclegan_steps import AUGMENTS
    from ferjax.train.schedules import make_optimizer, make_schedule

    c = cfg.build("fer2013_vgg:tiny").train.to_dict()
    import ml_collections
    for name in cfg.OPTIMIZERS:
        make_optimizer(ml_collections.ConfigDict({**c, "optimizer": name}), optax.constant_schedule(0.1))
    for name in cfg.SCHEDULES:
        make_schedule(ml_collections.ConfigDict({**c, "schedule": name, "decay_start_epoch": 1}), 10)
    assert set(cfg.TTA) == set(TTA_MODES) and set(cfg.DIFF_AUGMENTS) == set(AUGMENTS)
    split = {"image": np.zeros((14, 48, 48, 1), np.uint8), "label": np.arange(14) % 7}
    report = evaluate_split(lambda b: np.eye(7)[np.arange(len(b["image"])) % 7], split, 8,
                            [str(i) for i in range(7)], "original", "validation")
    assert set(cfg.SELECT_METRICS["train_classifier"]) <= set(report)


def test_cli_refuses_training_values_before_the_data_loads(tmp_path):
    """Exit 2 naming the field (it was a KeyError traceback after the first epoch); the data path
    does not exist, so a run that got past validation would have stopped on it (exit 1) instead."""
    proc = run_cli("--experiment=fer2013_vgg:tiny", "--config.train.select_metric=bogus",
                   f"--config.data.fer2013_path={tmp_path / 'none'}", f"--workdir={tmp_path / 'w'}", check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: config.train.select_metric='bogus'") and "Traceback" not in proc.stderr
    assert not (tmp_path / "w").exists()


def test_export_refuses_a_path_whose_card_would_overwrite_the_weights(tmp_path):
    """`x.json` made the card's path the weights' own: the card overwrote the weights."""
    from ferjax import pretrained

    variables = {"params": {"w": __import__("numpy").ones(3, "float32")}}
    for name in ("x.json", "x", ".msgpack"):
        with pytest.raises(ValueError, match=r"expected a file name ending in .msgpack"):
            pretrained.export(variables, {"name": "x"}, tmp_path / name)
    assert not list(tmp_path.iterdir())  # nothing written
    pretrained.export(variables, {"name": "x"}, tmp_path / "x.msgpack")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json", "x.msgpack"]
    import json

    import ferjax  # the card records the version that wrote it

    assert json.loads((tmp_path / "x.json").read_text()) == {"name": "x", "ferjax_version": ferjax.__version__}
