"""Balance one class of the Training split with images a generator translates from another class.

Writes a derived dataset (ferjax.data.derived): the base plus `target_count - current` generated
examples of the target class, each with `source=generated`, the base row of the image it was
translated from and the generator checkpoint folder. Every input is checked before any image is
translated: class names, the generator folder and its architecture, the counts.
"""
from __future__ import annotations

import time
from pathlib import Path

import cv2
import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from ferjax.atomic import refuse_existing
from ferjax.config import invoked_command
from ferjax.data.derived import DerivedBuilder
from ferjax.data.fer2013 import EMOTIONS, class_index
from ferjax.train.cyclegan_steps import to_unit
from ferjax.train.generator_export import load_generator, read_meta, resolve_generator, to_uint8


def _check_classes(config: ml_collections.ConfigDict, meta: dict) -> tuple[int, int]:
    try:
        src, tgt = class_index(config.source_class), class_index(config.target_class)
    except ValueError as e:
        raise ValueError(f"--config.source_class / --config.target_class: {e}") from None
    if src == tgt:
        raise ValueError(f"source_class and target_class are both {EMOTIONS[src]!r}; choose two classes")
    have = (class_index(meta["source_class"]), class_index(meta["target_class"]))
    if have != (src, tgt):
        raise ValueError(
            f"the generator in {config.generator_checkpoint} translates {EMOTIONS[have[0]]} -> "
            f"{EMOTIONS[have[1]]}, the config asks for {EMOTIONS[src]} -> {EMOTIONS[tgt]}: pass "
            f"--config.source_class={EMOTIONS[have[0]]} --config.target_class={EMOTIONS[have[1]]} or "
            f"another generator checkpoint")
    return src, tgt


def _target(config: ml_collections.ConfigDict, counts: np.ndarray, tgt: int,
            default: int | None = None) -> tuple[int, int]:
    """(target_count, current count of the target class); `default` (None: the median class
    size) stands for target_count 0; a target below the current count is refused."""
    median = int(round(float(np.median(counts))))
    target = config.target_count or (median if default is None else default)
    have = int(counts[tgt])
    if target < have:
        raise ValueError(f"--config.target_count={target} is below the current count {have} of "
                         f"{EMOTIONS[tgt]!r}; set it to at least {have} (0: the median class size, {median})")
    return target, have


def _planned(config: ml_collections.ConfigDict, counts: np.ndarray, n_sources: int,
             src: int, tgt: int, default: int | None) -> tuple[int, int]:
    """(target_count, images to generate), refusing counts that cannot be met."""
    if n_sources == 0:
        raise ValueError(f"source class {EMOTIONS[src]!r} has no Training examples in dataset "
                         f"{config.dataset!r}; choose another --config.source_class")
    target, have = _target(config, counts, tgt, default)
    if target - have > n_sources:
        raise ValueError(f"--config.target_count={target} needs {target - have} generated images but "
                         f"{EMOTIONS[src]!r} has {n_sources} Training images (each is translated at "
                         f"most once); set it to at most {have + n_sources}")
    return target, target - have


def _out_dir(config: ml_collections.ConfigDict, workdir: str) -> Path:
    """`out_dir` (default WORKDIR/dataset), refused when it exists unless `overwrite`."""
    out_dir = Path(config.out_dir or Path(workdir) / "dataset")
    try:
        refuse_existing(out_dir, config.overwrite)
    except FileExistsError as e:
        raise ValueError(f"{e} (--config.out_dir=DIR, --config.overwrite=True)") from None
    return out_dir


METHODS = ("generator", "oversample")


