"""Post-hoc logit adjustment: tau selection on the selection split and folding into the output bias."""
import flax.linen as nn
import jax
import numpy as np
import pytest

from ferjax.eval import logit_adjustment as la
from ferjax.registry import CLASSIFIERS

CLASSES = ("a", "b", "c")


def test_class_prior_counts_an_absent_class_as_one():
    prior = la.class_prior(np.array([0, 0, 0, 1]), 3)
    assert np.allclose(prior, [3 / 5, 1 / 5, 1 / 5])


def test_select_moves_decisions_to_the_rare_class_when_that_scores_higher():
    """Logits that favour the frequent class: the rare class's examples score 0.4 below it, so
    only a tau that lifts the rare class by more than 0.4 recalls them; tau = 0 when nothing helps."""
    prior = np.array([0.9, 0.1, 0.0001])
    labels = np.array([0] * 8 + [1] * 2)
    logits = np.zeros((10, 3))
    logits[:8, 0] = 3.0  # frequent class: clear margins
    logits[8:, 0], logits[8:, 1] = 1.0, 0.6  # rare class: just below the frequent one
    logits[:, 2] = -50.0
    choice = la.select(logits, labels, prior, CLASSES)
    shift = la.offset(prior, choice["tau"])
    assert choice["tau"] > 0 and (shift[1] - shift[0]) > 0.4
    assert np.all((logits + shift).argmax(1) == labels)
    assert [row["tau"] for row in choice["table"]] == list(la.TAUS)
    assert choice["table"][0]["balanced_accuracy"] == pytest.approx(0.5)
    perfect = np.eye(3)[labels] * 20.0
    assert la.select(perfect, labels, prior, CLASSES)["tau"] == 0.0  # ties: the smallest tau
    with pytest.raises(ValueError, match="one length"):
        la.select(logits[:3], labels, prior, CLASSES)


def test_fold_into_output_bias_moves_a_real_classifiers_logits_exactly():
    """vgg_small (quarter width): the folded weights' logits are the old ones plus the offset, and
    only one leaf (the output bias) changes."""
    model = CLASSIFIERS.create("vgg_small", width=0.25)
    images = np.random.default_rng(0).integers(0, 256, (8, 48, 48, 1)).astype(np.float32)
    variables = model.init(jax.random.key(0), images[:1], train=False)
    shift = la.offset(np.array([0.25, 0.015, 0.14, 0.25, 0.17, 0.11, 0.065]), 0.5)
    moved = la.fold_into_output_bias(model, variables, shift, images)
    before = np.asarray(model.apply(variables, images, train=False))
    after = np.asarray(model.apply(moved, images, train=False))
    np.testing.assert_allclose(after - before, np.broadcast_to(shift, before.shape), atol=1e-4)
    changed = [a.shape for a, b in zip(jax.tree.leaves(moved), jax.tree.leaves(variables))
               if not np.array_equal(a, b)]
    assert changed == [(7,)]


def test_a_classifier_without_an_output_bias_is_refused():
    class NoBias(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            h = nn.Dense(7)(x.reshape(x.shape[0], -1))
            return nn.Dense(7, use_bias=False)(nn.relu(h))

    model = NoBias()
    images = np.ones((2, 48, 48, 1), np.float32)
    variables = model.init(jax.random.key(0), images)
    with pytest.raises(ValueError, match="output layer with a bias"):
        la.fold_into_output_bias(model, variables, np.ones(7, np.float32), images)
