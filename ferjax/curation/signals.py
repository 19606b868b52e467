"""Removal signals over a dataset's Training split (the `curation signal` registry kind).

A signal is a callable `signal(splits, cache_dir) -> SignalResult`. `splits` is the curation view
of a dataset (`curation_view`: images, labels and rows only; FER+ votes are stripped before any
signal sees the data); `cache_dir` (or None) holds expensive intermediate results such as a
detector pass, keyed by the data's fingerprint and the settings that produced them. A signal
flags Training examples only; other splits are read (duplicates across splits) but never flagged.

Every result carries a per-example score (its meaning is the signal's docstring), a flag, a
reason for each flagged example, and the `group` it counts in when scored against FER+:
`non_face` (blank, text/graphics, no face found: scored against FER+ not-a-face votes),
`non_frontal` and `duplicate` (reported as counts with example grids).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np

from ferjax.atomic import save_npz
from ferjax.data.derived import fingerprint

GROUPS = ("non_face", "non_frontal", "duplicate")
VIEW_FIELDS = ("image", "label", "row")  # all a curation step may read: no FER+ votes


@dataclasses.dataclass
class SignalResult:
    """Per-Training-example output of one signal (arrays of the Training split's length)."""

    name: str
    group: str
    score: np.ndarray  # float64 [N]; NaN where the signal has no score for an example
    flagged: np.ndarray  # bool [N]
    reason: list[str]  # '' where not flagged
    info: dict = dataclasses.field(default_factory=dict)

    @property
    def count(self) -> int:
        return int(self.flagged.sum())


def curation_view(splits: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    """The splits with only `VIEW_FIELDS`: what curation decisions may read (FER+ is for scoring)."""
    return {name: {k: np.asarray(v) for k, v in arr.items() if k in VIEW_FIELDS}
            for name, arr in splits.items()}


def _grey(images: np.ndarray) -> np.ndarray:
    """[N, H, W] uint8 grey images from [N, H, W, C] uint8."""
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"curation signals take uint8 [N, H, W, C] images, got {images.dtype} "
                         f"{list(images.shape)}")
    if images.shape[-1] == 1:
        return images[..., 0]
    return np.stack([cv2.cvtColor(im, cv2.COLOR_RGB2GRAY) for im in images])


def _result(name: str, group: str, score: np.ndarray, flagged: np.ndarray, why: str,
            info: dict | None = None) -> SignalResult:
    reason = [why.format(score=s) if f else "" for s, f in zip(score, flagged)]
    return SignalResult(name, group, np.asarray(score, np.float64), np.asarray(flagged, bool), reason,
                        dict(info or {}))


# ------------------------------------------------------------------------------ image statistics
def mode_fraction(grey: np.ndarray) -> np.ndarray:
    """Share of each image's pixels holding its most frequent grey level."""
    flat = grey.reshape(len(grey), -1)
    return np.asarray([np.bincount(f, minlength=256).max() for f in flat], np.float64) / flat.shape[1]


def saturated_fraction(grey: np.ndarray, margin: int = 5) -> np.ndarray:
    """Share of each image's pixels within `margin` of black or white."""
    return ((grey <= margin) | (grey >= 255 - margin)).mean((1, 2))


class BlankSignal:
    """Blank or near-constant images. Score: the pixel standard deviation (grey levels); flagged
    when at most `max_std`."""

    group = "non_face"

    def __init__(self, max_std: float = 2.0):
        self.max_std = float(max_std)

    def __call__(self, splits: Mapping, cache_dir: Path | None = None) -> SignalResult:
        std = _grey(splits["train"]["image"]).astype(np.float64).std((1, 2))
        return _result("blank", self.group, std, std <= self.max_std,
                       "near-constant image (pixel std {score:.2f})", {"max_std": self.max_std})


class TextGraphicsSignal:
    """Text and graphics (icons, placeholders, captions on flat backgrounds). Score: the larger of
    the most frequent grey level's share and the near-black/near-white share, each divided by its
    threshold (flagged at >= 1)."""

    group = "non_face"

    def __init__(self, min_mode_fraction: float = 0.5, min_saturated_fraction: float = 0.75,
                 saturation_margin: int = 5):
        self.min_mode, self.min_sat, self.margin = float(min_mode_fraction), float(min_saturated_fraction), \
            int(saturation_margin)

    def __call__(self, splits: Mapping, cache_dir: Path | None = None) -> SignalResult:
        grey = _grey(splits["train"]["image"])
        mode, sat = mode_fraction(grey), saturated_fraction(grey, self.margin)
        score = np.maximum(mode / self.min_mode, sat / self.min_sat)
        why = "text or graphics (flat or saturated: score {score:.2f} of its thresholds)"
        return _result("text_graphics", self.group, score, score >= 1.0, why,
                       {"min_mode_fraction": self.min_mode, "min_saturated_fraction": self.min_sat})


# ------------------------------------------------------------------------------ detector pass
def _cache_path(cache_dir: Path | None, what: str, key: Mapping[str, Any]) -> Path | None:
    if cache_dir is None:
        return None
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{what}_{digest}.npz"


ROTATIONS = {0: None, 90: cv2.ROTATE_90_CLOCKWISE, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}


def detector_pass(images: np.ndarray, detector: str, size: int, pad: float, detector_kwargs: Mapping,
                  models_dir: str = "", cache_dir: Path | None = None, rotate: int = 0) -> dict[str, np.ndarray]:
    """The best detection of each image padded by `pad` of its side (edge pixels replicated),
    upscaled to `size` pixels and turned `rotate` degrees clockwise (0, 90, 270): {score [N]
    (0: none), box [N,4], landmarks [N,5,2] (NaN: none)} in those pixels. Cached per data
    fingerprint and settings."""
    from ferjax.registry import DETECTORS  # noqa: PLC0415

    if rotate not in ROTATIONS:
        raise ValueError(f"rotate={rotate}; expected one of {sorted(ROTATIONS)}")
    key = {"data": fingerprint({"image": images}), "detector": detector, "size": size, "pad": pad,
           "kwargs": dict(detector_kwargs), "rotate": rotate, "models_dir": models_dir}
    path = _cache_path(cache_dir, f"detect_{detector}", key)
    if path is not None and path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in ("score", "box", "landmarks")}
    det = DETECTORS.create_accepting(detector, {"models_dir": models_dir or None, "use_cuda": False,
                                                "detect_width": None, **dict(detector_kwargs)})
    grey = _grey(images)
    n = len(grey)
    score, box, lms = np.zeros(n), np.full((n, 4), np.nan), np.full((n, 5, 2), np.nan)
    border = int(round(pad * grey.shape[1]))
    for i, g in enumerate(grey):
        padded = cv2.copyMakeBorder(g, border, border, border, border, cv2.BORDER_REPLICATE) if border else g
        big = cv2.resize(padded, (size, size), interpolation=cv2.INTER_CUBIC)
        if ROTATIONS[rotate] is not None:
            big = cv2.rotate(big, ROTATIONS[rotate])
        found = det(cv2.cvtColor(big, cv2.COLOR_GRAY2BGR))
        if found:
            best = max(found, key=lambda d: d.score * d.width * d.height)
            score[i], box[i] = best.score, best.box
            if best.landmarks is not None:
                lms[i] = best.landmarks
    out = {"score": score, "box": box, "landmarks": lms}
    save_npz(path, **out)
    return out


