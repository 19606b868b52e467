"""MTCNN (Zhang et al. 2016) in JAX with the weights of PyPI's `mtcnn==1.0.0`.

P-Net runs on the whole image pyramid in one jitted call (fixed shapes per frame size);
R-Net and O-Net run on crops taken inside jit (TF `crop_and_resize` semantics) padded to a few
fixed batch sizes. Pyramid, thresholds, NMS and box calibration follow `mtcnn==1.0.0`
exactly, so boxes match that package (tools/compare_mtcnn.py measures it).
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import cv2
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ferjax.realtime import mtcnn_weights
from ferjax.realtime.detect import Detection, ResizingDetector
from ferjax.realtime.width import AUTO

_DN = ("NHWC", "HWIO", "NHWC")
Params = dict[str, list[jax.Array]]


# ----------------------------------------------------------------------------- networks
def _conv(x: jax.Array, k: jax.Array, b: jax.Array) -> jax.Array:
    return lax.conv_general_dilated(x, k, (1, 1), "VALID", dimension_numbers=_DN) + b


def _prelu(x: jax.Array, alpha: jax.Array) -> jax.Array:
    return jnp.where(x > 0, x, x * alpha.reshape(-1))


def _maxpool(x: jax.Array, k: int, s: int, same: bool) -> jax.Array:
    """Keras MaxPooling2D; 'same' pads like TensorFlow (extra padding at the bottom/right)."""
    pads = [(0, 0), (0, 0), (0, 0), (0, 0)]
    if same:
        for ax in (1, 2):
            n = x.shape[ax]
            total = max((math.ceil(n / s) - 1) * s + k - n, 0)
            pads[ax] = (total // 2, total - total // 2)
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, k, k, 1), (1, s, s, 1), pads)


def _flatten_keras(x: jax.Array) -> jax.Array:
    """Keras Permute((2, 1, 3)) + Flatten: swaps H and W before flattening (Caffe legacy)."""
    return x.transpose(0, 2, 1, 3).reshape(x.shape[0], -1)


def pnet(w: Sequence[jax.Array], x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[N,H,W,3] -> box regression [N,h,w,4] and face probability [N,h,w]."""
    x = _maxpool(_prelu(_conv(x, w[0], w[1]), w[2]), 2, 2, True)
    x = _prelu(_conv(x, w[3], w[4]), w[5])
    x = _prelu(_conv(x, w[6], w[7]), w[8])
    return _conv(x, w[9], w[10]), jax.nn.softmax(_conv(x, w[11], w[12]), -1)[..., 1]


