"""On-device image augmentation (random crop, flip, small rotation, brightness/contrast), jittable.

Runs inside the jitted train step, so the host only gathers uint8 batches and never stalls it.
"""
from __future__ import annotations

import dm_pix as pix
import jax
import jax.numpy as jnp
import ml_collections


def augment_batch(rng: jax.Array, images: jax.Array, cfg: ml_collections.ConfigDict) -> jax.Array:
    """Augments a [N,H,W,C] float batch (0..255); `cfg` holds crop_pad, flip, rotate_deg, jitter."""
    n, h, w, c = images.shape
    k_crop, k_flip, k_rot, k_jit = jax.random.split(rng, 4)
    x = images
    if cfg.rotate_deg:
        angles = jnp.deg2rad(jax.random.uniform(k_rot, (n,), minval=-cfg.rotate_deg,
                                                maxval=cfg.rotate_deg))
        x = jax.vmap(lambda im, a: pix.rotate(im, a, mode="nearest"))(x, angles)
    if cfg.crop_pad:
        p = cfg.crop_pad
        padded = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="edge")
        keys = jax.random.split(k_crop, n)
        x = jax.vmap(lambda k, im: pix.random_crop(k, im, (h, w, c)))(keys, padded)
    if cfg.flip:
        keys = jax.random.split(k_flip, n)
        x = jax.vmap(pix.random_flip_left_right)(keys, x)
    if cfg.jitter:
        kb, kc = jax.random.split(k_jit)
        scale = 1.0 + jax.random.uniform(kc, (n, 1, 1, 1), minval=-cfg.jitter, maxval=cfg.jitter)
        shift = 255.0 * jax.random.uniform(kb, (n, 1, 1, 1), minval=-cfg.jitter, maxval=cfg.jitter)
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        x = jnp.clip((x - mean) * scale + mean + shift, 0.0, 255.0)
    return x
