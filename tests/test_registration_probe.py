"""ferjax/probes/registration_probe.py: its warp, its training pairs and its AUC (the analysis itself trains
two CNNs on FER2013 for about 15 minutes; README "Curating FER2013" records its run)."""
from __future__ import annotations

import numpy as np

from ferjax.probes import registration_probe as probe


def _face_like() -> np.ndarray:
    """A 48x48 uint8 image with no symmetry: a gradient, two dark 'eyes' and a 'mouth'."""
    y, x = np.mgrid[:48, :48]
    img = 90 + 2 * x + y
    img[14:20, 10:18] = 20
    img[14:20, 30:38] = 30
    img[34:38, 16:34] = 200
    return img.astype(np.uint8)


def test_the_identity_warp_keeps_the_image_and_a_shift_moves_it():
    img = _face_like()
    assert np.array_equal(probe.warp(img, 0.0, 1.0, 0.0, 0.0), img)
    shifted = probe.warp(img, 0.0, 1.0, 5.0, 0.0)
    assert np.array_equal(shifted[:, 5:], img[:, :-5])


def test_training_pairs_are_balanced_and_misregistered_copies_move_further():
    img = _face_like()
    rng = np.random.default_rng(0)
    pairs = [probe.training_pair(img, rng) for _ in range(400)]
    labels = np.array([y for _, y in pairs])
    change = np.array([np.abs(x.astype(np.float64) - img).mean() for x, _ in pairs])
    assert 150 < labels.sum() < 250
    assert all(x.shape == (48, 48) and x.dtype == np.uint8 for x, _ in pairs)
    assert np.median(change[labels == 1]) > 2 * np.median(change[labels == 0])


def test_auc_counts_ranked_pairs_and_halves_ties():
    truth = np.array([True, True, False, False, False])
    assert probe.auc(np.array([0.9, 0.8, 0.1, 0.2, 0.3]), truth) == 1.0
    assert probe.auc(np.array([0.1, 0.2, 0.9, 0.8, 0.7]), truth) == 0.0
    assert probe.auc(np.full(5, 0.5), truth) == 0.5
    assert probe.auc(np.array([0.9, 0.2, 0.1, 0.5, 0.3]), truth) == 4 / 6
