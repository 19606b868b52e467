"""Layers shared by registered models.

`Conv3x3` is a 3x3 'SAME' convolution. Its backward pass is XLA's own by default; with
`fast_grad=True` it is written by hand instead: the input gradient is a forward convolution with
the flipped kernel and the kernel gradient a single matmul over image patches (exact: tests
compare it with `jax.grad` of `lax.conv_general_dilated`). The hand-written rule was 1.36x faster
with an earlier jaxlib on one device; with jaxlib 0.10.2 on the 2-core VM XLA's gradients are
faster (vgg_small train step at batch 128: 108 vs 95 img/s on one device, 153 vs 108 on the CPU
split into 2 devices, same run; see BENCHMARKS.md), so the rule is kept as an option.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_DN = ("NHWC", "HWIO", "NHWC")


def conv3x3_reference(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Plain 3x3 SAME convolution, NHWC x HWIO."""
    return lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=_DN)


def _patches3x3(x: jax.Array) -> jax.Array:
    """[N,H,W,C] -> [N,H,W,9C]: the 3x3 neighbourhood of each pixel (zero padded), tap-major."""
    h, w = x.shape[1:3]
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return jnp.concatenate([xp[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)], -1)


@jax.custom_vjp
def conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """3x3 SAME convolution with a CPU-friendly backward pass."""
    return conv3x3_reference(x, kernel)


def _conv3x3_fwd(x, kernel):
    return conv3x3_reference(x, kernel), (x, kernel)


def _conv3x3_bwd(res, g):
    x, kernel = res
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
    dx = conv3x3_reference(g, flipped)
    dk = jnp.einsum("nhwp,nhwo->po", _patches3x3(x), g).reshape(kernel.shape)
    return dx, dk


conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


class Conv3x3(nn.Module):
    """3x3 stride-1 SAME convolution (HWIO kernel named `kernel`, optional `bias`)."""

    features: int
    use_bias: bool = True
    fast_grad: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.he_normal(), (3, 3, x.shape[-1], self.features))
        kernel = kernel.astype(x.dtype)
        y = conv3x3(x, kernel) if self.fast_grad else conv3x3_reference(x, kernel)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(x.dtype)
        return y


def max_pool2x2(x: jax.Array) -> jax.Array:
    """2x2/2 max pooling (floor on odd sizes) as a maximum of four strided slices.

    Its gradient is four strided scatters: cheaper on CPU than select-and-scatter, and it
    partitions cleanly over a batch-sharded mesh (a reshape-based pool did not).
    """
    n, h, w, c = x.shape
    x = x[:, : h - h % 2, : w - w % 2]
    return jnp.maximum(jnp.maximum(x[:, 0::2, 0::2], x[:, 0::2, 1::2]),
                       jnp.maximum(x[:, 1::2, 0::2], x[:, 1::2, 1::2]))


def init_variables(module: nn.Module, rngs, x: jax.Array) -> dict:
    """`module.init(rngs, x, train=False)` as one compiled program: op by op, each initializer
    (a truncated normal per weight shape) compiles on its own, 1.5x slower on a CPU; the
    values are the same."""
    return jax.jit(lambda r, inputs: module.init(r, inputs, train=False))(rngs, x)
