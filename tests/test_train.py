"""Training mechanics: exact resume (simulated and real kill), data parallelism, schedules, layers."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ferjax.nn import conv3x3, conv3x3_reference, init_variables, max_pool2x2
from ferjax.train.checkpoint import read_state_as_numpy, saved_steps
from ferjax.train.schedules import EarlyStopping, ReduceOnPlateau, make_schedule
from conftest import REPO, run_cli


def test_conv3x3_gradient_matches_xla():
    kx, kk, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (2, 7, 6, 3))
    k = jax.random.normal(kk, (3, 3, 3, 5))
    g = jax.random.normal(kg, (2, 7, 6, 5))
    ours = jax.vjp(conv3x3, x, k)[1](g)
    ref = jax.vjp(conv3x3_reference, x, k)[1](g)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(conv3x3(x, k), conv3x3_reference(x, k), rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # a long end-to-end run: the slow set (pytest -m slow)
def test_vgg_small_custom_conv_grad_matches_xla_gradients():
    from ferjax.registry import CLASSIFIERS

    x = jax.random.uniform(jax.random.key(1), (2, 48, 48, 1), maxval=255.0)
    models = {g: CLASSIFIERS.create("vgg_small", width=0.25, dropout=0.0, conv_grad=g)
              for g in ("xla", "custom")}
    variables = models["xla"].init(jax.random.key(0), x, train=False)

    def grads(model):
        return jax.grad(lambda p: model.apply({**variables, "params": p}, x, train=True,
                                              mutable=["batch_stats"])[0].sum())(variables["params"])

    for a, b in zip(jax.tree.leaves(grads(models["custom"])), jax.tree.leaves(grads(models["xla"]))):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="conv_grad='fast'"):
        CLASSIFIERS.create("vgg_small", conv_grad="fast").init(jax.random.key(0), x, train=False)


def test_max_pool2x2():
    x = jnp.arange(2 * 5 * 4 * 1, dtype=jnp.float32).reshape(2, 5, 4, 1)
    y = max_pool2x2(x)
    assert y.shape == (2, 2, 2, 1)
    assert float(y[0, 0, 0, 0]) == float(x[0, 1, 1, 0])


def test_schedules():
    c = ml_collections.ConfigDict({"learning_rate": 1.0, "epochs": 10, "schedule": "linear_decay",
                                   "decay_start_epoch": 5, "warmup_epochs": 0, "final_lr_ratio": 0.0})
    s = make_schedule(c, steps_per_epoch=10)
    assert float(s(0)) == 1.0 and float(s(49)) == 1.0
    assert abs(float(s(75)) - 0.5) < 1e-6 and float(s(100)) == 0.0
    c.schedule, c.warmup_epochs = "cosine", 1
    s = make_schedule(c, 10)
    assert float(s(0)) == 0.0 and abs(float(s(10)) - 1.0) < 1e-6 and float(s(100)) < 1e-6
    c.schedule = "exotic"
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule(c, 10)


def test_plateau_and_early_stopping():
    p = ReduceOnPlateau(factor=0.5, patience=2)
    assert [p.update(v) for v in (0.5, 0.6, 0.6, 0.59, 0.7, 0.7, 0.7)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]
    e = EarlyStopping(patience=2)
    assert [e.update(v) for v in (0.5, 0.4, 0.6, 0.5, 0.5)] == [False, False, False, False, True]
    assert not any(EarlyStopping(patience=0).update(0.1) for _ in range(5))


def _final_state(workdir):
    latest = workdir / "checkpoints" / "latest"
    step = saved_steps(latest)[-1]
    return step, read_state_as_numpy(latest / str(step) / "state")  # the run may have used more devices


def _assert_same_state(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)


@pytest.fixture(scope="module")
def tiny_env(synthetic_csv, tfds_dir):
    return {"FER2013_PATH": str(synthetic_csv), "TFDS_DATA_DIR": str(tfds_dir)}


ARGS = ("--experiment=fer2013_vgg:tiny", "--config.train.epochs=3",
        "--config.train.checkpoint_every_steps=2", "--jax_cache_dir=")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_env):
    wd = tmp_path_factory.mktemp("uninterrupted")
    proc = run_cli(*ARGS, f"--workdir={wd}", env_extra=tiny_env)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["epochs_run"] == 3
    for name in ("metrics.jsonl", "curves.png", "confusion_test.png", "report.json"):
        assert (wd / name).is_file(), name
    assert list((wd / "tensorboard").glob("events.out.tfevents.*"))
    return _final_state(wd)


@pytest.mark.slow  # 92 s with its uninterrupted reference run: the slow set, which CI runs too
def test_preempt_and_resume_matches_uninterrupted(tmp_path, tiny_env, uninterrupted, caplog):
    run_cli(*ARGS, "--config.train.max_steps=7", f"--workdir={tmp_path}", env_extra=tiny_env)
    with caplog.at_level("WARNING"):
        assert _final_state(tmp_path)[0] == 7
    assert not [r for r in caplog.records if "Metadata file does not exist" in r.getMessage()]
    host_file = tmp_path / "checkpoints" / "latest" / "7" / "host" / "metadata"
    first_session = json.loads(host_file.read_text())["train_seconds"]
    weights = tmp_path / "export" / "tiny.msgpack"
    proc = run_cli(*ARGS, f"--workdir={tmp_path}", f"--config.export_to={weights}", env_extra=tiny_env)
    assert "resumed from step 7" in proc.stdout + proc.stderr
    step, state = _final_state(tmp_path)
    assert step == uninterrupted[0] == 15
    _assert_same_state(state, uninterrupted[1])
    # The model card: the command as run (data path, export flag) and the wall time of both
    # sessions, more than the epochs' own times (the interrupted epoch restarted its clock).
    card = json.loads(weights.with_suffix(".json").read_text())
    assert card["command"].startswith(f"FER2013_PATH={tiny_env['FER2013_PATH']} python -m ferjax.run "
                                      f"--experiment=fer2013_vgg:tiny")
    assert f"--config.export_to={weights}" in card["command"]
    records = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    epochs_after_resume = sum(r["epoch_seconds"] for r in records if r.get("epoch", 0) >= 2)
    assert card["epochs_run"] == 3 and card["train_seconds"] > first_session + epochs_after_resume > 0


@pytest.mark.slow  # a long end-to-end run: the slow set (pytest -m slow)
def test_sigkill_then_resume_matches_uninterrupted(tmp_path, tiny_env, uninterrupted):
    env = {**os.environ, **tiny_env, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([sys.executable, "-m", "ferjax.run", *ARGS, f"--workdir={tmp_path}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = tmp_path / "checkpoints" / "latest"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if latest.is_dir() and any(p.name.isdigit() for p in latest.iterdir()):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _final_state(tmp_path)[0]
    assert killed_at < 15, "the run finished before it could be killed"
    run_cli(*ARGS, f"--workdir={tmp_path}", env_extra=tiny_env)
    step, state = _final_state(tmp_path)
    assert step == 15
    _assert_same_state(state, uninterrupted[1])


FOUR_DEVICES = textwrap.dedent('''
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, numpy as np, ml_collections
    jax.config.update("jax_enable_x64", True)  # float64: any mismatch is a partitioning bug, not rounding
    from ferjax.registry import CLASSIFIERS, LOSSES
    from ferjax.train import sharding
    from ferjax.train.classifier_steps import create_state, make_steps
    from ferjax.train.schedules import make_optimizer, make_schedule
    from ferjax.experiments.fer2013_vgg import get_config
    assert jax.device_count() == 4
    c = get_config("tiny")
    model = CLASSIFIERS.create("vgg_small", dropout=0.3)
    loss = LOSSES.create("cross_entropy", num_classes=7, label_smoothing=0.1)
    tx = make_optimizer(c.train, make_schedule(c.train, 10))
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 255, (16, 48, 48, 1)).astype(np.uint8),
             "label": rng.integers(0, 7, 16).astype(np.int32)}
    finals = []
    for n in (1, 4):
        mesh = sharding.data_mesh(n)
        train, _ = make_steps(model, tx, loss, c.augment, 0, mesh, sync_batch_norm=True)
        variables = jax.tree.map(lambda a: a.astype(np.float64), model.init(
            jax.random.key(0), np.zeros((1, 48, 48, 1)), train=False))
        state = jax.device_put(create_state(model, tx, 0, variables=variables), sharding.replicated(mesh))
        for _ in range(3):
            state, m = train(state, sharding.put_batch(batch, mesh))
        finals.append(jax.device_get(state))
        if n == 4:
            x = sharding.put_batch(batch, mesh)["image"]
            assert len(x.sharding.device_set) == 4
    for a, b in zip(jax.tree.leaves(finals[0]), jax.tree.leaves(finals[1])):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    print("OK four-device step matches single-device step")
''')


TWO_DEVICES_LOCAL_BN = textwrap.dedent('''
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import jax, jax.numpy as jnp, numpy as np, optax
    jax.config.update("jax_enable_x64", True)
    from ferjax.registry import CLASSIFIERS, LOSSES
    from ferjax.train import sharding
    from ferjax.train.classifier_steps import create_state, make_steps
    from ferjax.train.schedules import make_optimizer, make_schedule
    from ferjax.experiments.fer2013_vgg import get_config
    c = get_config("tiny")
    c.augment.update(crop_pad=0, flip=False, rotate_deg=0.0, jitter=0.0)
    model = CLASSIFIERS.create("vgg_small", dropout=0.0, width=0.25)  # narrow: the semantics, in seconds
    loss = LOSSES.create("cross_entropy", num_classes=7, label_smoothing=0.1)
    tx = make_optimizer(c.train, make_schedule(c.train, 10))
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 255, (16, 48, 48, 1)).astype(np.uint8),
             "label": rng.integers(0, 7, 16).astype(np.int32)}
    variables = jax.tree.map(lambda a: a.astype(np.float64), jax.jit(lambda k: model.init(
        k, np.zeros((1, 48, 48, 1)), train=False))(jax.random.key(0)))
    state0 = create_state(model, tx, 0, variables=variables)
    # Reference written independently of make_steps: each half of the batch is its own
    # batch-norm batch; gradients and batch statistics are the mean over the halves.
    grads, stats = [], []
    for half in (slice(0, 8), slice(8, 16)):
        x, y = batch["image"][half].astype(np.float64), batch["label"][half]
        def objective(p):
            logits, upd = model.apply({"params": p, "batch_stats": state0.batch_stats}, x, train=True,
                                      mutable=["batch_stats"])
            return loss(logits, y), upd["batch_stats"]
        g, s = jax.jit(jax.grad(objective, has_aux=True))(state0.params)
        grads.append(g); stats.append(s)
    mean = lambda trees: jax.tree.map(lambda a, b: (a + b) / 2, *trees)
    updates, _ = jax.jit(tx.update)(mean(grads), state0.opt_state, state0.params)
    want_params, want_stats = optax.apply_updates(state0.params, updates), mean(stats)
    mesh = sharding.data_mesh(2)
    train, _ = make_steps(model, tx, loss, c.augment, 0, mesh)
    fresh = lambda: jax.device_put(jax.tree.map(np.array, state0), sharding.replicated(mesh))  # steps donate
    state, m = train(fresh(), sharding.put_batch(batch, mesh))
    for a, b in zip(jax.tree.leaves((state.params, state.batch_stats)), jax.tree.leaves((want_params, want_stats))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)
    # ...and it is not the global-batch step: per-device variances differ from the global one
    # (means agree, being linear), and so do the gradients.
    sync, _ = make_steps(model, tx, loss, c.augment, 0, mesh, sync_batch_norm=True)
    other, _ = sync(fresh(), sharding.put_batch(batch, mesh))
    var = lambda s: np.asarray(s["BatchNorm_0"]["var"])
    assert not np.allclose(var(other.batch_stats), var(state.batch_stats), rtol=1e-6)
    print("OK per-device batch norm step matches the two-half reference")
''')


@pytest.mark.slow  # 34 s: the slow set, which CI runs too
def test_default_step_over_two_devices_is_ddp_with_per_device_batch_norm():
    """The default multi-device step equals an independent two-half reference (PyTorch DDP semantics)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", TWO_DEVICES_LOCAL_BN], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK per-device" in proc.stdout


