"""Expression classifiers. Every classifier takes [N,48,48,1] float grey levels in 0..255.

Each model does its own input preprocessing (scaling, resizing, grey->RGB), so data pipelines,
evaluation and the real-time front-end feed every classifier the same way.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ferjax.data.fer2013 import EMOTIONS
from ferjax.nn import Conv3x3, max_pool2x2
from ferjax.registry import CLASSIFIERS

NUM_CLASSES = len(EMOTIONS)
__all__ = ["EMOTIONS", "NUM_CLASSES", "VGGNet", "VGGFace16"]


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
