"""The shipped pretrained model and the evaluation command: card figures, flip TTA, errors."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from ferjax import pretrained
from ferjax.inference import load_predictor
from conftest import run_cli, synthetic_rows, write_csv

KEYS = {"accuracy", "balanced_accuracy", "macro_f1", "per_class_recall", "protocol", "n"}


def test_shipped_model_loads_and_predicts():
    model, variables, card = pretrained.load()
    assert card["classifier"] == "vgg_small" and card["protocol"] == "original"
    predict = load_predictor()
    probs = predict(np.random.default_rng(0).integers(0, 255, (3, 48, 48)).astype(np.uint8))
    assert probs.shape == (3, 7)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)


def test_evaluate_command_on_small_csv(tmp_path, synthetic_csv, tfds_dir):
    """Also: with HOME pointed at an empty folder the run writes nothing there (its JAX cache
    goes to $FERJAX_CACHE_DIR, which conftest points at a temporary folder)."""
    home = tmp_path / "home"
    home.mkdir()
    proc = run_cli("--experiment=evaluate", "--config.protocol=original", f"--workdir={tmp_path}",
                   env_extra={"FER2013_PATH": str(synthetic_csv), "TFDS_DATA_DIR": str(tfds_dir),
                              "HOME": str(home)})
    assert [p.relative_to(home).as_posix() for p in home.rglob("*")] == []
    # JAX made its cache folder there (entries only for compiles over 0.5 s, which a fast one skips)
    assert (Path(os.environ["FERJAX_CACHE_DIR"]) / "jax").is_dir()
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert KEYS <= set(result) and result["n"] == 64 and result["protocol"] == "original"
    assert set(result["per_class_recall"]) == {"angry", "disgust", "fear", "happy", "sad",
                                               "surprise", "neutral"}
    assert (tmp_path / "confusion_test.png").is_file()


def test_evaluate_without_the_test_rows_seen_in_training(tmp_path, tfds_dir):
    """--config.training_twins=drop scores only PrivateTest rows whose image is not in Training."""
    rows = synthetic_rows()
    train = [i for i, r in enumerate(rows) if r[2] == "Training"]
    private = [i for i, r in enumerate(rows) if r[2] == "PrivateTest"]
    for t, s in zip(private[:3], train[:3]):
        rows[t] = (rows[s][0], rows[s][1].copy(), "PrivateTest")
    write_csv(tmp_path / "fer" / "fer2013.csv", rows)
    proc = run_cli("--experiment=evaluate", "--config.training_twins=drop", f"--workdir={tmp_path / 'w'}",
                   f"--config.data.fer2013_path={tmp_path / 'fer'}", f"--config.data.tfds_data_dir={tfds_dir}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (result["n"], result["split_rows"], result["rows_with_training_twin"]) == (61, 64, 3)
    assert result["training_twins"] == "drop"
    assert len(np.load(tmp_path / "w" / "predictions_test.npz")["row"]) == 61
    proc = run_cli("--experiment=evaluate", "--config.training_twins=maybe", f"--workdir={tmp_path / 'x'}",
                   check=False)
    assert proc.returncode != 0 and "training_twins" in proc.stderr and "'drop'" in proc.stderr


@pytest.mark.slow  # a long end-to-end run: the slow set (pytest -m slow)
def test_evaluate_reproduces_model_card_on_privatetest(tmp_path, real_fer, tfds_dir):
    """The shipped weights give exactly the PrivateTest figures their model card states."""
    card = pretrained.load()[2]
    proc = run_cli("--experiment=evaluate", f"--config.data.fer2013_path={real_fer}",
                   f"--workdir={tmp_path}", env_extra={"TFDS_DATA_DIR": str(tfds_dir)})
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["n"] == card["n"] == 3589 and result["model"] == card["name"] == pretrained.DEFAULT
    assert result["protocol"] == card["protocol"] == "original"
    # Every figure of the card, within one image's worth (float rounding may flip a borderline face).
    private_counts = dict(zip(card["classes"], (491, 55, 528, 879, 594, 416, 626)))  # GUIDE.md
    assert set(result["per_class_recall"]) == set(card["per_class_recall"]) == set(private_counts)
    for cls, recall in card["per_class_recall"].items():
        assert result["per_class_recall"][cls] == pytest.approx(recall, abs=1.01 / private_counts[cls]), cls
    assert result["accuracy"] == pytest.approx(card["accuracy"], abs=1.01 / 3589)
    assert result["balanced_accuracy"] == pytest.approx(card["balanced_accuracy"], abs=2e-3)
    assert result["macro_f1"] == pytest.approx(card["macro_f1"], abs=2e-3)


def test_unknown_pretrained_model_fails_fast(tmp_path):
    proc = run_cli("--experiment=evaluate", "--config.model=fer2013_vgg_smal",
                   f"--workdir={tmp_path}", check=False)
    assert proc.returncode == 2 and "Did you mean: fer2013_vgg_small" in proc.stderr


def test_flip_tta_is_mirror_invariant_and_differs_from_plain():
    """Flip TTA averages a face with its mirror image, so mirrored inputs give equal logits."""
    from ferjax.tasks.evaluate import TTA_MODES
    model, variables, _ = pretrained.load()
    plain = lambda v, x: model.apply(v, x, train=False)
    flip = TTA_MODES["flip"](plain)
    x = np.random.default_rng(1).uniform(0, 255, (4, 48, 48, 1)).astype(np.float32)
    np.testing.assert_allclose(flip(variables, x), flip(variables, x[:, :, ::-1]), atol=1e-4)
    assert not np.allclose(plain(variables, x), plain(variables, x[:, :, ::-1]), atol=1e-4)


def test_unknown_tta_mode_fails_before_loading_data(tmp_path):
    proc = run_cli("--experiment=evaluate", "--config.tta=mirror", f"--workdir={tmp_path}",
                   env_extra={"FER2013_PATH": str(tmp_path / "absent.csv")}, check=False)
    assert proc.returncode == 2 and "config.tta='mirror'" in proc.stderr  # refused at config validation
    assert "'flip'" in proc.stderr


def test_logit_adjustment_chooses_tau_on_publictest_and_reports_it(tmp_path, synthetic_csv, tfds_dir):
    """`--config.logit_adjustment=select`: tau from the fixed grid, chosen on the validation split
    (its table in the report); refused when the split evaluated is the selection split itself."""
    from ferjax.eval.logit_adjustment import TAUS

    env = {"FER2013_PATH": str(synthetic_csv), "TFDS_DATA_DIR": str(tfds_dir)}
    proc = run_cli("--experiment=evaluate", "--config.logit_adjustment=select", f"--workdir={tmp_path}",
                   env_extra=env)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    adjustment = result["logit_adjustment"]
    assert adjustment["tau"] in TAUS and [row["tau"] for row in adjustment["table"]] == list(TAUS)
    assert adjustment["selected_on"] == "validation (PublicTest)" and len(adjustment["offset"]) == 7
    proc = run_cli("--experiment=evaluate", "--config.logit_adjustment=select", "--config.split=validation",
                   f"--workdir={tmp_path / 'v'}", env_extra=env, check=False)
    assert proc.returncode == 1 and "--config.split=test" in proc.stderr
    proc = run_cli("--experiment=evaluate", "--config.logit_adjustment=always", f"--workdir={tmp_path / 'w'}",
                   env_extra=env, check=False)
    assert proc.returncode != 0 and "logit_adjustment" in proc.stderr


def test_evaluate_exports_the_adjusted_model_with_its_card(tmp_path, synthetic_csv, tfds_dir):
    """`--config.export_to`: the source weights with the chosen offset in the output bias (its
    logits move by exactly the offset) and a card with the test figures just measured; refused
    without the adjustment."""
    import flax.serialization

    env = {"FER2013_PATH": str(synthetic_csv), "TFDS_DATA_DIR": str(tfds_dir)}
    out = tmp_path / "adjusted.msgpack"
    proc = run_cli("--experiment=evaluate", "--config.model=fer2013_vgg_small", "--config.logit_adjustment=select",
                   f"--config.export_to={out}", "--config.export_name=adjusted_test", f"--workdir={tmp_path / 'e'}",
                   env_extra=env)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["name"] == "adjusted_test" and card["adjusted_from"] == "fer2013_vgg_small"
    assert card["accuracy"] == result["accuracy"] and card["logit_adjustment"]["tau"] == result["logit_adjustment"]["tau"]
    model, source, _ = pretrained.load("fer2013_vgg_small")
    adjusted = flax.serialization.from_bytes(source, out.read_bytes())
    x = np.random.default_rng(2).uniform(0, 255, (3, 48, 48, 1)).astype(np.float32)
    delta = np.asarray(model.apply(adjusted, x, train=False)) - np.asarray(model.apply(source, x, train=False))
    np.testing.assert_allclose(delta, np.broadcast_to(card["logit_adjustment"]["offset"], delta.shape), atol=1e-4)
    proc = run_cli("--experiment=evaluate", f"--config.export_to={tmp_path / 'x.msgpack'}", "--config.export_name=x",
                   f"--workdir={tmp_path / 'f'}", env_extra=env, check=False)
    assert proc.returncode == 1 and "--config.logit_adjustment=select" in proc.stderr
