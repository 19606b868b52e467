"""Train a CycleGAN between two FER2013 classes (Training split only), in the generic loop.

An epoch is one pass over the source class in a shuffled order; each source batch is paired with
target-class images drawn at random (with replacement), seeded by the step so a resumed run sees
the same pairs. After each epoch a sample grid on fixed inputs is written; at the end the
source->target generator is exported for balancing (`generator/generator.{json,msgpack}`).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Iterator

import cv2
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ferjax.atomic import atomic_write_bytes
from ferjax.data import fer2013
from ferjax.data.pipeline import TrainBatches
from ferjax.registry import DATASETS, DISCRIMINATORS, GENERATORS, LOSSES
from ferjax.train import sharding
from ferjax.train.cyclegan_steps import create_state, make_step, to_unit, unit_ssim
from ferjax.train.generator_export import FORWARD, REVERSE, export_run_generators, to_uint8
from ferjax.config import flat_config
from ferjax.train.loop import fit
from ferjax.train.schedules import make_optimizer, make_schedule


class PairedBatches:
    """Source batches in shuffled epochs, each with random target images; resumable by step."""

    def __init__(self, source: np.ndarray, target: np.ndarray, batch_size: int, seed: int):
        self._source = TrainBatches({"a": source}, batch_size, seed)
        self._target, self._seed = target, seed
        self.batch_size = batch_size
        self.steps_per_epoch = self._source.steps_per_epoch

    def iterate(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        for step, batch in enumerate(self._source.iterate(start_step), start_step):
            idx = np.random.default_rng((self._seed, step)).integers(0, len(self._target), self.batch_size)
            yield {"a": batch["a"], "b": self._target[idx]}


def class_index(name: str, field: str) -> int:
    """Index of an emotion by name; the error names the config field."""
    try:
        return fer2013.class_index(name)
    except ValueError as e:
        raise ValueError(f"config.{field}: {e}") from None


def write_png(path: Path, image: np.ndarray) -> None:
    """Writes a PNG atomically."""
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"could not encode {path}")
    atomic_write_bytes(path, buf.tobytes())


def sample_grid(rows: list[np.ndarray], scale: int = 2) -> np.ndarray:
    """Stacks rows of [N,48,48,1] images in [-1, 1] into one uint8 grid image."""
    lines = [np.concatenate(list(to_uint8(r)[..., 0]), 1) for r in rows]
    grid = np.concatenate(lines, 0)
    return cv2.resize(grid, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)


def cyclegan_train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains `config.generator` / `config.discriminator` from `source_class` to `target_class`."""
    t0 = time.perf_counter()
    print(f"{config.name}: {config.source_class} -> {config.target_class}, "
          f"profile {config.profile} ({config.profile_reason})", flush=True)
    src_idx = class_index(config.source_class, "source_class")
    tgt_idx = class_index(config.target_class, "target_class")
    if src_idx == tgt_idx:
        raise ValueError(f"config.source_class and config.target_class are both {config.source_class!r}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tcfg = config.train
    splits = DATASETS.create(config.dataset, cfg=config.data, protocol="original")
    data = splits["train"]
    source = data["image"][data["label"] == src_idx]
    target = data["image"][data["label"] == tgt_idx]
    for name, imgs in ((config.source_class, source), (config.target_class, target)):
        if len(imgs) < tcfg.batch_size:
            raise ValueError(f"class {name!r} has {len(imgs)} Training images, fewer than "
                             f"train.batch_size={tcfg.batch_size}; choose another class or a smaller batch")
    guide = class_guide(config)
    judge_model, judge = None, None
    if config.quality.model:  # loaded once; a wrong feature layer fails now, not after training
        from ferjax import pretrained
        from ferjax.eval.gan_quality import feature_fn

        judge_model = pretrained.load(config.quality.model)[:2]
        feature_fn(*judge_model, config.quality.feature_layer)
        judge = unit_image_classifier(*judge_model)
    primary = sharding.is_primary()  # under jax.distributed only process 0 writes files
    if primary:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))

    generator = GENERATORS.create(config.generator, **config.generator_kwargs)
    discriminator = DISCRIMINATORS.create(config.discriminator, **config.discriminator_kwargs)
    if config.quality.model and getattr(discriminator, "feature_model", "") == config.quality.model:
        raise ValueError(f"config.discriminator={config.discriminator!r} judges on the features of "
                         f"{config.quality.model!r}, the GAN-test judge (config.quality.model): the generator "
                         f"would be graded by the network that trained it; set config.quality.model to "
                         f"another pretrained classifier")
    batches = PairedBatches(source, target, tcfg.batch_size, tcfg.seed)
    g_tx = make_optimizer(tcfg, make_schedule(tcfg, batches.steps_per_epoch))
    d_tx = make_optimizer(tcfg, make_schedule(tcfg, batches.steps_per_epoch))
    devices = tcfg.num_devices or jax.device_count()
    mesh = sharding.data_mesh(devices if tcfg.batch_size % devices == 0 else 1)
    state = create_state(generator, discriminator, g_tx, d_tx, tcfg.seed, config.gan.pool_size)
    step = make_step(generator, discriminator, g_tx, d_tx, LOSSES.create(config.cycle_loss),
                     LOSSES.create(config.identity_loss), LOSSES.create(config.adversarial_loss),
                     config.gan, tcfg.seed, mesh, class_guide=guide, target_class=tgt_idx,
                     steps_per_epoch=batches.steps_per_epoch)

    rng = np.random.default_rng(1234)  # fixed sample inputs (Training images only)
    fixed_a = source[rng.choice(len(source), min(8, len(source)), replace=False)]
    fixed_b = target[rng.choice(len(target), min(8, len(target)), replace=False)]
    probe_a = source[rng.choice(len(source), min(256, len(source)), replace=False)]
    probe_b = target[rng.choice(len(target), min(256, len(target)), replace=False)]

    @jax.jit
    def translate_both(variables, a, b):
        run = lambda n, x: generator.apply(variables[n], x, train=False)
        xa, xb = to_unit(a), to_unit(b)
        fake_b, fake_a = run("g", xa), run("f", xb)
        return {"a": xa, "g_a": fake_b, "fg_a": run("f", fake_b), "b": xb, "f_b": fake_a,
                "gf_b": run("g", fake_a), "id_a": run("f", xa), "id_b": run("g", xb)}

    def evaluate(current) -> dict:
        """Cycle and identity SSIM on fixed Training images (no test data), and how often the class
        guide and the quality classifier (the GAN-test judge) call G(A) the target class."""
        v = jax.device_get(current.variables)
        out = translate_both(v, probe_a, probe_b)
        ssim = lambda x, y: float(jnp.mean(unit_ssim(x, y)))
        metrics = {"cycle_ssim": (ssim(out["fg_a"], out["a"]) + ssim(out["gf_b"], out["b"])) / 2,
                   "identity_ssim": (ssim(out["id_a"], out["a"]) + ssim(out["id_b"], out["b"])) / 2}
        for name, net in (("guide", guide), ("judge", judge)):
            if net is not None:
                metrics[f"{name}_target_rate"] = float(jnp.mean(net(out["g_a"]).argmax(-1) == tgt_idx))
        return metrics

    samples = workdir / "samples"
    samples.mkdir(exist_ok=True)

    def on_epoch_end(current, epoch: int) -> None:
        if not primary:  # the grid is only written, never used: other processes skip it
            return
        out = jax.device_get(translate_both(jax.device_get(current.variables), fixed_a, fixed_b))
        grid = sample_grid([out[k] for k in ("a", "g_a", "fg_a", "b", "f_b", "gf_b")])
        write_png(samples / f"epoch_{epoch:03d}.png", grid)
        write_png(samples / "latest.png", grid)

    state, host = fit(state, step, batches, evaluate, tcfg, workdir, mesh, on_epoch_end=on_epoch_end,
                      run_config=flat_config(config))
    export_dir = workdir / FORWARD
    if primary:
        export_run_generators(workdir, config.generator, config.generator_kwargs.to_dict(),
                              jax.device_get({k: state.variables[k] for k in ("g", "f")}), config.source_class,
                              config.target_class, int(state.step))
    final = host["history"][-1] if host["history"] else {}
    quality = {}
    if config.quality.model:
        quality = generator_quality(config, jax.device_get(state.variables["g"]), generator, source,
                                    target, splits.get("test"), tgt_idx, evaluate(state), judge_model, guide)
        if primary:
            (workdir / "quality.json").write_text(json.dumps(quality, indent=2))
    summary = {"experiment": config.name, "profile": config.profile,
               "source_class": config.source_class, "target_class": config.target_class,
               "source_images": int(len(source)), "target_images": int(len(target)),
               "epochs_run": len(host["history"]), "steps": int(state.step),
               "wall_seconds": round(time.perf_counter() - t0, 1),
               "train_seconds": round(sum(h["epoch_seconds"] for h in host["history"]), 1),
               "cycle_ssim": final.get("val_cycle_ssim"), "identity_ssim": final.get("val_identity_ssim"),
               "generator": str(export_dir), "generator_reverse": str(workdir / REVERSE), "samples": str(samples / "latest.png"), "quality": quality}
    if primary:
        (workdir / "report.json").write_text(json.dumps(summary, indent=2))
    return summary