def rnet(w: Sequence[jax.Array], x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[N,24,24,3] -> box regression [N,4] and face probability [N]."""
    x = _maxpool(_prelu(_conv(x, w[0], w[1]), w[2]), 3, 2, True)
    x = _maxpool(_prelu(_conv(x, w[3], w[4]), w[5]), 3, 2, False)
    x = _prelu(_conv(x, w[6], w[7]), w[8])
    x = _prelu(_flatten_keras(x) @ w[9] + w[10], w[11])
    return x @ w[12] + w[13], jax.nn.softmax(x @ w[14] + w[15], -1)[:, 1]


def onet(w: Sequence[jax.Array], x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """[N,48,48,3] -> box regression [N,4], landmarks [N,10] (x1..x5, y1..y5 in 0..1), probability [N]."""
    x = _maxpool(_prelu(_conv(x, w[0], w[1]), w[2]), 3, 2, True)
    x = _maxpool(_prelu(_conv(x, w[3], w[4]), w[5]), 3, 2, False)
    x = _maxpool(_prelu(_conv(x, w[6], w[7]), w[8]), 2, 2, True)
    x = _prelu(_conv(x, w[9], w[10]), w[11])
    x = _prelu(_flatten_keras(x) @ w[12] + w[13], w[14])
    return x @ w[15] + w[16], x @ w[17] + w[18], jax.nn.softmax(x @ w[19] + w[20], -1)[:, 1]


def crop_and_resize(image: jax.Array, boxes: jax.Array, size: int) -> jax.Array:
    """TF `crop_and_resize` of [H,W,C] at pixel boxes [K,4] (x1,y1,x2,y2 normalised by H and W
    as mtcnn does): bilinear, samples outside the image are 0. -> [K,size,size,C]."""
    h, w = image.shape[:2]
    t = jnp.arange(size, dtype=jnp.float32) / (size - 1)

    def axis(a1, a2, n):  # sample coordinates along one axis, [K,size]
        return (a1[:, None] + t[None, :] * (a2 - a1)[:, None]) / n * (n - 1)

    ys, xs = axis(boxes[:, 1], boxes[:, 3], h), axis(boxes[:, 0], boxes[:, 2], w)
    y0, x0 = jnp.floor(ys), jnp.floor(xs)
    wy, wx = (ys - y0)[:, :, None, None], (xs - x0)[:, None, :, None]
    y0i, y1i = jnp.clip(y0, 0, h - 1).astype(jnp.int32), jnp.clip(jnp.ceil(ys), 0, h - 1).astype(jnp.int32)
    x0i, x1i = jnp.clip(x0, 0, w - 1).astype(jnp.int32), jnp.clip(jnp.ceil(xs), 0, w - 1).astype(jnp.int32)
    g = lambda yi, xi: image[yi[:, :, None], xi[:, None, :]]
    top = g(y0i, x0i) + (g(y0i, x1i) - g(y0i, x0i)) * wx
    bot = g(y1i, x0i) + (g(y1i, x1i) - g(y1i, x0i)) * wx
    out = top + (bot - top) * wy
    inside = (((ys >= 0) & (ys <= h - 1))[:, :, None] & ((xs >= 0) & (xs <= w - 1))[:, None, :])
    return jnp.where(inside[..., None], out, 0.0)


@jax.jit
def _pnet_pyramid(w, levels):
    return [tuple(o[0] for o in pnet(w, lv[None])) for lv in levels]


@jax.jit
def _rnet_on_boxes(w, image, boxes):
    return rnet(w, crop_and_resize(image, boxes, 24))


@jax.jit
def _onet_on_boxes(w, image, boxes):
    return onet(w, crop_and_resize(image, boxes, 48))


# ------------------------------------------------------------------- numpy post-processing
def scale_pyramid(width: int, height: int, min_face_size: int = 20, scale_factor: float = 0.709,
                  min_size: int = 12) -> np.ndarray:
    """Pyramid scales, as mtcnn==1.0.0 computes them."""
    count = round(-((np.log(min(width, height) / min_size) / np.log(scale_factor)) + 1))
    return (min_size / min_face_size) * scale_factor ** np.arange(max(count, 0))


def _sort_desc(b: np.ndarray, col: int = 5) -> np.ndarray:
    return b[np.argsort(b[:, col])[::-1]]


def nms(boxes: np.ndarray, threshold: float, method: str = "union") -> np.ndarray:
    """mtcnn==1.0.0's NMS on score-sorted rows (x1,y1,x2,y2 at columns 1:5): drops a box when
    any earlier box overlaps it by more than `threshold` (earlier boxes need not survive)."""
    n = len(boxes)
    if n == 0:
        return boxes
    b = boxes[:, 1:5]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    keep = np.ones(n, bool)
    for s in range(0, n, 1024):  # column blocks bound memory for many candidates
        c = b[s:s + 1024]
        iw = np.maximum(0, np.minimum(b[:, None, 2], c[None, :, 2]) - np.maximum(b[:, None, 0], c[None, :, 0]))
        ih = np.maximum(0, np.minimum(b[:, None, 3], c[None, :, 3]) - np.maximum(b[:, None, 1], c[None, :, 1]))
        inter = iw * ih
        ca = area[s:s + 1024]
        denom = (area[:, None] + ca[None, :] - inter) if method == "union" else np.minimum(area[:, None], ca[None, :])
        with np.errstate(divide="ignore", invalid="ignore"):
            over = inter / denom > threshold
        earlier = np.arange(n)[:, None] < np.arange(s, s + len(c))[None, :]
        keep[s:s + len(c)] = ~(over & earlier).any(axis=0)
    return boxes[keep]


def _square(b: np.ndarray) -> np.ndarray:
    b = b.copy()
    h, w = b[:, 4] - b[:, 2], b[:, 3] - b[:, 1]
    side = np.maximum(w, h)
    b[:, 1] += w * 0.5 - side * 0.5
    b[:, 2] += h * 0.5 - side * 0.5
    b[:, 3] = b[:, 1] + side
    b[:, 4] = b[:, 2] + side
    return b


def _calibrate(b: np.ndarray, reg: np.ndarray) -> np.ndarray:
    b = b.copy()
    w, h = b[:, 3] - b[:, 1] + 1, b[:, 4] - b[:, 2] + 1
    b[:, 1:5] += reg * np.stack([w, h, w, h], -1)
    return b


def _bucket(n: int, buckets: Sequence[int]) -> int:
    return next((b for b in buckets if b >= n), buckets[-1])


# Image sides that photos are padded up to (at most ~25% more per side), so that a folder of
# mixed sizes compiles P-Net/R-Net/O-Net once per bucket instead of once per size.
SIDE_BUCKETS = (96, 128, 160, 192, 240, 320, 400, 480, 640, 800, 960, 1280, 1600, 1920, 2560, 3200, 3840)


def padded_side(n: int, buckets: Sequence[int]) -> int:
    """The bucket side `n` is padded to (beyond the largest bucket: the next multiple of it / 4)."""
    if n <= buckets[-1]:
        return _bucket(n, buckets)
    step = buckets[-1] // 4
    return -(-n // step) * step


# ------------------------------------------------------------------------------- detector
class MTCNN:
    """Three-stage MTCNN on an RGB or BGR uint8 image; returns rows like mtcnn==1.0.0:
    [0, x1, y1, x2, y2, score, lx1..lx5, ly1..ly5] (float64), clipped to the image."""

    def __init__(self, weights: dict[str, list[np.ndarray]] | None = None, *,
                 weights_dir: str | os.PathLike | None = None, models_dir: str | os.PathLike | None = None,
                 min_face_size: int = 20, scale_factor: float = 0.709,
                 thresholds: Sequence[float] = (0.6, 0.7, 0.8), buckets: Sequence[int] = (4, 16, 64, 256),
                 size_buckets: Sequence[int] | None = None):
        """`size_buckets`: pad each image side up to one of these (zeros after normalisation)
        and compile every stage for a padded size the first time it is seen; None: exact sizes."""
        weights = weights or mtcnn_weights.load_all(weights_dir, models_dir)
        self.w = {k: [jnp.asarray(a) for a in v] for k, v in weights.items()}
        self.min_face_size, self.scale_factor = min_face_size, scale_factor
        self.thresholds = tuple(thresholds)
        self.buckets = tuple(buckets)
        self.size_buckets = tuple(sorted(size_buckets)) if size_buckets else None
        self._warm: set[tuple[int, int]] = set()

    def warmup(self, height: int, width: int) -> None:
        """Compiles P-Net for this image size and R-/O-Net for every batch bucket."""
        scales = scale_pyramid(width, height, self.min_face_size, self.scale_factor)
        levels = [np.zeros((int(height * s), int(width * s), 3), np.float32)
                  for s in scales if int(width * s) >= 12 and int(height * s) >= 12]
        if levels:
            jax.block_until_ready(_pnet_pyramid(self.w["pnet"], levels))
        image = jnp.zeros((height, width, 3), jnp.float32)
        for b in self.buckets:
            boxes = np.tile(np.array([[0, 0, 11, 11]], np.float32), (b, 1))
            jax.block_until_ready(_rnet_on_boxes(self.w["rnet"], image, boxes))
            jax.block_until_ready(_onet_on_boxes(self.w["onet"], image, boxes))

    def _stage(self, fn, image: jax.Array, boxes: np.ndarray, net: str) -> list[np.ndarray]:
        """Runs R-Net or O-Net on `boxes` in bucket-sized chunks; returns numpy outputs."""
        outs = []
        big = self.buckets[-1]
        for s in range(0, len(boxes), big):
            chunk = boxes[s:s + big, 1:5].astype(np.float32)
            padded = np.zeros((_bucket(len(chunk), self.buckets), 4), np.float32)
            padded[:len(chunk)] = chunk
            res = jax.device_get(fn(self.w[net], image, padded))
            outs.append([r[:len(chunk)].astype(np.float64) for r in res])
        return [np.concatenate(parts) for parts in zip(*outs)]

    def detect_rows(self, rgb: np.ndarray) -> np.ndarray:
        """All three stages on an RGB image (the colour order mtcnn's weights expect)."""
        h0, w0 = rgb.shape[:2]
        norm = (rgb.astype(np.float32) - 127.5) / 128.0
        if self.size_buckets:
            h, w = padded_side(h0, self.size_buckets), padded_side(w0, self.size_buckets)
            if (h, w) != (h0, w0):
                norm = np.pad(norm, ((0, h - h0), (0, w - w0), (0, 0)))
            if (h, w) not in self._warm:
                self.warmup(h, w)
                self._warm.add((h, w))
        rows = self._detect_normalised(norm)
        rows[:, [1, 3]] = np.clip(rows[:, [1, 3]], 0, w0 - 1)
        rows[:, [2, 4]] = np.clip(rows[:, [2, 4]], 0, h0 - 1)
        return rows

    def _detect_normalised(self, norm: np.ndarray) -> np.ndarray:
        h, w = norm.shape[:2]
        scales = scale_pyramid(w, h, self.min_face_size, self.scale_factor)
        levels = [cv2.resize(norm, (int(w * s), int(h * s)), interpolation=cv2.INTER_AREA)
                  for s in scales if int(w * s) >= 12 and int(h * s) >= 12]
        if not levels:
            return np.zeros((0, 16))
        t1, t2, t3 = self.thresholds
        per_scale = []
        for s, (reg, prob) in zip(scales, jax.device_get(_pnet_pyramid(self.w["pnet"], levels))):
            reg, prob = reg.astype(np.float64), prob.astype(np.float64)
            ys, xs = np.where(prob > t1)
            if len(ys) == 0:
                continue
            r = reg[ys, xs]
            rows = np.stack([np.zeros(len(ys)), xs * 2 + 1 + r[:, 0] * 11, ys * 2 + 1 + r[:, 1] * 11,
                             xs * 2 + 12 + r[:, 2] * 11, ys * 2 + 12 + r[:, 3] * 11, prob[ys, xs]], -1)
            rows = _sort_desc(rows)
            rows[:, 1:5] /= s
            per_scale.append(nms(rows, 0.5))
        if not per_scale:
            return np.zeros((0, 16))
        boxes = _square(nms(_sort_desc(np.concatenate(per_scale)), 0.7))

        image = jnp.asarray(norm)
        reg, prob = self._stage(_rnet_on_boxes, image, boxes, "rnet")
        boxes[:, 5] = prob
        boxes = _calibrate(boxes, reg)
        boxes = boxes[boxes[:, 5] > t2]
        if len(boxes) == 0:
            return np.zeros((0, 16))
        boxes = _square(nms(_sort_desc(boxes), 0.7))

        reg, lms, prob = self._stage(_onet_on_boxes, image, boxes, "onet")
        bw, bh = boxes[:, 3:4] - boxes[:, 1:2] + 1, boxes[:, 4:5] - boxes[:, 2:3] + 1
        lms = np.concatenate([bw * lms[:, :5] + boxes[:, 1:2] - 1, bh * lms[:, 5:] + boxes[:, 2:3] - 1], -1)
        boxes[:, 5] = prob
        boxes = np.concatenate([_calibrate(boxes, reg), lms], -1)
        boxes = boxes[boxes[:, 5] > t3]
        return nms(_sort_desc(boxes), 0.7, "min")


class MTCNNDetector(ResizingDetector):
    """MTCNN in JAX (weights of PyPI mtcnn==1.0.0) on downscaled BGR frames, with 5 landmarks.

    Image sides are padded up to `SIDE_BUCKETS` (`size_buckets=None` keeps exact sizes), so
    photos of mixed sizes reuse a few compiled shapes.
    """

    name = "mtcnn"
    config_args = {"weights_dir": "mtcnn_weights_dir"}  # builder fills weights_dir from this config key

    def __init__(self, detect_width: int | str | None = AUTO, threshold: float = 0.9,
                 weights_dir: str | os.PathLike | None = None, models_dir: str | os.PathLike | None = None,
                 size_buckets: Sequence[int] | None = SIDE_BUCKETS, **kwargs):
        super().__init__(detect_width)
        self.net = MTCNN(weights_dir=weights_dir, models_dir=models_dir, size_buckets=size_buckets, **kwargs)
        self.threshold = threshold
        self.backend = f"jax-{jax.default_backend()}"

    @property
    def reliable_face(self) -> float:
        """`min_face_size`: tools/measure_face_sizes.py (real frames scaled down; threshold 0.9,
        min_face_size 20) finds 83% of faces of 12 px, 90-91% at 14-16 px, 92-100% from 18 px."""
        return float(self.net.min_face_size)

    def warmup(self, frame: np.ndarray) -> None:
        """Compiles every stage for this frame's (padded) size."""
        if not self.net.size_buckets:  # with buckets, the first frame of a size warms up itself
            self.net.warmup(*self.resized(frame)[0].shape[:2])
        self(frame)

    def detect_small(self, frame: np.ndarray) -> list[Detection]:
        rows = self.net.detect_rows(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        return [Detection(tuple(r[1:5]), float(r[5]), np.stack([r[6:11], r[11:16]], -1))
                for r in rows if r[5] >= self.threshold]
