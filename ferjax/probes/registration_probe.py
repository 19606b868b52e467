"""Does a self-supervised "registered FER2013 crop" score find the FER+ not-a-face images the
non-face curation signals miss? (An analysis for the curation issue; not a registered signal.)

    python -m ferjax.probes.registration_probe --fer2013=../shared/data/fer2013 --cache=runs/curate_signals/cache

A small CNN learns, from Training images alone, to tell a lightly jittered image (rotation within
6 degrees, scale within 6%, shift within 2 px) from the same image mis-registered (turned 30-90
degrees, zoomed in 1.6-2.3x off centre, or shifted 10-16 px); both kinds pass through the same
warp, interpolation and border rule, so neither is told apart by resampling alone. Two folds by
CSV-row parity: a model trained on the even rows scores the odd rows, and the other way round.
The score (probability of "mis-registered") is then compared with the FER+ NF-majority Training
images (read for scoring only), alone and added to the flags of the non-face signals (group
`non_face`) as `curate_fer2013` configures them, per parity half. Prints one line per figure and a JSON summary last.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

def warp(img: np.ndarray, angle: float, scale: float, dx: float, dy: float) -> np.ndarray:
    """The 48x48 image rotated `angle` degrees and scaled about its centre, then shifted."""
    m = cv2.getRotationMatrix2D((23.5, 23.5), angle, scale)
    m[:, 2] += (dx, dy)
    return cv2.warpAffine(img, m, (48, 48), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def training_pair(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """(a jittered copy, 0) or (a mis-registered copy, 1), each half of the time."""
    small = rng.uniform(-6, 6)
    if rng.random() < 0.5:
        return warp(img, small, rng.uniform(0.94, 1.06), rng.uniform(-2, 2), rng.uniform(-2, 2)), 0
    kind = rng.integers(3)
    if kind == 0:
        return warp(img, rng.choice([-1, 1]) * rng.uniform(30, 90), rng.uniform(1.0, 1.3), 0, 0), 1
    if kind == 1:
        s = rng.uniform(1.6, 2.3)
        return warp(img, small, s, rng.uniform(-14, 14) * s, rng.uniform(-14, 14) * s), 1
    angle = rng.uniform(0, 2 * np.pi)
    dist = rng.uniform(10, 16)
    return warp(img, small, 1.0, dist * np.cos(angle), dist * np.sin(angle)), 1


class RegistrationNet(nn.Module):
    """Three double-conv blocks (32, 64, 128), global average pool, one logit."""

    @nn.compact
    def __call__(self, x, train: bool):
        for features in (32, 64, 128):
            for _ in range(2):
                x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(features, (3, 3))(x)))
            x = nn.max_pool(x, (2, 2), (2, 2))
        return nn.Dense(1)(nn.Dropout(0.3, deterministic=not train)(x.mean((1, 2))))[:, 0]


def _inputs(batch: np.ndarray) -> jax.Array:
    return (jnp.asarray(batch, jnp.float32)[..., None] / 255.0 - 0.5) / 0.25


def fit_and_score(images: np.ndarray, train_idx: np.ndarray, test_idx: np.ndarray, epochs: int,
                  batch: int = 128, seed: int = 0) -> np.ndarray:
    """Train on `images[train_idx]` (fresh pairs every epoch); P(mis-registered) of `images[test_idx]`."""
    net = RegistrationNet()
    key = jax.random.PRNGKey(seed)
    variables = net.init({"params": key}, jnp.zeros((1, 48, 48, 1)), False)
    params, stats = variables["params"], variables["batch_stats"]
    tx = optax.adamw(optax.cosine_onecycle_schedule(epochs * (len(train_idx) // batch), 2e-3), weight_decay=1e-4)
    opt = tx.init(params)

    @jax.jit
    def step(params, stats, opt, x, y, k):
        def loss(p):
            logits, new = net.apply({"params": p, "batch_stats": stats}, x, True, rngs={"dropout": k},
                                    mutable=["batch_stats"])
            return optax.sigmoid_binary_cross_entropy(logits, y).mean(), new["batch_stats"]
        (value, stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), stats, opt, value

    @jax.jit
    def predict(params, stats, x):
        return jax.nn.sigmoid(net.apply({"params": params, "batch_stats": stats}, x, False))

    rng, start = np.random.default_rng(seed + 1), time.time()
    for epoch in range(epochs):
        order, losses = rng.permutation(train_idx), []
        for i in range(0, len(order) - batch + 1, batch):
            x, y = zip(*(training_pair(images[j], rng) for j in order[i:i + batch]))
            key, k = jax.random.split(key)
            params, stats, opt, value = step(params, stats, opt, _inputs(np.stack(x)), jnp.asarray(y, jnp.float32), k)
            losses.append(float(value))
        print(f"  epoch {epoch + 1}/{epochs}: loss {np.mean(losses):.4f} ({time.time() - start:.0f} s)", flush=True)
    return np.concatenate([np.asarray(predict(params, stats, _inputs(images[test_idx[i:i + 512]])))
                           for i in range(0, len(test_idx), 512)])


def auc(score: np.ndarray, truth: np.ndarray) -> float:
    """Area under the ROC curve (ties counted half)."""
    pos, neg = score[truth], score[~truth]
    return float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg)))


def main() -> None:
    from ferjax.config import load_experiment  # noqa: PLC0415
    from ferjax.curation.scoring import not_a_face, precision_recall  # noqa: PLC0415
    from ferjax.curation.signals import curation_view  # noqa: PLC0415
    from ferjax.tasks.curate import run_signals  # noqa: PLC0415
    from ferjax.data.loading import load_splits  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fer2013", required=True, help="folder with fer2013.csv(.gz) and fer2013new.csv")
    parser.add_argument("--cache", default="", help="a curation workdir's cache/ (reuses its detector pass)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--thresholds", default="0.5,0.8,0.9,0.95,0.98")
    args = parser.parse_args()

    splits = load_splits(args.fer2013, None, False)
    train = splits["train"]
    images = np.asarray(train["image"])[..., 0]
    truth = not_a_face(train["ferplus_votes"])
    if not truth.any():
        raise SystemExit(f"{args.fer2013}: no FER+ votes (fer2013new.csv) to score against")
    rows = np.asarray(train["row"])
    halves = {"even": rows % 2 == 0, "odd": rows % 2 == 1, "all": np.ones(len(rows), bool)}

    signals = run_signals(load_experiment("curate_fer2013"), curation_view(splits),
                          Path(args.cache) if args.cache else None)
    flagged = np.any([r.flagged for r in signals.values() if r.group == "non_face"], axis=0)

    score = np.zeros(len(images))
    for train_half, test_half in (("even", "odd"), ("odd", "even")):
        print(f"fold: train on the {train_half} rows, score the {test_half} rows", flush=True)
        test = np.flatnonzero(halves[test_half])
        score[test] = fit_and_score(images, np.flatnonzero(halves[train_half]), test, args.epochs)

    summary = {"epochs": args.epochs, "ferplus_not_a_face": int(truth.sum()), "halves": {}}
    for name, sel in halves.items():
        t, s, f = truth[sel], score[sel], flagged[sel]
        top = np.argsort(-s)[:int(t.sum())]
        half = {"auc": round(auc(s, t), 3), "nf_in_top_n": int(t[top].sum()), "n": int(t.sum()),
                "signals": {"flagged": int(f.sum()), "nf": int((f & t).sum())}, "added": {}}
        print(f"{name} rows: {int(t.sum())} FER+ NF; score AUC {half['auc']}; {half['nf_in_top_n']} NF among "
              f"the {int(t.sum())} top-scoring; the non-face signals flag {int(f.sum())} ({int((f & t).sum())} NF)")
        for threshold in map(float, args.thresholds.split(",")):
            added = (s >= threshold) & ~f
            union = precision_recall(f | added, t)
            half["added"][threshold] = {"added": int(added.sum()), "added_nf": int((added & t).sum()),
                                        "precision": round(union["precision"], 3), "recall": round(union["recall"], 3)}
            print(f"  + score >= {threshold}: {int(added.sum())} more flagged ({int((added & t).sum())} NF): "
                  f"precision {union['precision']:.1%}, recall {union['recall']:.1%}")
        summary["halves"][name] = half
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
