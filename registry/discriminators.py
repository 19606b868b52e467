"""Discriminators for CycleGAN (48x48 grey faces in [-1, 1])."""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

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


class ProjectedDiscriminator(nn.Module):
    """A discriminator on the feature maps of a frozen pretrained classifier (after Sauer et al.
    2021, "Projected GANs"): per feature map a small trainable head (1x1 conv, then `layers` - 1
    3x3 convs with norm and leaky ReLU, then one logit per position); the logits of all maps are
    concatenated ([N, positions, 1], like PatchGAN's one score per patch). `features` maps images
    in [-1, 1] to the frozen maps; its weights are constants, never trained, and the generator's
    gradient flows through them to its images."""

    features: Callable[[jax.Array], list[jax.Array]]
    feature_model: str = ""  # the pretrained classifier behind `features` (it must not be the judge)
    base: int = 32
    layers: int = 3
    norm: str = "batch"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        logits = []
        for fmap in self.features(x):
            y = nn.leaky_relu(nn.Conv(self.base, (1, 1))(fmap), 0.2)
            for i in range(1, self.layers):
                y = nn.Conv(self.base * 2 ** i, (3, 3))(y)
                if self.norm == "instance":
                    y = nn.GroupNorm(num_groups=None, group_size=1)(y)
                else:
                    y = nn.BatchNorm(use_running_average=not train, momentum=0.9)(y)
                y = nn.leaky_relu(y, 0.2)
            logits.append(nn.Conv(1, (3, 3))(y).reshape(x.shape[0], -1, 1))
        return jnp.concatenate(logits, axis=1)


def frozen_feature_maps(model_name: str, layer_names: tuple[str, ...]) -> Callable[[jax.Array], list[jax.Array]]:
    """Images in [-1, 1] -> the named intermediate outputs of pretrained classifier `model_name`
    (inference mode, weights held as constants); unknown layers are refused, naming the known."""
    from ferjax import pretrained

    model, variables, _ = pretrained.load(model_name)
    wanted = set(layer_names)

    def maps(x: jax.Array) -> list[jax.Array]:
        _, state = model.apply(variables, (x + 1.0) * 127.5, train=False, mutable=["intermediates"],
                               capture_intermediates=lambda mdl, _: mdl.name in wanted)
        return [state["intermediates"][name]["__call__"][0] for name in layer_names]

    _, probe = model.apply(variables, jnp.zeros((1, 48, 48, 1)), train=False, capture_intermediates=True,
                           mutable=["intermediates"])
    known = sorted(k for k in probe["intermediates"] if k != "__call__")
    unknown = [n for n in layer_names if n not in known]
    if unknown or not layer_names:
        raise ValueError(f"discriminator feature layers {list(layer_names)} of {model_name!r}: "
                         f"{'unknown ' + str(unknown) if unknown else 'none given'}; it has {known}")
    return maps


@DISCRIMINATORS.register("projected")
def projected(base: int = 32, layers: int = 3, norm: str = "batch", features: str = "fer2013_robust_small",
              feature_layers: str = "BatchNorm_5,BatchNorm_7") -> nn.Module:
    """Projected GAN: PatchGAN heads on a frozen pretrained classifier's 12x12 and 6x6 feature maps.

    Default features: the adversarially trained `fer2013_robust_small`, whose features follow
    expressions rather than pixel patterns; LSGAN outputs, one per feature-map position."""
    if norm not in ("batch", "instance"):
        raise ValueError(f"discriminator norm {norm!r}: expected 'batch' or 'instance'")
    names = tuple(n.strip() for n in feature_layers.split(",") if n.strip())
    return ProjectedDiscriminator(features=frozen_feature_maps(features, names), feature_model=features,
                                  base=base, layers=layers, norm=norm)