def unit_image_classifier(model, variables) -> Callable[[jax.Array], jax.Array]:
    """A classifier (uint8-range input) as a jitted function of images in [-1, 1] -> logits."""
    return jax.jit(lambda x: model.apply(variables, (jnp.clip(x, -1.0, 1.0) + 1.0) * 127.5, train=False))


def guide_names(value: str) -> list[str]:
    """The pretrained classifiers named by `gan.class_guide` (one name, or several joined by commas)."""
    return [n.strip() for n in str(value or "").split(",") if n.strip()]


def ensemble_log_probs(members: list[Callable[[jax.Array], jax.Array]]) -> Callable[[jax.Array], jax.Array]:
    """Several classifiers as one: the mean of their log-probabilities (a normalised geometric mean
    of their probabilities once softmaxed), so the pull is strongest where they all agree."""
    if len(members) == 1:
        return members[0]
    return jax.jit(lambda x: jnp.mean(jnp.stack([jax.nn.log_softmax(m(x), -1) for m in members]), 0))


def class_guide(config: ml_collections.ConfigDict) -> Callable[[jax.Array], jax.Array] | None:
    """The frozen classifier(s) named by `gan.class_guide` when `gan.lambda_class` > 0, checked
    before any training: each must be differentiable in its input and must be neither the GAN-test
    judge nor distilled from it. Several names (comma-separated) guide as an ensemble
    (`ensemble_log_probs`): a pull that moves several networks at once is more likely to move an
    unseen one (the judge) too."""
    weight, names = config.gan.lambda_class, guide_names(config.gan.class_guide)
    if weight <= 0:
        return None
    if not names:
        raise ValueError("config.gan.lambda_class > 0 needs config.gan.class_guide, a pretrained "
                         "classifier name or several joined by commas (see `python -m ferjax.run --list`)")
    from ferjax import pretrained

    judge = config.quality.model
    members = []
    for name in names:
        if name == judge:
            raise ValueError(f"config.gan.class_guide names {name!r}, which is also config.quality.model: "
                             f"GAN-test would grade the generator with the classifier that trained it; "
                             f"set config.quality.model to another pretrained classifier")
        model, variables, card = pretrained.load(name)
        if judge and judge in (card.get("distilled_from") or {}):
            raise ValueError(f"config.gan.class_guide member {name!r} was distilled from the GAN-test judge "
                             f"{judge!r} (its model card): GAN-test would not be independent; leave it out")
        member = unit_image_classifier(model, variables)
        probe = jax.random.uniform(jax.random.key(0), (2, 48, 48, 1), minval=-0.9, maxval=0.9)
        if not np.any(np.asarray(jax.grad(lambda x, m=member: m(x).sum())(probe))):
            raise ValueError(f"config.gan.class_guide={name!r} passes no gradient to its input (its "
                             f"preprocessing rounds pixels); choose a classifier that takes float pixels")
        members.append(member)
    return ensemble_log_probs(members)


