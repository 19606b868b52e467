"""Image-to-image generators for CycleGAN (48x48 grey faces in [-1, 1])."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ferjax.registry import GENERATORS

UPSAMPLING = ("transpose", "resize")


class ResnetGenerator(nn.Module):
    """CycleGAN's ResNet generator: c7s1 stem, 2 stride-2 downs, residual blocks, 2 ups, tanh.

    Batch norm and dropout inside residual blocks, as in the paper's stable CycleGAN;
    `norm="instance"` uses instance normalisation instead (Zhu et al.). `upsample="resize"`
    replaces each stride-2 transposed convolution by a nearest-neighbour 2x resize and a 3x3
    convolution (no checkerboard artefacts, Odena et al. 2016). `residual=True` makes the
    network predict an edit of its input: the output is tanh(atanh(x) + d) with the last
    convolution, d, initialised to zero, so an untrained generator is the identity and keeps
    the input's sharpness (residual image learning, Shen & Liu 2017).
    """

    base: int = 32
    blocks: int = 6
    dropout: float = 0.5
    channels: int = 1
    norm: str = "batch"
    upsample: str = "transpose"
    residual: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        def norm(y):
            if self.norm == "instance":
                return nn.GroupNorm(num_groups=None, group_size=1, use_bias=True, use_scale=True)(y)
            return nn.BatchNorm(use_running_average=not train, momentum=0.9)(y)

        def up(y, features):
            if self.upsample == "resize":
                n, h, w, c = y.shape
                y = jax.image.resize(y, (n, 2 * h, 2 * w, c), method="nearest")
                return nn.Conv(features, (3, 3))(y)
            return nn.ConvTranspose(features, (3, 3), strides=(2, 2))(y)

        y = nn.relu(norm(nn.Conv(self.base, (7, 7))(x)))
        for mult in (2, 4):
            y = nn.relu(norm(nn.Conv(self.base * mult, (3, 3), strides=(2, 2))(y)))
        for _ in range(self.blocks):
            r = nn.relu(norm(nn.Conv(self.base * 4, (3, 3))(y)))
            r = nn.Dropout(self.dropout, deterministic=not train)(r)
            y = y + norm(nn.Conv(self.base * 4, (3, 3))(r))
        for mult in (2, 1):
            y = nn.relu(norm(up(y, self.base * mult)))
        if not self.residual:
            return jnp.tanh(nn.Conv(self.channels, (7, 7))(y))
        edit = nn.Conv(self.channels, (7, 7), kernel_init=nn.initializers.zeros)(y)
        return jnp.tanh(jnp.arctanh(jnp.clip(x, -0.995, 0.995)) + edit)


@GENERATORS.register("resnet")
def resnet(base: int = 32, blocks: int = 6, dropout: float = 0.5, norm: str = "batch",
           upsample: str = "transpose", residual: bool = False) -> nn.Module:
    """CycleGAN ResNet generator (batch norm, dropout in residual blocks), 48x48 -> 48x48."""
    if norm not in ("batch", "instance"):
        raise ValueError(f"generator norm {norm!r}: expected 'batch' or 'instance'")
    if upsample not in UPSAMPLING:
        raise ValueError(f"generator upsample {upsample!r}: expected one of {', '.join(UPSAMPLING)}")
    return ResnetGenerator(base=base, blocks=blocks, dropout=dropout, norm=norm,
                           upsample=upsample, residual=bool(residual))
