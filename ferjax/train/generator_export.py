"""A trained image-to-image generator as a folder other stages read (balancing, quality reports).

A CycleGAN run exports its source -> target generator G to RUN/generator and the reverse one, F,
to RUN/generator_reverse (`export_run_generators`, also
`python -m ferjax.train.generator_export --run=RUN_DIR` for runs made before F was exported).
Each folder holds `generator.json` ({"generator": registered name, "generator_kwargs": {...},
"source_class", "target_class", "step", "image_size"}) and `generator.msgpack`
(`flax.serialization.to_bytes({"params": ..., "batch_stats": ...})`) of the source -> target
generator, which maps [N, S, S, 1] float images in [-1, 1] (pixel p -> p / 127.5 - 1) to [-1, 1]
and is applied as `model.apply(variables, x, train=False)`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ferjax.atomic import atomic_folder
from ferjax.data.fer2013 import class_index
from ferjax.registry import GENERATORS, PRETRAINED_GENERATORS

META, WEIGHTS = "generator.json", "generator.msgpack"
FORWARD, REVERSE = "generator", "generator_reverse"  # folders inside a CycleGAN run
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "pretrained" / "generators"  # shipped generator pairs
COLLECTIONS = ("params", "batch_stats")
_FIELDS = {"generator": str, "generator_kwargs": dict, "source_class": str, "target_class": str,
           "step": int, "image_size": int}


class GeneratorCheckpointError(ValueError):
    """A generator folder is missing, incomplete, or does not match its declared architecture."""


@dataclasses.dataclass
class Generator:
    model: Any
    variables: Any
    meta: dict
    path: Path


def to_uint8(images: jax.Array) -> np.ndarray:
    """Floats in [-1, 1] -> pixels 0..255, rounded and clipped (the inverse of
    `cyclegan_steps.to_unit`)."""
    return np.clip(np.rint((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def export_generator(out_dir: str | os.PathLike, generator: str, generator_kwargs: dict,
                     variables: Any, source_class: str, target_class: str, step: int,
                     image_size: int = 48, overwrite: bool = False) -> Path:
    """Writes the folder atomically (both files appear together or not at all)."""
    meta = {"generator": generator, "generator_kwargs": dict(generator_kwargs),
            "source_class": source_class, "target_class": target_class, "step": int(step),
            "image_size": int(image_size)}
    _check_meta(meta, Path(out_dir) / META)
    state = {k: v for k, v in flax.serialization.to_state_dict(jax.device_get(variables)).items()
             if k in COLLECTIONS}
    with atomic_folder(out_dir, overwrite=overwrite) as tmp:
        (tmp / WEIGHTS).write_bytes(flax.serialization.to_bytes(state))
        (tmp / META).write_text(json.dumps(meta, indent=2))
    return Path(out_dir)


def _check_meta(meta: Any, path: Path) -> dict:
    if not isinstance(meta, dict):
        raise GeneratorCheckpointError(f"{path}: expected a JSON object with keys {sorted(_FIELDS)}")
    for key, kind in _FIELDS.items():
        if key not in meta:
            raise GeneratorCheckpointError(f"{path}: missing key {key!r}; expected keys {sorted(_FIELDS)}")
        if not isinstance(meta[key], kind) or (kind is int and isinstance(meta[key], bool)):
            raise GeneratorCheckpointError(f"{path}: {key}={meta[key]!r} should be a {kind.__name__}")
    for key in ("source_class", "target_class"):
        try:
            class_index(meta[key])
        except ValueError as e:
            raise GeneratorCheckpointError(f"{path}: {key}: {e}") from None
    return meta


def read_meta(ckpt_dir: str | os.PathLike) -> dict:
    """The checked `generator.json` of a generator folder (cheap: no weights read)."""
    ckpt_dir = Path(ckpt_dir).expanduser()
    if not ckpt_dir.is_dir():
        raise GeneratorCheckpointError(
            f"generator checkpoint folder {ckpt_dir} does not exist; set --config.generator_checkpoint "
            f"to a folder holding {META} and {WEIGHTS} (exported by a CycleGAN run)")
    for name in (META, WEIGHTS):
        if not (ckpt_dir / name).is_file():
            raise GeneratorCheckpointError(f"{ckpt_dir} has no {name}; a generator checkpoint folder "
                                           f"holds {META} and {WEIGHTS}")
    try:
        meta = json.loads((ckpt_dir / META).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GeneratorCheckpointError(f"{ckpt_dir / META} is not valid JSON: {e}") from None
    return _check_meta(meta, ckpt_dir / META)


def resolve_generator(value: str, field: str = "generator_checkpoint") -> Path:
    """The generator folder `value` names: a folder path, or a registered pretrained generator
    (`PRETRAINED_GENERATORS`); anything else is refused naming `field` and both forms."""
    if not value:
        raise GeneratorCheckpointError(f"--config.{field} is empty: set it to a generator folder (holding {META} "
                                       f"and {WEIGHTS}, e.g. RUN/generator of a cyclegan_* run) or a "
                                       f"registered pretrained generator name")
    path = Path(value).expanduser()
    if path.is_dir():
        return path
    if value in PRETRAINED_GENERATORS:
        return Path(PRETRAINED_GENERATORS.get(value)())
    names = ", ".join(PRETRAINED_GENERATORS.names()) or "none yet"
    raise GeneratorCheckpointError(
        f"--config.{field}={value!r} is neither a folder nor a registered pretrained generator (registered: "
        f"{names}); train one with `python -m ferjax.run --experiment=cyclegan_neutral2disgust:cpu` and pass "
        f"--config.{field}=runs/cyclegan_neutral2disgust/cpu/generator")


def _tree_differences(template: dict, state: dict) -> list[str]:
    want = traverse_util.flatten_dict(template, sep="/")
    got = traverse_util.flatten_dict(state, sep="/")
    diffs = [f"missing {k} {list(v.shape)}" for k, v in want.items() if k not in got]
    diffs += [f"unexpected {k} {list(np.shape(v))}" for k, v in got.items() if k not in want]
    diffs += [f"{k}: shape {list(np.shape(got[k]))}, the architecture has {list(v.shape)}"
              for k, v in want.items() if k in got and tuple(np.shape(got[k])) != tuple(v.shape)]
    return diffs


def load_generator(ckpt_dir: str | os.PathLike) -> Generator:
    """The model and variables of a generator folder; refuses weights whose tree or shapes differ
    from `GENERATORS.create(generator, **generator_kwargs)`, naming the first differences."""
    ckpt_dir = Path(ckpt_dir).expanduser()
    meta = read_meta(ckpt_dir)
    try:
        model = GENERATORS.create(meta["generator"], **meta["generator_kwargs"])
    except (TypeError, ValueError, KeyError) as e:
        raise GeneratorCheckpointError(f"{ckpt_dir / META}: generator {meta['generator']!r} with "
                                       f"kwargs {meta['generator_kwargs']}: {e}") from None
    size = meta["image_size"]
    template = jax.eval_shape(lambda: model.init(
        jax.random.key(0), jnp.zeros((1, size, size, 1), jnp.float32), train=False))
    template = {k: v for k, v in flax.serialization.to_state_dict(template).items() if k in COLLECTIONS}
    try:
        state = flax.serialization.msgpack_restore((ckpt_dir / WEIGHTS).read_bytes())
    except Exception as e:  # msgpack raises several unrelated types for damaged bytes
        raise GeneratorCheckpointError(f"{ckpt_dir / WEIGHTS} is not a flax msgpack file: "
                                       f"{type(e).__name__}: {e}") from None
    diffs = _tree_differences(template, state if isinstance(state, dict) else {})
    if diffs:
        more = f" (+{len(diffs) - 6} more)" if len(diffs) > 6 else ""
        raise GeneratorCheckpointError(
            f"{ckpt_dir / WEIGHTS} does not match generator {meta['generator']!r} with kwargs "
            f"{meta['generator_kwargs']} from {META}: {'; '.join(diffs[:6])}{more}. Export the weights "
            f"with the generator_kwargs they were trained with")
    variables = jax.tree.map(jnp.asarray, flax.serialization.from_state_dict(template, state))
    return Generator(model, variables, meta, ckpt_dir)


def export_run_generators(run_dir: str | os.PathLike, generator: str, generator_kwargs: dict,
                          variables: Any, source_class: str, target_class: str, step: int,
                          image_size: int = 48) -> tuple[Path, Path]:
    """Exports a CycleGAN's G (`variables["g"]`, source -> target) to RUN/generator and F
    (`variables["f"]`, target -> source) to RUN/generator_reverse, replacing earlier exports."""
    run_dir = Path(run_dir)
    out = []
    for folder, key, src, tgt in ((FORWARD, "g", source_class, target_class),
                                  (REVERSE, "f", target_class, source_class)):
        out.append(export_generator(run_dir / folder, generator, generator_kwargs, variables[key], src, tgt,
                                    step, image_size, overwrite=True))
    return out[0], out[1]


def export_from_run(run_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Both generators of a CycleGAN workdir, read from its latest checkpoint and its config.json."""
    from ferjax.train.checkpoint import read_state_as_numpy, saved_steps  # noqa: PLC0415

    run_dir = Path(run_dir)
    latest = run_dir / "checkpoints" / "latest"
    steps = saved_steps(latest)
    if not steps or not (run_dir / "config.json").is_file():
        raise GeneratorCheckpointError(f"{run_dir} is not a CycleGAN workdir: expected config.json and "
                                       f"checkpoints/latest/STEP")
    config = json.loads((run_dir / "config.json").read_text())
    state = read_state_as_numpy(latest / str(steps[-1]) / "state")
    variables = state.get("variables", {})
    if not {"g", "f"} <= set(variables):
        raise GeneratorCheckpointError(f"{latest / str(steps[-1])} holds no CycleGAN generators "
                                       f"(variables {sorted(variables)}; expected g and f)")
    return export_run_generators(run_dir, config["generator"], config["generator_kwargs"], variables,
                                 config["source_class"], config["target_class"], int(state["step"]))


