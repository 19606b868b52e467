"""Discriminators for CycleGAN (48x48 grey faces in [-1, 1])."""
from __future__ import annotations

import flax.linen as nn
import jax

from ferjax.registry import DISCRIMINATORS


class PatchDiscriminator(nn.Module):
    """PatchGAN: stride-2 4x4 convs with batch norm and leaky ReLU; one logit per image patch."""

    base: int = 32
    layers: int = 3
    norm: str = "batch"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        y = nn.leaky_relu(nn.Conv(self.base, (4, 4), strides=(2, 2))(x), 0.2)
        for i in range(1, self.layers):
            y = nn.Conv(self.base * 2 ** i, (4, 4), strides=(2, 2))(y)
            if self.norm == "instance":
                y = nn.GroupNorm(num_groups=None, group_size=1)(y)
            else:
                y = nn.BatchNorm(use_running_average=not train, momentum=0.9)(y)
            y = nn.leaky_relu(y, 0.2)
        return nn.Conv(1, (4, 4))(y)


@DISCRIMINATORS.register("patchgan")
def patchgan(base: int = 32, layers: int = 3, norm: str = "batch") -> nn.Module:
    """PatchGAN discriminator (LSGAN outputs, one per patch)."""
    if norm not in ("batch", "instance"):
        raise ValueError(f"discriminator norm {norm!r}: expected 'batch' or 'instance'")
    return PatchDiscriminator(base=base, layers=layers, norm=norm)