@pytest.mark.slow  # a long end-to-end run: the slow set (pytest -m slow)
def test_four_simulated_devices_match_single_device():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", FOUR_DEVICES], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK four-device" in proc.stdout


@pytest.mark.slow  # a long end-to-end run: the slow set (pytest -m slow)
def test_two_processes_with_jax_distributed_match_one_process(tmp_path):
    """Two local processes (jax.distributed, gloo collectives on CPU), each feeding its share of
    every global batch, end with the same parameters and logits as one process."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    worker = str(REPO / "tests" / "helpers" / "distributed_worker.py")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    single = subprocess.run([sys.executable, worker, "0", "1", "0", str(tmp_path / "one.npz")],
                            env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]
    procs = [subprocess.Popen([sys.executable, worker, str(i), "2", port, str(tmp_path / f"p{i}.npz")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
        assert "devices 2 processes 2" in out
    ref = np.load(tmp_path / "one.npz")
    for i in range(2):
        got = np.load(tmp_path / f"p{i}.npz")
        for k in ref.files:
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-9, atol=1e-12)


def _tiny_classifier():
    """A conv + batch norm + dense classifier with the registered classifiers' interface (48x48
    grey in, 7 logits out, `train=`): the step mechanics below compile in seconds, not minutes."""
    import flax.linen as nn

    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.Conv(4, (3, 3), strides=(4, 4), use_bias=False)((x - 128.0) / 64.0)
            x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
            return nn.Dense(7)(x.mean(axis=(1, 2)))

    return Tiny()


def _one_epoch_in_memory_run():
    """(data, config): synthetic Training/PublicTest/PrivateTest arrays (64/32/32 images) and the
    `fer2013_vgg:tiny` config for one epoch, for `train_classifier(config, workdir, data=data)`."""
    from conftest import synthetic_rows
    from ferjax.experiments.fer2013_vgg import get_config

    rows = synthetic_rows((64, 32, 32))
    split = lambda usage: {"image": np.stack([img for _, img, u in rows if u == usage])[..., None],
                           "label": np.asarray([lab for lab, _, u in rows if u == usage], np.int32)}
    data = {"train": split("Training"), "validation": split("PublicTest"), "test": split("PrivateTest")}
    config = get_config("tiny")
    config.train.epochs = 1
    return data, config


def test_only_the_primary_process_writes_run_files(tmp_path, monkeypatch):
    """Under jax.distributed every process runs train_classifier; a process other than 0 trains
    and reports the same summary but writes no config, report, plot, prediction or export file
    (Orbax coordinates the checkpoints itself)."""
    from ferjax.train import sharding
    from ferjax.tasks.train_classifier import train_classifier

    data, config = _one_epoch_in_memory_run()
    config.export_to = str(tmp_path / "export" / "model.msgpack")
    monkeypatch.setattr(sharding, "is_primary", lambda: False)
    summary = train_classifier(config, str(tmp_path / "run"), data=data)
    assert summary["test_report"]["n"] == 32 and "exported" not in summary
    written = {p.name for p in (tmp_path / "run").iterdir()}
    assert "checkpoints" in written
    assert not written & {"config.json", "report.json", "curves.png", "confusion_test.png",
                          "predictions_test.npz"}, written
    assert not (tmp_path / "export").exists()


def test_init_from_loads_a_shipped_model_and_refuses_one_that_does_not_fit():
    from ferjax import pretrained
    from ferjax.config import ConfigError, build
    from ferjax.registry import CLASSIFIERS
    from ferjax.tasks.train_classifier import initial_variables

    _, shipped, _ = pretrained.load("fer2013_vgg_small")
    got = initial_variables(CLASSIFIERS.create("vgg_small"), "fer2013_vgg_small")
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(shipped)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="do not fit the configured classifier"):
        initial_variables(CLASSIFIERS.create("vgg_small", width=0.5), "fer2013_vgg_small")
    with pytest.raises(ConfigError, match="no_such_model"):
        build("fer2013_vgg:tiny", ["train.init_from=no_such_model"])


def test_ema_state_averages_the_weights_without_changing_training():
    """`train.ema_decay`: the optimizer's weights are those of the same run without an average;
    the average follows e <- e + (1 - d)(w - e) with d = min(decay, (1 + t) / (10 + t))."""
    import optax

    from ferjax.data.fer2013 import EMOTIONS
    from ferjax.experiments.fer2013_vgg import get_config
    from ferjax.registry import LOSSES
    from ferjax.train import sharding
    from ferjax.train.classifier_steps import EmaTrainState, create_state, make_steps

    config = get_config("tiny")
    model = _tiny_classifier()
    loss = LOSSES.create("cross_entropy", num_classes=len(EMOTIONS))
    tx, mesh, decay = optax.adam(1e-2), sharding.data_mesh(1), 0.9
    plain = create_state(model, tx, 0)
    averaged = create_state(model, tx, 0, ema=True)
    assert isinstance(averaged, EmaTrainState) and not isinstance(plain, EmaTrainState)
    step_plain, _ = make_steps(model, tx, loss, config.augment, 0, mesh)
    step_avg, eval_avg = make_steps(model, tx, loss, config.augment, 0, mesh, ema_decay=decay)
    rng = np.random.default_rng(0)
    expected = jax.device_get(averaged.live_variables)
    for t in range(4):
        batch = {"image": rng.integers(0, 256, (8, 48, 48, 1)).astype(np.uint8),
                 "label": rng.integers(0, 7, 8).astype(np.int32)}
        plain, _ = step_plain(plain, sharding.put_batch(batch, mesh))
        averaged, _ = step_avg(averaged, sharding.put_batch(batch, mesh))
        d = min(decay, (1 + t) / (10 + t))
        live = jax.device_get(averaged.live_variables)
        expected = jax.tree.map(lambda e, w: e + (1 - d) * (w - e), expected, live)
    _assert_same_state(plain.live_variables, averaged.live_variables)
    _assert_same_state(averaged.variables, expected)
    moved = [float(np.abs(np.asarray(a) - np.asarray(b)).max())
             for a, b in zip(jax.tree.leaves(averaged.variables["params"]), jax.tree.leaves(averaged.params))]
    assert max(moved) > 1e-4  # the average lags the live weights
    x = sharding.put_batch({"image": batch["image"]}, mesh)
    np.testing.assert_allclose(np.asarray(eval_avg(averaged, x)),
                               np.asarray(model.apply(averaged.ema, batch["image"].astype(np.float32),
                                                      train=False)), rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # a long end-to-end run: the slow set (pytest -m slow)
def test_ema_run_exports_the_average_and_records_it(tmp_path):
    """A run with `train.ema_decay` exports the moving average (not the live weights) of the best
    checkpoint and names the decay in the model card. Rerunning the finished run with
    `train.logit_adjustment=select` (a resumable change: it acts after training) chooses tau on the
    validation split, reports the test split with the adjusted logits and exports the average with
    the offset folded into the output bias."""
    from ferjax.eval import logit_adjustment as la
    from ferjax.registry import CLASSIFIERS
    from ferjax.tasks.train_classifier import train_classifier

    data, config = _one_epoch_in_memory_run()
    config.train.ema_decay = 0.5
    config.export_to = str(tmp_path / "export" / "model.msgpack")
    summary = train_classifier(config, str(tmp_path / "run"), data=data)
    card = json.loads((tmp_path / "export" / "model.json").read_text())
    assert card["ema_decay"] == 0.5
    best = tmp_path / "run" / "checkpoints" / "best"
    step = saved_steps(best)[-1]
    assert step == summary["best_step"]
    saved = read_state_as_numpy(best / str(step) / "state")
    exported = flax.serialization.msgpack_restore((tmp_path / "export" / "model.msgpack").read_bytes())
    _assert_same_state(exported, saved["ema"])
    differs = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(exported["params"]),
                                                     jax.tree.leaves(saved["params"]))]
    assert any(differs)

    config.train.logit_adjustment = "select"
    adjusted_to = tmp_path / "export" / "adjusted.msgpack"
    config.export_to = str(adjusted_to)
    summary = train_classifier(config, str(tmp_path / "run"), data=data)
    adjustment = summary["logit_adjustment"]
    assert adjustment["tau"] in la.TAUS and [r["tau"] for r in adjustment["table"]] == list(la.TAUS)
    assert json.loads(adjusted_to.with_suffix(".json").read_text())["logit_adjustment"]["tau"] == adjustment["tau"]
    model = CLASSIFIERS.create(config.classifier, **dict(config.classifier_kwargs))
    images = data["test"]["image"].astype(np.float32)
    before = np.asarray(model.apply(exported, images, train=False))
    after = np.asarray(model.apply(flax.serialization.msgpack_restore(adjusted_to.read_bytes()), images, train=False))
    np.testing.assert_allclose(after - before, np.broadcast_to(adjustment["offset"], before.shape), atol=1e-4)
    assert summary["test_report"]["accuracy"] == pytest.approx(np.mean(after.argmax(1) == data["test"]["label"]))


@pytest.mark.slow  # trains an epoch to be refused: the slow set (pytest -m slow); the config
# comparison keeps default tests (test_resume_refuses_an_option_added_since_the_checkpoint...)
def test_resume_with_an_option_that_changes_the_state_is_refused_naming_it(tmp_path):
    """A run resumed with `train.ema_decay` newly set (its state gains the average) is refused by
    the config comparison, naming the field, before Orbax tries to restore the other structure."""
    from ferjax.tasks.train_classifier import train_classifier

    data, config = _one_epoch_in_memory_run()
    train_classifier(config, str(tmp_path), data=data)
    config.train.ema_decay = 0.5
    config.train.epochs = 2
    with pytest.raises(ValueError, match=r"train\.ema_decay: 0\.0 -> 0\.5"):
        train_classifier(config, str(tmp_path), data=data)


def test_checkpoint_of_another_structure_is_refused_naming_the_folder(tmp_path):
    """Restoring a checkpoint into a state of another structure raises a ValueError that names
    the checkpoint folder (not Orbax's bare tree error); the host record reads without the state."""
    from ferjax.train.checkpoint import Checkpointer

    ckpt = Checkpointer(tmp_path, "accuracy")
    ckpt.save_latest(3, {"w": np.ones(2, np.float32)}, {"config": {"a": 1}})
    assert ckpt.latest_host() == {"config": {"a": 1}}
    with pytest.raises(ValueError, match=rf"{tmp_path}/latest/3 holds a train state that does not fit"):
        ckpt.restore_latest({"w": np.ones(2, np.float32), "ema": np.ones(2, np.float32)})
    ckpt.close()


def test_resume_refuses_an_option_added_since_the_checkpoint_unless_at_its_default(tmp_path):
    """An option the checkpointed run's config lacks (added to ferjax later) is unchanged at its
    recipe default and refused at any other value, even when the state keeps its structure; an
    option only the old run names (removed since) does not count."""
    from ferjax import config as cfg_lib
    from ferjax.config import flat_config
    from ferjax.train.loop import refuse_changed_config

    current = flat_config(cfg_lib.build("fer2013_vgg:quick", []))
    saved = {k: v for k, v in current.items() if k != "train.ema_decay"}
    saved["train.removed_option"] = 1
    refuse_changed_config(saved, current, tmp_path)  # at its default: resumes
    current["train.ema_decay"] = 0.9
    with pytest.raises(ValueError, match=r"different config \(train\.ema_decay: None -> 0\.9\)"):
        refuse_changed_config(saved, current, tmp_path)
    built_in_code = {**current, "name": "not_an_experiment"}  # no recipe: added options never count
    refuse_changed_config({**saved, "name": "not_an_experiment"}, built_in_code, tmp_path)



def test_l2_adversarial_examples_stay_in_the_ball_and_raise_the_loss():
    """`l2_adversarial`: every example moves at most eps (L2, pixels in [0, 255]), stays in
    [0, 255], and the loss on the moved batch is higher than on the clean one; more steps move
    further up the loss than one."""
    from ferjax.registry import LOSSES
    from ferjax.train.classifier_steps import l2_adversarial

    model = _tiny_classifier()
    variables = init_variables(model, jax.random.key(0), jnp.zeros((1, 48, 48, 1)))
    loss = LOSSES.create("cross_entropy", num_classes=7)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 256, (8, 48, 48, 1)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 7, 8).astype(np.int32))

    def loss_of(xi):
        return loss(model.apply(variables, xi, train=False), y)
    eps = 2.0 * 255.0
    loss_of = jax.jit(loss_of)
    moved = {steps: jax.jit(lambda xi, k, n=steps: l2_adversarial(loss_of, xi, k, eps, n))(x, jax.random.key(1))
             for steps in (1, 5)}
    for xa in moved.values():
        dist = np.sqrt(np.sum(np.square(np.asarray(xa - x)), axis=(1, 2, 3)))
        assert np.all(dist <= eps * (1 + 1e-4)) and np.all(dist > 0.1 * eps)
        assert float(jnp.min(xa)) >= 0.0 and float(jnp.max(xa)) <= 255.0
    clean = float(loss_of(x))
    assert float(loss_of(moved[1])) > clean + 0.05
    assert float(loss_of(moved[5])) > float(loss_of(moved[1]))


