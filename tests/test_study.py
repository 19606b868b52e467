"""Multi-seed studies (ferjax.tasks.studies.study) and the balancing study on the synthetic FER2013."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import run_cli
from ferjax.data.fer2013 import EMOTIONS
from ferjax.tasks.studies import study
from ferjax.eval.metrics import classification_report


def test_bootstrap_metrics_equal_the_report_on_each_resample():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, 300)
    preds = np.stack([np.where(rng.random(300) < 0.6, y, rng.integers(0, 7, 300)) for _ in range(3)])
    idx = rng.integers(0, 300, (5, 300))
    boot = study._bootstrap_metrics(y, preds, idx, focus=1)
    for b in range(5):
        for r in range(3):
            report = classification_report(y[idx[b]], preds[r, idx[b]], EMOTIONS)
            for m in study.METRICS:
                assert boot[m][b, r] == pytest.approx(report[m], abs=1e-12)
            assert boot["focus_recall"][b, r] == pytest.approx(report["per_class_recall"]["disgust"])


def _fake_runs(tmp_path, preds: dict, rows):
    runs = {}
    for arm, per_seed in preds.items():
        runs[arm] = []
        for s, p in enumerate(per_seed):
            d = tmp_path / arm / f"seed{s}"
            d.mkdir(parents=True)
            np.savez(d / "predictions_test.npz", logits=np.eye(7, dtype=np.float32)[p], row=rows,
                     label=np.zeros(len(p)))
            runs[arm].append(d)
    return runs


def test_score_means_sds_and_intervals(tmp_path):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 7, 400)
    rows = np.arange(400) + 1000
    noisy = [np.where(rng.random(400) < 0.5, y, (y + 1) % 7) for _ in range(2)]
    runs = _fake_runs(tmp_path, {"base": noisy, "same": noisy, "perfect": [y, y]}, rows)
    out = study.score(study.load_predictions(runs, rows), y, np.ones(400, bool), "base", focus=1, n_boot=300)
    assert "diff" not in out["base"]["accuracy"]
    acc = [float((p == y).mean()) for p in noisy]
    assert out["base"]["accuracy"]["mean"] == pytest.approx(np.mean(acc))
    assert out["base"]["accuracy"]["sd"] == pytest.approx(np.std(acc, ddof=1))
    assert out["same"]["accuracy"]["diff_ci95"] == [0.0, 0.0]
    assert not out["same"]["accuracy"]["ci_excludes_zero"]
    assert out["perfect"]["accuracy"]["mean"] == 1.0 and out["perfect"]["accuracy"]["ci_excludes_zero"]
    lo, hi = out["perfect"]["accuracy"]["diff_ci95"]
    assert lo < 1 - np.mean(acc) < hi
    assert np.asarray(out["perfect"]["confusion_matrix"]).trace() == 800
    with pytest.raises(ValueError, match="test rows differ"):
        study.load_predictions(runs, rows + 1)


def test_test_rows_with_a_training_twin_get_their_own_table(tmp_path):
    """A model right only on the test faces it has seen in Training scores 0 on the other rows."""
    rng = np.random.default_rng(2)
    train = rng.integers(0, 250, (50, 48, 48, 1), dtype=np.uint8)
    test = rng.integers(0, 250, (40, 48, 48, 1), dtype=np.uint8)
    test[:6] = train[:6]
    test[6] = train[6] + 3  # a near copy
    y, rows = rng.integers(0, 7, 40), np.arange(40)
    seen = np.where(rows < 7, y, (y + 1) % 7)
    runs = _fake_runs(tmp_path, {"as_is": [y, y], "seen": [seen, seen]}, rows)
    splits = {"train": {"image": train},
              "test": {"image": test, "label": y, "row": rows, "ferplus_votes": np.zeros((40, 10), np.int32)}}
    scores = study.score_test_labels(runs, splits, "as_is", focus=1, n_boot=50, seed=0)
    assert set(scores) == {"original", study.NO_TWIN}  # no FER+ majority on any row
    assert scores["original"]["seen"]["accuracy"]["mean"] == pytest.approx(7 / 40)
    assert scores[study.NO_TWIN]["seen"]["n_test"] == 33
    assert scores[study.NO_TWIN]["seen"]["accuracy"]["mean"] == 0.0


@pytest.fixture(scope="module")
def balancing(synthetic_csv, tfds_dir, tmp_path_factory):
    """compare_balancing:tiny run once: 3 arms x 2 seeds of fer2013_vgg:tiny on the synthetic CSV."""
    wd = tmp_path_factory.mktemp("balancing")
    args = ["--experiment=compare_balancing:tiny", f"--workdir={wd}",
            f"--config.data.fer2013_path={synthetic_csv}", f"--config.data.tfds_data_dir={tfds_dir}",
            "--config.target_count=30"]
    return args, wd, run_cli(*args)


@pytest.mark.slow  # a long end-to-end run: the slow set (pytest -m slow)
def test_balancing_study_runs_resumes_and_refuses_a_changed_recipe(balancing):
    """Oversampled data made by the balance task; report, tables and confusion PNGs; a rerun
    trains nothing; a changed recipe is refused naming the field."""
    args, wd, proc = balancing
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    table = summary["mean_over_seeds"]["original"]
    assert set(table) == {"as_is", "oversample", "class_weighted"}
    assert "[6/6] class_weighted seed 1: training fer2013_vgg:tiny" in proc.stdout
    assert "[3/6] class_weighted seed 0: training" in proc.stdout  # seed-major: every arm's seed 0 first
    assert "FER+ scoring skipped: no fer2013new.csv votes" in proc.stdout
    manifest = json.loads((wd / "data" / "oversample" / "manifest.json").read_text())
    assert manifest["counts"]["train_per_class_after"]["disgust"] == 30
    saved = json.loads((wd / "comparison.json").read_text())["original"]
    assert len(saved["oversample"]["per_seed"]) == 2 and "diff_ci95" in saved["oversample"]["macro_f1"]
    md = (wd / "comparison.md").read_text()
    assert "| oversample (n=64, 2 seeds) |" in md and (wd / "confusion_original.png").exists()
    learned = summary["learned_added"]
    assert set(learned) == {"as_is", "oversample", "class_weighted"} and "added" not in learned["as_is"]
    assert learned["oversample"]["added"] == 30 - learned["oversample"]["real"]
    assert 0 <= learned["oversample"]["added_target_rate"] <= 1
    assert "## Added examples: learned, or told apart?" in md
    assert f"| oversample | {100 * learned['oversample']['real_target_rate']:.1f}% of" in md
    cfg = json.loads((wd / "class_weighted" / "seed1" / "config.json").read_text())
    assert cfg["train"]["class_weighting"] == "balanced" and cfg["train"]["seed"] == 1
    # A run finished before an option existed (its config lacks it) is kept while the study asks
    # for the option's default, and refused when it asks for another value.
    first = wd / "as_is" / "seed0" / "config.json"
    saved = json.loads(first.read_text())
    del saved["train"]["ema_decay"]
    first.write_text(json.dumps(saved))
    again = run_cli(*args)
    assert again.stdout.count("done before, kept") == 6 and "training" not in again.stdout
    changed = run_cli(*args, "--config.recipe_overrides=('train.epochs=3',)", check=False)
    assert changed.returncode == 1 and "train.epochs: 2 -> 3" in changed.stderr
    changed = run_cli(*args, "--config.recipe_overrides=('train.ema_decay=0.5',)", check=False)
    assert changed.returncode == 1 and "as_is/seed0 finished with another config (train.ema_decay: None -> 0.5)" \
        in changed.stderr


@pytest.mark.slow  # a long end-to-end run: the slow set (pytest -m slow)
def test_a_finished_run_predicts_as_it_did_at_its_test_evaluation(balancing, synthetic_csv, tfds_dir):
    """The shortcut check's classifier, read back from a run's best checkpoint, predicts the test
    split exactly as the run itself did when it finished."""
    from ferjax import config as cfg_lib
    from ferjax.tasks.studies.shortcut import run_predictor
    from ferjax.registry import DATASETS

    _, wd, _ = balancing
    data = cfg_lib.build("fer2013_vgg:tiny", [f"data.fer2013_path={synthetic_csv}",
                                              f"data.tfds_data_dir={tfds_dir}"]).data
    test = DATASETS.create("fer2013", cfg=data, protocol="original")["test"]
    for run in (wd / "as_is" / "seed0", wd / "oversample" / "seed1"):
        with np.load(run / "predictions_test.npz") as f:
            np.testing.assert_array_equal(f["row"], test["row"])
            np.testing.assert_array_equal(run_predictor(run)(test["image"]), f["logits"].argmax(-1))
    with pytest.raises(FileNotFoundError, match="holds no checkpoint: is .* a finished training run"):
        run_predictor(wd / "data")


@pytest.mark.slow  # a long end-to-end run: the slow set (pytest -m slow)
def test_curation_study_reuses_the_balancing_baseline(balancing, synthetic_csv, tfds_dir, tmp_path):
    """compare_curation:tiny trains only the curated arm; as_is comes from the balancing study."""
    from ferjax import config as cfg_lib
    from ferjax.data.derived import DerivedBuilder

    _, balancing_wd, _ = balancing
    data = [f"data.fer2013_path={synthetic_csv}", f"data.tfds_data_dir={tfds_dir}"]
    builder = DerivedBuilder("fer2013", cfg_lib.build("fer2013_vgg:tiny", data).data)
    for row in range(0, 40, 3):
        builder.remove(row, "test: pretend non-face")
    curated = builder.write(tmp_path / "curated", "test")
    proc = run_cli("--experiment=compare_curation:tiny", f"--workdir={tmp_path / 'study'}",
                   f"--config.curated_dir={curated}", f"--config.reuse_baseline_from={balancing_wd}",
                   *(f"--config.{d}" for d in data))
    assert proc.stdout.count("done before, kept") == 2 and proc.stdout.count(": training") == 2
    assert f"({balancing_wd / 'as_is' / 'seed0'})" in proc.stdout
    scores = json.loads((tmp_path / "study" / "comparison.json").read_text())["original"]
    assert set(scores) == {"as_is", "curated"} and "diff_ci95" in scores["curated"]["accuracy"]
    missing = run_cli("--experiment=compare_curation:tiny", f"--workdir={tmp_path / 'x'}",
                      f"--config.curated_dir={tmp_path}", check=False)
    assert missing.returncode == 1 and "holds no derived dataset (no manifest.json)" in missing.stderr


@pytest.mark.slow  # a long end-to-end run: the slow set (pytest -m slow)
def test_logit_adjusted_arm_reuses_the_as_is_weights_and_only_evaluates_again(balancing, tmp_path):
    """The `logit_adjusted` arm trains nothing: it copies each finished as_is run's checkpoints,
    chooses tau on the validation split and predicts the test split with the as_is logits plus
    the offset; a rerun keeps it."""
    args, wd, _ = balancing
    shutil.copytree(wd / "as_is", tmp_path / "as_is")
    study_args = [a for a in args if not a.startswith("--workdir=")] + [
        f"--workdir={tmp_path}", "--config.arms=as_is,logit_adjusted"]
    proc = run_cli(*study_args)
    assert "training" not in proc.stdout
    assert "[2/4] logit_adjusted seed 0: the as_is run's weights, evaluated again" in proc.stdout
    for seed in (0, 1):
        run, base = tmp_path / "logit_adjusted" / f"seed{seed}", tmp_path / "as_is" / f"seed{seed}"
        report = json.loads((run / "report.json").read_text())
        assert report["best_step"] == json.loads((base / "report.json").read_text())["best_step"]
        offset = np.asarray(report["logit_adjustment"]["offset"], np.float32)
        with np.load(run / "predictions_test.npz") as adjusted, np.load(base / "predictions_test.npz") as plain:
            np.testing.assert_allclose(adjusted["logits"], plain["logits"] + offset, atol=1e-4)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(summary["mean_over_seeds"]["original"]) == {"as_is", "logit_adjusted"}
    again = run_cli(*study_args)
    assert again.stdout.count("done before, kept") == 4