CARD = "card.json"  # the model card of a shipped generator pair, beside its two folders
CARD_QUALITY = ("classifier", "feature_layer", "generated", "gan_test_target_rate",
                "target_rate_on_real_source_inputs", "target_recall_on_real_test", "kid_mean", "kid_sd", "fid",
                "cycle_ssim", "identity_ssim", "class_guide", "guide_target_rate")


def ship_run(run_dir: str | os.PathLike, name: str, dest_root: str | os.PathLike,
             overwrite: bool = False) -> Path:
    """Copies a finished CycleGAN run's two generator folders into DEST_ROOT/NAME (`generator`,
    `generator_reverse`) with a model card (`card.json`): the run's experiment, steps, epochs and wall
    time (report.json), its GAN-test, KID/FID and cycle SSIM (quality.json), the command that
    reproduces it and each weights file's sha256. Written atomically; a run without report.json
    and quality.json (unfinished, or without a judge) is refused."""
    from ferjax.atomic import file_sha256  # noqa: PLC0415

    run_dir = Path(run_dir)
    files = {f: run_dir / f for f in ("report.json", "quality.json", "config.json")}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise GeneratorCheckpointError(f"{run_dir} is not a finished CycleGAN run with a quality report: "
                                       f"missing {', '.join(missing)}")
    report, quality, config = (json.loads(p.read_text()) for p in files.values())
    metas = {folder: read_meta(run_dir / folder) for folder in (FORWARD, REVERSE)}
    card = {"name": name, "experiment": report["experiment"], "source_class": report["source_class"],
            "target_class": report["target_class"], "steps": report["steps"], "epochs_run": report["epochs_run"],
            "wall_seconds": report["wall_seconds"], "train_seconds": report["train_seconds"],
            "source_images": report["source_images"], "target_images": report["target_images"],
            "generator": metas[FORWARD]["generator"], "generator_kwargs": metas[FORWARD]["generator_kwargs"],
            "image_size": metas[FORWARD]["image_size"], "data": "FER2013 Training (Kaggle labels)",
            "quality": {k: quality[k] for k in CARD_QUALITY if k in quality},
            "command": f"python -m ferjax.run --experiment={report['experiment']}",
            "cycle_loss": config.get("cycle_loss"),
            "sha256": {folder: file_sha256(run_dir / folder / WEIGHTS) for folder in (FORWARD, REVERSE)}}
    with atomic_folder(Path(dest_root) / name, overwrite=overwrite) as tmp:
        for folder in (FORWARD, REVERSE):
            (tmp / folder).mkdir()
            for f in (META, WEIGHTS):
                (tmp / folder / f).write_bytes((run_dir / folder / f).read_bytes())
        (tmp / CARD).write_text(json.dumps(card, indent=2) + "\n")
    return Path(dest_root) / name


def main(argv: list[str] | None = None) -> None:
    import argparse  # noqa: PLC0415

    p = argparse.ArgumentParser(prog="python -m ferjax.train.generator_export",
                                description="Export both generators (G: source -> target, F: target -> "
                                            "source) of a CycleGAN workdir from its latest checkpoint.")
    p.add_argument("--run", required=True, type=Path, help="a cyclegan_* workdir")
    p.add_argument("--ship", default="", metavar="NAME",
                   help="instead: copy the finished run's generators with a model card to DEST/NAME, the "
                        "layout of a shipped pretrained generator (registry/pretrained_generators.py)")
    p.add_argument("--dest", type=Path, default=SHIPPED_DIR, help="with --ship (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="with --ship: replace DEST/NAME")
    args = p.parse_args(argv)
    try:
        if args.ship:
            print(json.dumps({"shipped": str(ship_run(args.run, args.ship, args.dest, args.overwrite))}))
            return
        forward, reverse = export_from_run(args.run)
    except (GeneratorCheckpointError, FileExistsError) as e:
        p.error(str(e))
    print(json.dumps({"generator": str(forward), "generator_reverse": str(reverse)}))


if __name__ == "__main__":
    main()
