"""Evaluation metrics against hand-computed values, and the figures they draw."""
import numpy as np

from ferjax.eval.metrics import classification_report, confusion_matrix
from ferjax.eval.plots import plot_confusion, plot_curves


def test_report_values():
    y = np.array([0, 0, 0, 1, 1, 2])
    p = np.array([0, 0, 1, 1, 0, 2])
    r = classification_report(y, p, ["a", "b", "c"])
    assert r["n"] == 6 and abs(r["accuracy"] - 4 / 6) < 1e-12
    assert r["per_class_recall"] == {"a": 2 / 3, "b": 0.5, "c": 1.0}
    assert abs(r["balanced_accuracy"] - (2 / 3 + 0.5 + 1) / 3) < 1e-12
    f1_a = 2 * (2 / 3) * (2 / 3) / (4 / 3)
    f1_b = 2 * 0.5 * 0.5 / 1.0
    assert abs(r["macro_f1"] - (f1_a + f1_b + 1.0) / 3) < 1e-12
    assert confusion_matrix(y, p, 3).tolist() == [[2, 1, 0], [1, 1, 0], [0, 0, 1]]


def test_absent_class_excluded_from_means():
    r = classification_report(np.array([0, 0]), np.array([0, 1]), ["a", "b", "c"])
    assert r["balanced_accuracy"] == 0.5 and r["support"]["c"] == 0


def test_plots_write_png(tmp_path):
    plot_confusion(np.array([[5, 1], [2, 7]]), ["x", "y"], tmp_path / "c.png", "t")
    plot_curves([{"epoch": 1, "train_loss": 1.0, "val_loss": 1.1, "train_accuracy": 0.3,
                  "val_accuracy": 0.2}], tmp_path / "k.png", "t")
    for f in ("c.png", "k.png"):
        assert (tmp_path / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mean_cross_entropy():
    from ferjax.eval.predict import mean_cross_entropy

    logits = np.log(np.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]))
    assert abs(mean_cross_entropy(logits, np.array([0, 1])) - (-(np.log(0.5) + np.log(0.8)) / 2)) < 1e-12
