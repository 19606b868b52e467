"""Knowledge distillation targets: an ensemble of pretrained classifiers' class probabilities on
the Training images, computed once before training (offline distillation) and cached in the run's
folder so that a resumed run does not recompute them. The cache is keyed by each teacher's weights
(sha256), not only its name: retrained or replaced weights under the same name recompute."""
from __future__ import annotations

import json
from pathlib import Path

import jax
import ml_collections
import numpy as np

from ferjax import pretrained
from ferjax.atomic import save_npz
from ferjax.data.derived import fingerprint
from ferjax.eval.predict import TTA_MODES, predict_logits, softmax
from ferjax.train import sharding

CACHE_NAME = "teacher_probs.npz"


def teacher_names(cfg: ml_collections.ConfigDict) -> list[str]:
    """The comma-separated `distill.teachers` as a list ([] = no distillation)."""
    return [name.strip() for name in cfg.teachers.split(",") if name.strip()]


def ensemble_weights(cfg: ml_collections.ConfigDict) -> np.ndarray:
    """Normalised teacher weights (`distill.teacher_weights`, comma-separated; "" = equal)."""
    names = teacher_names(cfg)
    raw = [float(w) for w in cfg.teacher_weights.split(",") if w.strip()] or [1.0] * len(names)
    if len(raw) != len(names) or min(raw) < 0 or sum(raw) <= 0:
        raise ValueError(f"distill.teacher_weights={cfg.teacher_weights!r}: expected {len(names)} "
                         f"non-negative weights (one per teacher in {names}), not all zero")
    return np.asarray(raw, np.float64) / sum(raw)


def teacher_probabilities(cfg: ml_collections.ConfigDict, images: np.ndarray, batch_size: int,
                          mesh, workdir: str | Path | None = None) -> np.ndarray:
    """[N, 7] float32: the weighted mean of each teacher's softmax(logits / temperature), with the
    teacher's test-time augmentation `distill.tta`. Cached in `workdir` under a key of the
    settings, every teacher's weights sha256 and the images' fingerprint."""
    names, weights = teacher_names(cfg), ensemble_weights(cfg)
    if cfg.temperature <= 0:
        raise ValueError(f"distill.temperature={cfg.temperature}: expected > 0")
    if cfg.tta not in TTA_MODES:
        raise ValueError(f"distill.tta={cfg.tta!r}: expected one of {sorted(TTA_MODES)}")
    key = json.dumps({"teachers": [[name, pretrained.weights_sha256(name)] for name in names],
                      "weights": weights.round(6).tolist(),
                      "temperature": cfg.temperature, "tta": cfg.tta,
                      "images": fingerprint({"image": images})})
    cache = Path(workdir) / CACHE_NAME if workdir else None
    if cache is not None and cache.is_file():
        with np.load(cache) as saved:
            if str(saved["key"]) == key:
                return saved["probs"]
    probs = 0.0
    for name, weight in zip(names, weights):
        model, variables, _ = pretrained.load(name)
        variables = jax.device_put(variables, sharding.replicated(mesh))
        apply = jax.jit(TTA_MODES[cfg.tta](lambda v, x, m=model: m.apply(v, x, train=False)))
        logits = predict_logits(
            lambda b: sharding.fetch(apply(variables, sharding.put_batch(
                {"image": b["image"].astype(np.float32)}, mesh)["image"])), images, batch_size)
        probs = probs + weight * softmax(logits, cfg.temperature)
    probs = np.asarray(probs, np.float32)
    save_npz(cache, probs=probs, key=np.asarray(key))
    return probs