class _DetectorSettings:
    """Shared settings of the detector-based signals (equal settings share one cached pass)."""

    def __init__(self, detector: str, size: int, pad: float, detector_kwargs: Mapping | None, models_dir: str):
        self.detector, self.size, self.pad = detector, int(size), float(pad)
        self.detector_kwargs = dict(detector_kwargs or {"threshold": 0.05})
        self.models_dir = models_dir

    def _pass(self, images: np.ndarray, cache_dir: Path | None, rotate: int = 0) -> dict[str, np.ndarray]:
        return detector_pass(images, self.detector, self.size, self.pad, self.detector_kwargs,
                             self.models_dir, cache_dir, rotate)


class NoFaceSignal(_DetectorSettings):
    """No upright face: a registered detector on the image upscaled to `size` pixels (after `pad`
    of replicated border) finds none scoring `min_score` or more; or (`sideways_margin` > 0) its
    upright score stays below `sideways_max_score` while a copy turned 90 degrees either way scores
    `sideways_margin` more (a face lying on its side); or (`min_face_area` > 0) the face it finds
    covers less than that share of the image (a scene, not a face crop). Score: the upright
    detection score (0: none)."""

    group = "non_face"

    def __init__(self, detector: str = "yunet", size: int = 160, pad: float = 0.0, min_score: float = 0.1,
                 sideways_margin: float = 0.3, sideways_max_score: float = 0.3, min_face_area: float = 0.12,
                 detector_kwargs: Mapping | None = None, models_dir: str = ""):
        super().__init__(detector, size, pad, detector_kwargs, models_dir)
        self.min_score, self.sideways_margin = float(min_score), float(sideways_margin)
        self.sideways_max_score, self.min_face_area = float(sideways_max_score), float(min_face_area)

    def __call__(self, splits: Mapping, cache_dir: Path | None = None) -> SignalResult:
        images = splits["train"]["image"]
        found = self._pass(images, cache_dir)
        upright = found["score"]
        none = upright < self.min_score
        box = found["box"]
        area = np.nan_to_num((box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1]) / self.size ** 2, nan=1.0)
        small = ~none & (area < self.min_face_area)
        sideways = np.zeros(len(upright), bool)
        turned = np.zeros(len(upright))
        if self.sideways_margin > 0:
            candidates = (upright < self.sideways_max_score) & ~none
            turned = np.maximum(self._pass(images, cache_dir, 90)["score"],
                                self._pass(images, cache_dir, 270)["score"])
            sideways = candidates & (turned >= upright + self.sideways_margin)
        reason = [f"no face found by {self.detector} at {self.size}px (best score {u:.2f})" if n else
                  f"face on its side: {self.detector} scores {t:.2f} turned 90 degrees, {u:.2f} upright"
                  if sw else f"the face covers {100 * a:.0f}% of the image (a scene, not a face crop)"
                  if sm else "" for u, t, a, n, sw, sm in zip(upright, turned, area, none, sideways, small)]
        return SignalResult("no_face", self.group, upright, none | sideways | small, reason,
                            {"detector": self.detector, "size": self.size, "min_score": self.min_score,
                             "no_face": int(none.sum()), "sideways": int((sideways & ~none).sum()),
                             "small_face": int((small & ~sideways).sum())})