def _oversample(builder: DerivedBuilder, config: ml_collections.ConfigDict, tgt: int) -> dict:
    """Adds seeded copies of the real target-class Training images (each image once per round of
    a fresh permutation) until the class has `target_count` examples."""
    rows, images = builder.base_examples(tgt)
    if len(rows) == 0:
        raise ValueError(f"class {EMOTIONS[tgt]!r} has no Training examples to oversample")
    counts = np.bincount(builder.splits()["train"]["label"], minlength=len(EMOTIONS))
    target, have = _target(config, counts, tgt)
    need = target - have
    rng = np.random.default_rng(config.seed)
    rounds = -(-need // len(rows))
    pick = np.concatenate([rng.permutation(len(rows)) for _ in range(rounds)])[:need] if need else \
        np.zeros(0, np.int64)
    builder.add(images[pick], [tgt] * need, source="original", base_rows=rows[pick],
                reason=f"random oversampling: a copy of a real {EMOTIONS[tgt]} image")
    return {"target_count": target, "added": need}


def _reverse_generator(config: ml_collections.ConfigDict, meta: dict):
    """The `matched_negatives` generator: it must translate the target class back to the source
    class at the forward generator's image size."""
    if config.replace_real:
        raise ValueError("--config.matched_negatives adds round trips beside the generated images; "
                         "it does not combine with --config.replace_real")
    folder = resolve_generator(config.matched_negatives, "matched_negatives")
    back = read_meta(folder)
    if (back["source_class"], back["target_class"]) != (meta["target_class"], meta["source_class"]) or \
            back["image_size"] != meta["image_size"]:
        raise ValueError(f"--config.matched_negatives={config.matched_negatives} translates "
                         f"{back['source_class']} -> {back['target_class']} at {back['image_size']} px; the "
                         f"generator translates {meta['source_class']} -> {meta['target_class']} at "
                         f"{meta['image_size']} px: pass the reverse generator of the same CycleGAN run "
                         f"(RUN/generator_reverse)")
    return load_generator(folder)


def translate_images(model, variables, images: np.ndarray, batch_size: int, desc: str) -> np.ndarray:
    """uint8 images through the generator `model` (eval mode) in fixed-size batches (one compiled
    shape), back to uint8."""
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch"):
        batch = images[start:start + batch_size]
        padded = np.concatenate([batch, np.zeros((batch_size - len(batch), *images.shape[1:]), np.uint8)])
        out.append(to_uint8(apply(variables, to_unit(padded)))[:len(batch)])
    return np.concatenate(out) if out else np.zeros((0, *images.shape[1:]), np.uint8)


def keep_source_detail(generated: np.ndarray, sources: np.ndarray, sigma: float) -> np.ndarray:
    """uint8 [N,H,W,1]: the generated image's coarse content (a Gaussian blur of standard deviation
    `sigma` pixels) plus the source image's fine detail (the source minus its own blur). An
    expression change lives in the coarse content; a generator's blur and transposed-convolution
    checkerboard live in the fine detail, which this replaces with a real photograph's."""
    if generated.shape != sources.shape:
        raise ValueError(f"generated images {generated.shape} and their sources {sources.shape} differ in shape")
    if sigma <= 0:
        raise ValueError(f"source_detail_sigma={sigma}: expected a blur in pixels > 0 (0 turns it off)")

    def blur(x: np.ndarray) -> np.ndarray:
        return np.stack([cv2.GaussianBlur(im[..., 0], (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
                         for im in x])[..., None]

    g, s = generated.astype(np.float32), sources.astype(np.float32)
    return np.clip(np.rint(blur(g) + s - blur(s)), 0, 255).astype(np.uint8)


PREVIEW_IMAGES = 8


def write_preview(out_dir: Path, sources: np.ndarray, generated: np.ndarray, added: np.ndarray,
                  src: int, tgt: int) -> Path:
    """`OUT_preview.png` beside the dataset folder: the first source images, their translation and,
    when they differ from it, the images added (source_detail_sigma), one row each."""
    from ferjax.curation.report import example_grid

    n = min(PREVIEW_IMAGES, len(sources))
    rows = [(sources, f"source ({EMOTIONS[src]})"), (generated, f"G(x) ({EMOTIONS[tgt]})")]
    if not np.array_equal(generated[:n], added[:n]):
        rows.append((added, "added"))
    images = np.concatenate([r[:n] for r, _ in rows])
    captions = [caption for _, caption in rows for _ in range(n)]
    return example_grid(images, captions, out_dir.with_name(out_dir.name + "_preview.png"),
                        f"{EMOTIONS[src]} -> {EMOTIONS[tgt]}: first {n} of {len(sources)} added", columns=n)


def balance(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Brings the target class to `target_count` Training examples and writes the derived dataset
    to `out_dir` (default WORKDIR/dataset): `method=generator` translates source-class images,
    `method=oversample` adds copies of the real target-class images (the baseline to beat)."""
    t0 = time.perf_counter()
    if config.method not in METHODS:
        raise ValueError(f"--config.method={config.method!r}: expected one of {list(METHODS)}")
    if config.source_detail_sigma < 0 or (config.source_detail_sigma and config.method != "generator"):
        raise ValueError(f"--config.source_detail_sigma={config.source_detail_sigma}: expected a blur in "
                         f"pixels >= 0 (0: off), and only with --config.method=generator")
    if config.method == "oversample":
        if config.replace_real:
            raise ValueError("--config.replace_real needs --config.method=generator (oversampling "
                             "copies the real images it would remove)")
        try:
            tgt = class_index(config.target_class)
        except ValueError as e:
            raise ValueError(f"--config.target_class: {e}") from None
        out_dir = _out_dir(config, workdir)
        builder = DerivedBuilder(config.dataset, config.data, config.protocol)
        before = builder.counts()["train_per_class_before"]
        done = _oversample(builder, config, tgt)
        builder.write(out_dir, invoked_command(), {"balance": {"method": "oversample", "target_class": EMOTIONS[tgt],
                                                        **done, "seed": config.seed},
                                            "config": config.to_dict()}, overwrite=config.overwrite)
        return {"experiment": config.name, "method": "oversample", "output": str(out_dir),
                "target_class": EMOTIONS[tgt], **done, "train_per_class_before": before,
                "train_per_class_after": builder.counts()["train_per_class_after"],
                "wall_seconds": round(time.perf_counter() - t0, 2),
                "train_with": f"--config.dataset=derived --config.data.derived_dir={out_dir}"}
    folder = resolve_generator(config.generator_checkpoint)  # a folder, or a registered pretrained generator
    meta = read_meta(folder)
    src, tgt = _check_classes(config, meta)
    reverse = _reverse_generator(config, meta) if config.matched_negatives else None
    generator = load_generator(folder)
    out_dir = _out_dir(config, workdir)
    builder = DerivedBuilder(config.dataset, config.data, config.protocol)
    shape = builder.base_splits["train"]["image"].shape[1:]
    size = meta["image_size"]
    if shape != (size, size, 1):
        raise ValueError(f"the generator takes {size}x{size}x1 images (generator.json image_size), the "
                         f"dataset has {'x'.join(map(str, shape))}")
    before = np.bincount(builder.splits()["train"]["label"], minlength=len(EMOTIONS))
    default = None
    if config.replace_real:  # GAN-train: generated images in place of the real ones
        real_rows, _ = builder.base_examples(tgt)
        for row in real_rows:
            builder.remove(row, f"replaced by generated {EMOTIONS[tgt]} images (replace_real)")
        default = len(real_rows)
    counts = np.bincount(builder.splits()["train"]["label"], minlength=len(EMOTIONS))
    rows, images = builder.base_examples(src)
    target, need = _planned(config, counts, len(rows), src, tgt, default)

    pick = np.sort(np.random.default_rng(config.seed).choice(len(rows), need, replace=False))
    t1 = time.perf_counter()
    generated = translate_images(generator.model, generator.variables, images[pick], config.batch_size,
                                 f"{EMOTIONS[src]} -> {EMOTIONS[tgt]}")
    translate_seconds = time.perf_counter() - t1
    ckpt = str(generator.path.resolve())
    reason = f"{meta['generator']} generator {EMOTIONS[src]}->{EMOTIONS[tgt]} (step {meta['step']})"
    if config.source_detail_sigma:  # the matched negatives below round-trip G(x) itself
        added = keep_source_detail(generated, images[pick], config.source_detail_sigma)
        reason += f", fine detail (above a {config.source_detail_sigma:g} px Gaussian) from the source image"
    else:
        added = generated
    builder.add(added, [tgt] * need, source="generated", base_rows=rows[pick], reason=reason,
                generator_checkpoint=ckpt)
    info = {"balance": {"source_class": EMOTIONS[src], "target_class": EMOTIONS[tgt],
                        "target_count": target, "generated": need, "seed": config.seed,
                        "replace_real": config.replace_real,
                        "source_detail_sigma": config.source_detail_sigma,
                        "generator_checkpoint": ckpt, "generator": meta},
            "config": config.to_dict()}
    if reverse is not None:  # F(G(x)) labelled source: the generators' look on both labels
        back = translate_images(reverse.model, reverse.variables, generated, config.batch_size,
                                f"{EMOTIONS[tgt]} -> {EMOTIONS[src]} (matched)")
        builder.add(back, [src] * need, source="generated", base_rows=rows[pick],
                    reason=f"matched negative: round trip F(G(x)) of a {EMOTIONS[src]} image, labelled "
                           f"{EMOTIONS[src]} (reverse generator step {reverse.meta['step']})",
                    generator_checkpoint=str(reverse.path.resolve()))
        info["balance"]["matched_negatives"] = {"added": need, "generator_checkpoint": str(reverse.path.resolve())}
    builder.write(out_dir, invoked_command(), info, overwrite=config.overwrite)
    preview = write_preview(out_dir, images[pick], generated, added, src, tgt) if need else None
    after = builder.counts()["train_per_class_after"]
    return {"experiment": config.name, "method": "generator", "output": str(out_dir),
            "generator_checkpoint": ckpt,
            "source_class": EMOTIONS[src], "target_class": EMOTIONS[tgt], "target_count": target,
            "generated": need, "replaced_real": int(before[tgt] - counts[tgt]),
            "matched_negatives": need if reverse is not None else 0,
            "train_per_class_before": {n: int(c) for n, c in zip(EMOTIONS, before)},
            "train_per_class_after": after,
            "translate_seconds": round(translate_seconds, 2), "preview": str(preview) if preview else None,
            "wall_seconds": round(time.perf_counter() - t0, 2),
            "train_with": f"--config.dataset=derived --config.data.derived_dir={out_dir}"}