def generator_quality(config, g_variables, generator, source: np.ndarray, target: np.ndarray,
                      test: dict | None, tgt_idx: int, ssim: dict, judge_model: tuple,
                      guide: Callable[[jax.Array], jax.Array] | None, source_detail_sigma: float = 0.0) -> dict:
    """KID/FID against real Training target images and GAN-test, on the features of
    `judge_model` ((model, variables) of `config.quality.model`, a classifier trained on real data);
    cycle/identity SSIM from the final evaluation; the class guide's own rate when there is one.
    `source_detail_sigma` > 0 scores the images balance_fer2013 adds with that setting (the
    generated coarse content with the source's fine detail) instead of the raw G(x)."""
    from ferjax.tasks.balance import keep_source_detail, translate_images
    from ferjax.eval.gan_quality import feature_fn, fid, kid

    q = config.quality
    features = feature_fn(*judge_model, q.feature_layer)
    rng = np.random.default_rng(q.seed)
    inputs = source[rng.choice(len(source), min(q.num_images, len(source)), replace=False)]
    fake = translate_images(generator, g_variables, inputs, 256, "generator quality")
    if source_detail_sigma:
        fake = keep_source_detail(fake, inputs, source_detail_sigma)
    f_real, _ = features(target)
    f_fake, p_fake = features(fake)
    _, p_src = features(inputs)
    kid_mean, kid_sd = kid(f_real, f_fake, q.kid_subset_size, q.kid_subsets, q.seed)
    report = {"classifier": q.model, "feature_layer": q.feature_layer,
              "generated": int(len(fake)), "real_target_training_images": int(len(target)),
              "kid_mean": kid_mean, "kid_sd": kid_sd, "kid_subset_size": min(q.kid_subset_size, len(target)),
              "fid": fid(f_real, f_fake),
              "gan_test_target_rate": float(np.mean(p_fake.argmax(1) == tgt_idx)),
              "target_rate_on_real_source_inputs": float(np.mean(p_src.argmax(1) == tgt_idx)),
              "cycle_ssim": ssim["cycle_ssim"], "identity_ssim": ssim["identity_ssim"]}
    if source_detail_sigma:
        report["source_detail_sigma"] = source_detail_sigma
    if guide is not None:  # the guide's own verdict: not an independent test
        report["class_guide"] = config.gan.class_guide
        report["guide_target_rate"] = float(np.mean(np.asarray(guide(to_unit(fake))).argmax(1) == tgt_idx))
    if test is not None:
        real_test = test["image"][test["label"] == tgt_idx]
        _, p_test = features(real_test)
        report["target_recall_on_real_test"] = float(np.mean(p_test.argmax(1) == tgt_idx))
        report["real_test_images"] = int(len(real_test))
    report["targets"] = {
        "gan_test_at_least_5x_source_rate": report["gan_test_target_rate"] > 0
            and report["gan_test_target_rate"] >= 5 * report["target_rate_on_real_source_inputs"],
        "gan_test_at_least_test_recall":
            report["gan_test_target_rate"] >= report.get("target_recall_on_real_test", 1.0),
        "cycle_ssim_at_least_0.7": report["cycle_ssim"] >= 0.7}
    return report