def yaw_ratio(landmarks: np.ndarray) -> np.ndarray:
    """|nose x - eye midpoint x| / inter-eye distance from [N,5,2] landmarks (YuNet order): ~0 for
    a frontal face, growing as the head turns; NaN without landmarks."""
    eyes_mid = (landmarks[:, 0, 0] + landmarks[:, 1, 0]) / 2
    eye_dist = np.hypot(*(landmarks[:, 1] - landmarks[:, 0]).T)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.abs(landmarks[:, 2, 0] - eyes_mid) / np.maximum(eye_dist, 1e-6)


class NonFrontalSignal(_DetectorSettings):
    """Strongly non-frontal faces, from a landmark detector's 5 points (YuNet, MTCNN) on the upright
    image. Score: `yaw_ratio` (NaN where no face scores `min_score`); flagged above `max_yaw_ratio`."""

    group = "non_frontal"

    def __init__(self, detector: str = "yunet", size: int = 160, pad: float = 0.0,
                 max_yaw_ratio: float = 0.6, min_score: float = 0.5,
                 detector_kwargs: Mapping | None = None, models_dir: str = ""):
        super().__init__(detector, size, pad, detector_kwargs, models_dir)
        self.max_yaw, self.min_score = float(max_yaw_ratio), float(min_score)

    def __call__(self, splits: Mapping, cache_dir: Path | None = None) -> SignalResult:
        found = self._pass(splits["train"]["image"], cache_dir)
        if np.isnan(found["landmarks"]).all() and (found["score"] > 0).any():
            raise ValueError(f"non_frontal needs a detector with landmarks (yunet, mtcnn); "
                             f"{self.detector!r} gives none")
        yaw = np.where(found["score"] >= self.min_score, yaw_ratio(found["landmarks"]), np.nan)
        flagged = np.nan_to_num(yaw, nan=0.0) > self.max_yaw
        return _result("non_frontal", self.group, yaw, flagged, "non-frontal face (yaw ratio {score:.2f})",
                       {"detector": self.detector, "max_yaw_ratio": self.max_yaw})


