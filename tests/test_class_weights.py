"""Class-weighted cross-entropy (the `train.class_weighting=balanced` baseline of the balancing study)."""
import jax.numpy as jnp
import numpy as np
import pytest

from ferjax.registry import LOSSES
from ferjax.tasks.train_classifier import balanced_class_weights


def test_weighted_cross_entropy_matches_the_weighted_mean():
    """PyTorch's CrossEntropyLoss(weight=w) convention, written out with NumPy."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(16, 7)).astype(np.float32)
    labels = rng.integers(0, 7, 16)
    weights = tuple(float(w) for w in rng.uniform(0.2, 3.0, 7))
    ours = LOSSES.create("cross_entropy", num_classes=7, class_weights=weights)
    shifted = logits - logits.max(1, keepdims=True)
    nll = -(shifted - np.log(np.exp(shifted).sum(1, keepdims=True)))[np.arange(16), labels]
    w = np.asarray(weights)[labels]
    expected = float((w * nll).sum() / w.sum())
    assert float(ours(jnp.asarray(logits), jnp.asarray(labels))) == pytest.approx(expected, rel=1e-5)
    unweighted = LOSSES.create("cross_entropy", num_classes=7)
    ones = LOSSES.create("cross_entropy", num_classes=7, class_weights=(1.0,) * 7)
    assert float(ones(logits, labels)) == pytest.approx(float(unweighted(logits, labels)), rel=1e-6)


def test_balanced_weights_equalise_class_totals():
    labels = np.array([0] * 10 + [1] * 2 + [3] * 4)
    w = balanced_class_weights(labels, 4)
    assert w == pytest.approx((16 / 40, 16 / 8, 0.0, 16 / 16))
    totals = [w[c] * (labels == c).sum() for c in (0, 1, 3)]
    assert totals == pytest.approx([4.0, 4.0, 4.0])


def test_wrong_number_of_weights_is_refused():
    with pytest.raises(ValueError, match="3 class_weights for 7 classes"):
        LOSSES.create("cross_entropy", num_classes=7, class_weights=(1.0, 2.0, 3.0))
