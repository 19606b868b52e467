"""Generator quality on features of a ferjax classifier: KID, FID and GAN-test.

KID (Binkowski et al. 2018) is the unbiased MMD^2 with the cubic polynomial kernel
k(x, y) = (x.y / d + 1)^3, averaged over random subsets (mean and standard deviation): unlike FID
it is unbiased at the few hundred images FER2013's disgust class has. FID is the Frechet
distance between Gaussians fitted to the same features. GAN-test (Shmelkov et al. 2018) is the
fraction of generated target-class images that a classifier trained on real data assigns to the
target class.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

FEATURE_LAYER = "Dense_0"  # VGGNet's hidden Dense layer (256 units, before its ReLU)


def feature_fn(model: Any, variables: Any, layer: str = FEATURE_LAYER,
               batch: int = 256) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """uint8-range [N,48,48,1] images -> (features of `layer`, class probabilities); a spatial
    layer's output is averaged over its positions."""

    @jax.jit
    def run(x):
        logits, state = model.apply(variables, x, train=False, capture_intermediates=True,
                                    mutable=["intermediates"])
        feats = state["intermediates"][layer]["__call__"][0]
        feats = feats.mean(axis=(1, 2)) if feats.ndim == 4 else feats
        return feats, jax.nn.softmax(logits, -1)

    def apply(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feats, probs = [], []
        for i in range(0, len(images), batch):
            chunk = np.asarray(images[i:i + batch], np.float32)
            pad = batch - len(chunk)
            f, p = run(np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)]) if pad else chunk)
            feats.append(np.asarray(f)[:len(chunk)])
            probs.append(np.asarray(p)[:len(chunk)])
        return np.concatenate(feats), np.concatenate(probs)

    if layer not in _layer_names(model, variables):
        raise ValueError(f"feature layer {layer!r} not in the classifier; it has {_layer_names(model, variables)}")
    return apply


def _layer_names(model: Any, variables: Any) -> list[str]:
    _, state = model.apply(variables, jnp.zeros((1, 48, 48, 1)), train=False,
                           capture_intermediates=True, mutable=["intermediates"])
    return sorted(k for k in state["intermediates"] if k != "__call__")


def kid(real: np.ndarray, fake: np.ndarray, subset_size: int = 100, subsets: int = 100,
        seed: int = 0) -> tuple[float, float]:
    """(mean, standard deviation) of the unbiased MMD^2 over random subsets."""
    rng = np.random.default_rng(seed)
    m = min(subset_size, len(real), len(fake))
    d = real.shape[1]
    values = []
    for _ in range(subsets):
        x = real[rng.choice(len(real), m, replace=False)].astype(np.float64)
        y = fake[rng.choice(len(fake), m, replace=False)].astype(np.float64)
        kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
        off = lambda k: (k.sum() - np.trace(k)) / (m * (m - 1))
        values.append(off(kxx) + off(kyy) - 2 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to the two feature sets."""
    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))