# ------------------------------------------------------------------------------ duplicates
def perceptual_hash(grey: np.ndarray) -> np.ndarray:
    """64-bit DCT hash per image (uint64): the signs of the 8x8 lowest frequencies of a 32x32
    copy against their median."""
    out = np.empty(len(grey), np.uint64)
    weights = (1 << np.arange(64, dtype=np.uint64))
    for i, g in enumerate(grey):
        small = cv2.resize(g, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
        low = cv2.dct(small)[:8, :8].ravel()
        bits = low > np.median(low[1:])
        out[i] = np.bitwise_or.reduce(weights[bits]) if bits.any() else np.uint64(0)
    return out


def _near_pairs(hashes: np.ndarray, usable: np.ndarray, max_distance: int,
                chunk: int = 1024) -> list[tuple[int, int]]:
    """Index pairs (i < j), both usable, whose hashes differ in at most `max_distance` bits."""
    idx = np.flatnonzero(usable)
    h = hashes[idx]
    pairs = []
    for start in range(0, len(h), chunk):
        block = h[start:start + chunk]
        dist = np.bitwise_count(block[:, None] ^ h[None, :])
        a, b = np.nonzero(dist <= max_distance)
        keep = idx[b] > idx[start + a]
        pairs += zip(idx[start + a[keep]].tolist(), idx[b[keep]].tolist())
    return pairs


def _groups(n: int, pairs: list[tuple[int, int]]) -> np.ndarray:
    """Union-find group id per index (the smallest index of its group)."""
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.asarray([root(i) for i in range(n)])


def _exact_counts(group: np.ndarray, labels: np.ndarray, split_of: np.ndarray) -> dict[str, int]:
    """Identical-image groups over all splits (GUIDE.md section 3 counts these): groups, rows,
    groups spanning two or more splits, groups with conflicting labels."""
    out = {"exact_groups": 0, "exact_rows": 0, "exact_cross_split_groups": 0, "exact_conflicting_groups": 0}
    ids, inverse, sizes = np.unique(group, return_inverse=True, return_counts=True)
    for g in np.flatnonzero(sizes > 1):
        idx = np.flatnonzero(inverse == g)
        out["exact_groups"] += 1
        out["exact_rows"] += len(idx)
        out["exact_cross_split_groups"] += len(np.unique(split_of[idx])) > 1
        out["exact_conflicting_groups"] += len(np.unique(labels[idx])) > 1
    return out


def duplicate_groups(grey: np.ndarray, max_distance: int, min_std: float
                     ) -> tuple[np.ndarray, list[tuple[int, int]], int, np.ndarray]:
    """Groups of identical or near-identical images: (group id per image, the linked index pairs,
    how many of those pairs are exact (they come first), the 64-bit DCT hashes). Near: hashes at
    most `max_distance` bits apart, both images with pixel std above `min_std`."""
    exact_key: dict[bytes, int] = {}
    pairs = []
    for i, g in enumerate(grey):
        k = hashlib.sha1(g.tobytes()).digest()
        if k in exact_key:
            pairs.append((exact_key[k], i))
        else:
            exact_key[k] = i
    n_exact_pairs = len(pairs)
    hashes = perceptual_hash(grey)
    usable = grey.reshape(len(grey), -1).std(1) > min_std
    pairs += _near_pairs(hashes, usable, max_distance)
    return _groups(len(grey), pairs), pairs, n_exact_pairs, hashes


def training_twins(train_images: np.ndarray, images: np.ndarray, max_distance: int = 2,
                   min_std: float = 2.0) -> np.ndarray:
    """bool per row of `images` (uint8 [N, H, W, C], another split): True where the image is an
    exact or near duplicate (the `duplicates` signal's rule) of a Training image, so a model that
    trained on that image has seen the test face."""
    grey = np.concatenate([_grey(train_images), _grey(images)])
    group, _, _, _ = duplicate_groups(grey, max_distance, min_std)
    n_train = len(train_images)
    return np.isin(group[n_train:], group[:n_train])


class DuplicatesSignal:
    """Exact and near duplicates within Training and across splits. A Training image that also
    sits in another split leaks it and is removed; within Training, a group whose labels agree
    keeps its first row, and a group with conflicting labels is removed whole
    (`conflicts='remove'`) or kept for relabeling (`'keep'`). Near: 64-bit DCT hashes at most
    `max_distance` bits apart, images with pixel std above `min_std` only. Score: the smallest
    hash distance to another image of any split (64: none closer)."""

    group = "duplicate"

    def __init__(self, max_distance: int = 2, min_std: float = 2.0, conflicts: str = "remove"):
        if conflicts not in ("remove", "keep"):
            raise ValueError(f"duplicates: conflicts={conflicts!r}; expected 'remove' or 'keep'")
        self.max_distance, self.min_std, self.conflicts = int(max_distance), float(min_std), conflicts

    def __call__(self, splits: Mapping, cache_dir: Path | None = None) -> SignalResult:
        names = ["train"] + [s for s in splits if s != "train"]
        grey = np.concatenate([_grey(splits[s]["image"]) for s in names])
        labels = np.concatenate([np.asarray(splits[s]["label"]) for s in names])
        rows = np.concatenate([np.asarray(splits[s].get("row", np.arange(len(splits[s]["label"]))))
                               for s in names])
        split_of = np.concatenate([[s] * len(splits[s]["label"]) for s in names])
        n_train = len(splits["train"]["label"])
        group, pairs, n_exact_pairs, hashes = duplicate_groups(grey, self.max_distance, self.min_std)
        score = np.full(len(grey), 64.0)
        for a, b in pairs:
            d = float(np.bitwise_count(hashes[a] ^ hashes[b]))
            score[a], score[b] = min(score[a], d), min(score[b], d)
        flagged, reason = np.zeros(n_train, bool), [""] * n_train
        members: dict[int, list[int]] = {}
        for i, g in enumerate(group):
            members.setdefault(int(g), []).append(i)
        counts = {"groups": 0, "rows_in_groups": 0, "cross_split_groups": 0, "conflicting_groups": 0,
                  "leaks": 0, "within_train_repeats": 0, "conflicting_train_rows": 0}
        for g, idx in members.items():
            if len(idx) < 2:
                continue
            counts["groups"] += 1
            counts["rows_in_groups"] += len(idx)
            others = [i for i in idx if i >= n_train]
            train = [i for i in idx if i < n_train]
            conflicting = len(set(labels[idx].tolist())) > 1
            counts["cross_split_groups"] += bool(others) and bool(train)
            counts["conflicting_groups"] += conflicting
            for i in train:
                if others:
                    j = others[0]
                    flagged[i], reason[i] = True, f"leak: same image as {split_of[j]} row {rows[j]}"
                    counts["leaks"] += 1
                elif conflicting and self.conflicts == "remove":
                    flagged[i] = True
                    reason[i] = (f"duplicate group with conflicting labels (rows "
                                 f"{', '.join(str(rows[k]) for k in train[:5])})")
                    counts["conflicting_train_rows"] += 1
                elif i != train[0] and not conflicting:
                    flagged[i], reason[i] = True, f"repeat of Training row {rows[train[0]]}"
                    counts["within_train_repeats"] += 1
        counts.update(_exact_counts(_groups(len(grey), pairs[:n_exact_pairs]), labels, split_of))
        return SignalResult("duplicates", self.group, score[:n_train], flagged, reason,
                            {**counts, "max_distance": self.max_distance})
