"""Does a class guide's gradient change faces the way another classifier reads them?

    FER2013_PATH=data/fer2013 python -m ferjax.probes.guide_transfer \\
        --guides=fer2013_vgg_small,fer2013_robust_small --budgets=1,2,4,8 [--judge=fer_mini_xception] \\
        [--source=neutral --target=disgust --num_images=1000] [--grid=out.png] [--out=out.json]

For each guide and L2 budget (pixels in [0, 1]), `--num_images` seeded source-class Training
faces are moved towards the target class by 20 steps of projected gradient descent on the guide's
cross-entropy (`l2_adversarial`), rounded to uint8 and classified by the guide and by the judge
(a classifier the guide never saw). A guide whose moved faces the judge also calls the target
class gives a generator (`gan.class_guide`) a pull towards the expression, not towards a pattern
only that guide reads. Prints a table and, last, one JSON line; `--grid` draws the first 12 faces
(first row the inputs, then one row per guide and budget).
"""
from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import numpy as np

ATTACK_STEPS = 20


def mover(model, variables, target: int, seed: int = 0, batch: int = 250):
    """A function (images in uint8 range, L2 budget with pixels in [0, 1]) -> the images moved
    within that budget towards class `target` by the classifier's gradient, float32 in [0, 255].
    The budget is a compile-time constant (one compile per budget): traced, it rounds differently
    and 20 normalised steps carry that into other pixels."""
    import jax
    import jax.numpy as jnp
    import optax

    from ferjax.train.classifier_steps import l2_adversarial

    @functools.partial(jax.jit, static_argnums=2)
    def attack(x, key, eps):
        def towards(xi):  # ascending this lowers the cross-entropy of the target class
            logits = model.apply(variables, xi, train=False)
            labels = jnp.full(logits.shape[:1], target)
            return -optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return l2_adversarial(towards, x, key, eps, ATTACK_STEPS)

    def move(images: np.ndarray, budget: float) -> np.ndarray:
        key = jax.random.key(seed)
        return np.concatenate([
            np.asarray(attack(jnp.asarray(images[i:i + batch], jnp.float32), jax.random.fold_in(key, i),
                              budget * 255.0))
            for i in range(0, len(images), batch)])
    return move


def target_rate(predictor, images: np.ndarray, target: int) -> float:
    """Fraction of `images` a `ferjax.inference.Predictor` calls class `target`."""
    return float(np.mean(predictor(images).argmax(1) == target))


def transfer_table(guides: list[str], judge: str, images: np.ndarray, target: int,
                   budgets: list[float]) -> tuple[list[dict], dict]:
    """Rows {guide, budget, guide_rate, judge_rate, seconds} and the moved images per (guide, budget)."""
    from ferjax.inference import load_predictor

    def predictor(name):  # one compiled batch size for every call
        return load_predictor(name, buckets=(256,))
    judge_predict = predictor(judge)
    judge_unmoved = target_rate(judge_predict, images, target)
    rows, moved = [], {}
    for name in guides:
        guide_predict = predictor(name)
        move = mover(guide_predict.model, guide_predict.variables, target)
        rows.append({"guide": name, "budget": 0.0, "guide_rate": target_rate(guide_predict, images, target),
                     "judge_rate": judge_unmoved, "seconds": 0.0})
        for budget in budgets:
            t0 = time.perf_counter()
            x = np.round(move(images, budget)).astype(np.uint8)
            moved[name, budget] = x
            rows.append({"guide": name, "budget": budget, "guide_rate": target_rate(guide_predict, x, target),
                         "judge_rate": target_rate(judge_predict, x, target),
                         "seconds": round(time.perf_counter() - t0, 1)})
    return rows, moved


def main(argv: list[str] | None = None) -> None:
    from ferjax.data.fer2013 import class_index
    from ferjax.data.loading import load_splits
    from ferjax.train.cyclegan_steps import to_unit
    from ferjax.tasks.cyclegan import sample_grid, write_png

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--guides", default="fer2013_vgg_small,fer2013_robust_small")
    p.add_argument("--judge", default="fer_mini_xception")
    p.add_argument("--budgets", default="1,2,4,8")
    p.add_argument("--source", default="neutral")
    p.add_argument("--target", default="disgust")
    p.add_argument("--num_images", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fer2013_path", default=None, help="default: $FER2013_PATH")
    p.add_argument("--grid", default="")
    p.add_argument("--out", default="")
    a = p.parse_args(argv)
    guides = [g for g in a.guides.split(",") if g]
    if a.judge in guides:
        raise SystemExit(f"--judge={a.judge} is also a guide: the judge must be a classifier the guides never saw")
    src, tgt = class_index(a.source), class_index(a.target)
    train = load_splits(a.fer2013_path, splits=("train",))["train"]
    pool = train["image"][train["label"] == src]
    if len(pool) == 0:
        raise SystemExit(f"no {a.source!r} Training images in {a.fer2013_path or '$FER2013_PATH'}")
    images = pool[np.random.default_rng(a.seed).choice(len(pool), min(a.num_images, len(pool)), replace=False)]
    budgets = [float(b) for b in a.budgets.split(",") if b]
    rows, moved = transfer_table(guides, a.judge, images, tgt, budgets)
    print(f"{a.source} -> {a.target}, {len(images)} Training faces, judge {a.judge}")
    print("| guide | L2 budget | guide's target rate | judge's target rate |\n| --- | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['guide']} | {r['budget']:g} | {100 * r['guide_rate']:.1f}% | {100 * r['judge_rate']:.1f}% |")
    if a.grid:
        shown = [images[:12]] + [moved[g, b][:12] for g in guides for b in budgets]
        write_png(Path(a.grid), sample_grid([to_unit(r) for r in shown]))
    summary = {"source": a.source, "target": a.target, "num_images": int(len(images)), "judge": a.judge,
               "attack_steps": ATTACK_STEPS, "rows": rows}
    if a.out:
        Path(a.out).write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