def test_adversarial_training_step_trains_on_moved_inputs_and_refuses_bad_settings():
    """`train.adversarial_eps` > 0 changes the step (it trains on attacked inputs), 0 is the plain
    step to the bit, the ramp starts the radius near 0, and a negative radius or zero steps is
    refused before any work."""
    import optax

    from ferjax.experiments.fer2013_vgg import get_config
    from ferjax.registry import LOSSES
    from ferjax.train import sharding
    from ferjax.train.classifier_steps import create_state, make_steps

    config = get_config("tiny")
    model = _tiny_classifier()
    loss = LOSSES.create("cross_entropy", num_classes=7)
    tx, mesh = optax.adam(1e-2), sharding.data_mesh(1)
    rng = np.random.default_rng(0)
    batch = sharding.put_batch({"image": rng.integers(0, 256, (8, 48, 48, 1)).astype(np.uint8),
                                "label": rng.integers(0, 7, 8).astype(np.int32)}, mesh)
    states = {}
    for name, kwargs in (("plain", {}), ("zero", {"adversarial_eps": 0.0}),
                         ("robust", {"adversarial_eps": 1.0, "adversarial_steps": 2}),
                         # at step 0 of a 10^9-step ramp the radius is ~1e-9: the plain step
                         ("ramped", {"adversarial_eps": 1.0, "adversarial_ramp_steps": 10 ** 9})):
        step, _ = make_steps(model, tx, loss, config.augment, 0, mesh, **kwargs)
        states[name], metrics = step(create_state(model, tx, 0), batch)
        assert np.isfinite(float(metrics["loss"]))
    _assert_same_state(states["plain"].params, states["zero"].params)
    diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
               for a, b in zip(jax.tree.leaves(states["plain"].params), jax.tree.leaves(states["robust"].params)))
    assert diff > 1e-6
    for a, b in zip(jax.tree.leaves(states["plain"].params), jax.tree.leaves(states["ramped"].params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    for bad in ({"adversarial_eps": -0.1}, {"adversarial_eps": 1.0, "adversarial_steps": 0}):
        with pytest.raises(ValueError, match="adversarial_eps"):
            make_steps(model, tx, loss, config.augment, 0, mesh, **bad)


def test_exported_card_rebuilds_a_narrow_network_and_names_adversarial_training(tmp_path, monkeypatch):
    """The model card records `classifier_kwargs` (here width 0.25, not the factory's default)
    and the adversarial settings; a model shipped with such a card loads into the network it
    describes (`registry/pretrained.py`'s `_shipped`) and gives the run's own test predictions."""
    import ferjax.components.pretrained as shipped
    from ferjax import pretrained
    from ferjax.tasks.train_classifier import train_classifier

    data, config = _one_epoch_in_memory_run()
    config.classifier_kwargs.width = 0.25
    config.train.adversarial_eps = 0.5
    config.export_to = str(tmp_path / "export" / "narrow.msgpack")
    train_classifier(config, str(tmp_path / "run"), data=data)
    card = json.loads((tmp_path / "export" / "narrow.json").read_text())
    assert card["classifier_kwargs"] == dict(config.classifier_kwargs) and card["classifier_kwargs"]["width"] == 0.25
    assert card["adversarial_eps"] == 0.5 and card["adversarial_steps"] == 1
    monkeypatch.setattr(shipped, "packaged", lambda filename: tmp_path / "export" / filename)
    spec = shipped._shipped("vgg_small", "narrow")
    assert spec.kwargs == card["classifier_kwargs"]
    monkeypatch.setitem(pretrained.PRETRAINED._entries, "narrow_test", lambda: spec)
    model, variables, _ = pretrained.load("narrow_test")
    logits = np.asarray(model.apply(variables, data["test"]["image"].astype(np.float32), train=False))
    saved = np.load(tmp_path / "run" / "predictions_test.npz")
    np.testing.assert_allclose(logits, saved["logits"], rtol=1e-4, atol=1e-4)
