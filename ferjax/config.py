"""Experiment lookup, `--config.a.b=value` overrides, and validation against the registries.

An experiment is a module with `get_config(variant) -> ml_collections.ConfigDict`, found in
`ferjax.experiments` or through the `ferjax.experiments` entry-point group. It declares the
variants `NAME:variant` may pick in a module-level `VARIANTS` (a tuple of names, or a dict keyed
by them); `NAME` alone calls `get_config(None)`, the experiment's default. Everything is checked
before any work starts, then the config is locked: tasks read its fields directly.

Validation, by field:
- a field named like a component kind (`classifier`, `detector`, ...) names a registered one; its
  plural (`detectors`) holds several, comma-separated or as a sequence; `ROLE_loss` names a loss;
- `X_kwargs` (beside `X`) are arguments of the component `X` names, `X_args` maps names of kind
  `X` to their arguments: both within the bounds the component declared when registered, and so
  are sibling fields named like its factory's parameters (`protocol` beside `dataset`);
- fields named in `FIELD_RULES` (batch sizes, intervals, output formats) obey their rule there.
"""
from __future__ import annotations

import ast
import difflib
import importlib
import json
import os
import pkgutil
import shlex
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

import ml_collections

from ferjax import registry
from ferjax.data.fer2013 import EMOTIONS

EXPERIMENT_GROUP = "ferjax.experiments"
SHARED_CONFIG_MODULES = ("common",)  # modules of ferjax.experiments holding shared blocks, not experiments
# Config keys whose values must name a registered component of the given kind.
COMPONENT_KEYS = {
    "classifier": registry.CLASSIFIERS, "generator": registry.GENERATORS,
    "discriminator": registry.DISCRIMINATORS, "loss": registry.LOSSES,
    "detector": registry.DETECTORS, "dataset": registry.DATASETS, "task": registry.TASKS,
    "pretrained": registry.PRETRAINED, "model": registry.PRETRAINED, "init_from": registry.PRETRAINED,
    "curation_signal": registry.CURATION_SIGNALS, "teacher": registry.PRETRAINED,
}
# Config keys holding several names of one kind (comma-separated), beyond the plurals of the above.
NAME_LIST_KEYS = {"class_guide": registry.PRETRAINED}


_POSITIVE_INT = registry.integer(1)
_COUNT = registry.integer(0, note="0: no limit")
_SEED = registry.integer(0)
_FRACTION = registry.number(0.0, 1.0)
_DECAY = registry.number(0.0, 1.0, open_high=True)  # Adam's b1/b2, momentum: 1 never forgets
_NON_NEGATIVE = registry.number(0.0)
_POSITIVE = registry.number(0.0, open_low=True)
VIDEO_SUFFIXES = (".mp4", ".avi")  # the containers ferjax's OpenCV writer encodes (mp4v, MJPG)
WEIGHTS_SUFFIX = ".msgpack"  # exported weights; the model card is the same path with .json
# Names accepted by ferjax.train.schedules and the tasks (tests check each list against the code).
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "linear_decay")
TTA = ("none", "flip")
# Evaluation protocols (GUIDE.md section 4); `paper`: a reproduce_paper run's own 20% test part
PROTOCOLS = ("original", "ferplus", "paper")
DECOMPOSITION_ROWS = ("a", "b", "c", "d", "e")  # reproduce_paper's rows; e shares d's split
DIFF_AUGMENTS = ("brightness", "contrast", "translation", "cutout")
# Validation metrics `train.select_metric` may name, by task: `fit` selects checkpoints on them.
SELECT_METRICS = {
    "train_classifier": ("accuracy", "balanced_accuracy", "macro_f1", "loss"),
    "cyclegan_train": ("cycle_ssim", "identity_ssim", "guide_target_rate", "judge_target_rate"),
}


def _names_in(choices: tuple[str, ...], empty_ok: bool = True) -> registry.Check:
    """A comma-separated list of names from `choices` ('' allowed when `empty_ok`)."""
    return registry.Check(
        lambda v: isinstance(v, str) and (empty_ok or bool(_names(v))) and all(n in choices for n in _names(v)),
        f"{'empty or ' if empty_ok else ''}comma-separated names from {', '.join(choices)}")


def _weights_list(v: Any) -> bool:
    return isinstance(v, str) and all(registry.number(0.0)(float(w)) for w in v.split(",") if w.strip())


def _positive_ints(length: int | None = None) -> registry.Check:
    """A non-empty sequence (of `length` items when given) of integers > 0."""
    return registry.Check(
        lambda v: isinstance(v, (tuple, list)) and len(v) > 0 and (length is None or len(v) == length)
        and all(_POSITIVE_INT(b) for b in v),
        f"{'a non-empty sequence' if length is None else f'a sequence of {length}'} of integers > 0")


# Bounds and choices by field name, wherever the field sits in an experiment config. Every numeric
# field of every experiment needs one here or in the bounds its component declared when registered
# (tests/test_config.py walks every experiment and variant); floats are finite.
FIELD_RULES: dict[str, registry.Check] = {
    # training loop
    "batch_size": _POSITIVE_INT, "eval_batch_size": _POSITIVE_INT, "epochs": _POSITIVE_INT,
    "log_every_steps": _POSITIVE_INT, "checkpoint_every_steps": _POSITIVE_INT,
    "max_steps": _COUNT, "num_devices": registry.integer(0, note="0: every device"), "seed": _SEED,
    "early_stop_patience": registry.integer(0, note="0: off"), "patience": _POSITIVE_INT,
    "factor": registry.number(0.0, 1.0, open_low=True, note="1: off"),
    "min_scale": registry.number(0.0, 1.0, open_low=True),
    "select_mode": registry.one_of("max", "min"),
    "select_metric": registry.one_of(*dict.fromkeys(m for ms in SELECT_METRICS.values() for m in ms)),
    "compute_dtype": registry.one_of("float32", "bfloat16"),
    # optimizer and schedule
    "optimizer": registry.one_of(*OPTIMIZERS), "schedule": registry.one_of(*SCHEDULES),
    "learning_rate": _POSITIVE, "b1": _DECAY, "b2": _DECAY, "momentum": _DECAY,
    "weight_decay": _NON_NEGATIVE, "grad_clip": registry.number(0.0, note="0: no clipping"),
    "warmup_epochs": _NON_NEGATIVE, "decay_start_epoch": _NON_NEGATIVE, "final_lr_ratio": _FRACTION,
    "ema_decay": registry.number(0.0, 1.0, open_high=True, note="0: off"),
    "adversarial_eps": registry.number(0.0, note="0: off"), "adversarial_steps": _POSITIVE_INT,
    "adversarial_warmup_epochs": _NON_NEGATIVE,
    # model, loss and augmentation
    "dropout": _DECAY, "width": registry.number(0.0, 4.0, open_low=True),
    "widths": _positive_ints(), "image_size": registry.integer(32, note="pixels"),
    "num_classes": registry.integer(len(EMOTIONS), len(EMOTIONS), note="the FER2013 expression classes"),
    "label_smoothing": _DECAY, "temperature": _POSITIVE, "weight": _FRACTION,
    "teacher_weights": registry.Check(_weights_list, "comma-separated finite numbers >= 0 ('': equal)"),
    "tta": registry.one_of(*TTA), "crop_pad": registry.integer(0, 24, note="pixels"),
    "rotate_deg": registry.number(0.0, 180.0), "jitter": _FRACTION,
    "class_weighting": registry.one_of("none", "balanced"),
    "logit_adjustment": registry.one_of("none", "select"),
    "training_twins": registry.one_of("keep", "drop", "only"),
    "split": registry.one_of("train", "validation", "test"),
    "export_to": registry.Check(lambda v: v == "" or (str(v).endswith(WEIGHTS_SUFFIX) and len(str(v)) > len(WEIGHTS_SUFFIX)),
                                f"'' (no export) or a file name ending in {WEIGHTS_SUFFIX} (its model card "
                                f"is written beside it with .json)"),
    # GANs
    "base": _POSITIVE_INT, "blocks": registry.integer(0), "layers": _POSITIVE_INT,
    "norm": registry.one_of("batch", "instance"), "upsample": registry.one_of("transpose", "resize"),
    "pool_size": registry.integer(0, note="0: no image pool"), "lambda_class": _NON_NEGATIVE,
    "lambda_cycle": _NON_NEGATIVE, "lambda_identity": _NON_NEGATIVE, "class_guide_margin": _NON_NEGATIVE,
    "class_guide_min_cycle_ssim": registry.number(0.0, 1.0, note="0: no gate"),
    "class_guide_warmup_epochs": _NON_NEGATIVE, "diff_augment": _names_in(DIFF_AUGMENTS),
    "num_images": _POSITIVE_INT, "kid_subset_size": _POSITIVE_INT, "kid_subsets": _POSITIVE_INT,
    "source_detail_sigma": _NON_NEGATIVE,
    # data, studies, curation
    "limit_per_split": _COUNT, "target_count": registry.integer(0, note="0: the median class size"),
    "balance_seed": _SEED, "seeds": _POSITIVE_INT, "bootstrap": _POSITIVE_INT,
    "folds": registry.Check(lambda v: isinstance(v, int) and not isinstance(v, bool) and (v == 0 or v >= 2),
                            "0 (no relabeling) or an integer >= 2"),
    "selection_fraction": registry.number(0.0, 0.5, open_low=True, open_high=True), "min_prob": _FRACTION,
    # the paper's protocol (reproduce_paper; evaluate --config.protocol=paper)
    "protocol": registry.one_of(*PROTOCOLS), "test_fraction": registry.number(0.0, 1.0, open_low=True, open_high=True),
    "seeds_b_c": _POSITIVE_INT, "rows": _names_in(DECOMPOSITION_ROWS, empty_ok=False),
    "paper_row": registry.one_of(*DECOMPOSITION_ROWS[:-1]),
    # realtime
    "max_faces": _POSITIVE_INT, "max_frames": _COUNT, "warmup_frames": _COUNT, "reconnects": _COUNT,
    "rescan_every": registry.integer(1, note="frames between full-width scans of detect_width 'auto'"),
    "num_threads": registry.integer(0, note="0: all cores"), "margin": _FRACTION,
    "smoothing_alpha": registry.number(0.0, 1.0, open_low=True), "smoothing_iou": _FRACTION,
    "input_size": _positive_ints(2),
    "display": registry.one_of("auto", "yes", "no"),
    "backend": registry.one_of("auto", "jax", "onnxruntime"),
    "video_out": registry.Check(lambda v: v == "" or str(v).lower().endswith(VIDEO_SUFFIXES),
                                f"'' (no video) or a file name ending in {' or '.join(VIDEO_SUFFIXES)}"),
    "buckets": _positive_ints(),
}


class ConfigError(ValueError):
    """A bad experiment name, override or component reference."""


def experiment_names() -> list[str]:
    import ferjax.experiments as pkg

    names = {m.name for m in pkgutil.iter_modules(pkg.__path__)
             if not m.name.startswith("_") and m.name not in SHARED_CONFIG_MODULES}
    names |= {ep.name for ep in metadata.entry_points(group=EXPERIMENT_GROUP)}
    return sorted(names)


def _experiment_module(name: str):
    for ep in metadata.entry_points(group=EXPERIMENT_GROUP):
        if ep.name == name:
            return ep.load()
    if name in experiment_names():
        return importlib.import_module(f"ferjax.experiments.{name}")
    close = difflib.get_close_matches(name, experiment_names(), n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ConfigError(f"unknown experiment {name!r}.{hint} Available: {', '.join(experiment_names())}")


def variants(name: str) -> tuple[str, ...]:
    """The variants experiment `name` declares (its module-level `VARIANTS`)."""
    return tuple(getattr(_experiment_module(name), "VARIANTS", ()))


def load_experiment(spec: str) -> ml_collections.ConfigDict:
    """Config of `NAME` or `NAME:variant` (a declared variant)."""
    name, _, variant = spec.partition(":")
    module = _experiment_module(name)
    declared = variants(name)
    if variant and variant not in declared:
        close = difflib.get_close_matches(variant, declared, n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown variant {variant!r} of experiment {name!r}.{hint} "
                          f"Variants: {', '.join(declared) or '(none)'}")
    try:
        config = module.get_config(variant or None)
    except ValueError as e:
        raise ConfigError(f"experiment {spec!r}: {e}") from None
    return config


def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in config.items():
        path = f"{prefix}{k}"
        keys.extend(flat_keys(v, path + ".") if isinstance(v, ml_collections.ConfigDict) else [path])
    return keys


def _parse_value(raw: str, current: Any, key: str) -> Any:
    try:
        if isinstance(current, bool):
            low = raw.strip().lower()
            if low in ("true", "1", "yes"):
                return True
            if low in ("false", "0", "no"):
                return False
            raise ValueError("expected true or false")
        if isinstance(current, int):
            return int(raw)
        if isinstance(current, float):
            return float(raw)
        if isinstance(current, (tuple, list)):
            value = ast.literal_eval(raw)
            if not isinstance(value, (tuple, list)):
                value = (value,)
            return type(current)(value)
        if isinstance(current, str) or current is None:
            return raw
    except (ValueError, SyntaxError) as e:
        raise ConfigError(f"override --config.{key}={raw!r}: expected {type(current).__name__} "
                          f"(current value {current!r}): {e}") from None
    raise ConfigError(f"override --config.{key}: cannot set a field of type {type(current).__name__}")


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str]) -> None:
    """Applies `a.b=value` strings, typed by the current value; unknown keys list close matches."""
    known = flat_keys(config)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override --config.{item}: expected --config.KEY=VALUE")
        if key not in known:
            close = difflib.get_close_matches(key, known, n=5, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown config key {key!r}.{hint}")
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = _parse_value(raw, node[leaf], key)


def _component_registry(key: str) -> tuple[registry.Registry | None, bool]:
    """(registry, plural) for a field named like a component kind (`detector`, `detectors`)."""
    if key in COMPONENT_KEYS:
        return COMPONENT_KEYS[key], False
    if key in NAME_LIST_KEYS:
        return NAME_LIST_KEYS[key], True
    if key.endswith("_loss"):  # role-named losses: cycle_loss, identity_loss, ...
        return registry.LOSSES, False
    if key.endswith("s") and key[:-1] in COMPONENT_KEYS:
        return COMPONENT_KEYS[key[:-1]], True
    return None, False


def _names(value: Any) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(n).strip() for n in items if str(n).strip()]


def _check_args(reg: registry.Registry, name: str, kwargs: dict, prefix: str) -> None:
    try:
        reg.check_args(name, kwargs)
    except registry.RegistryError as e:
        raise ConfigError(f"config.{prefix}{e}") from None


def validate(config: ml_collections.ConfigDict, prefix: str = "") -> None:
    """Checks component names, their arguments and `FIELD_RULES` (see the module docstring)."""
    for key, value in config.items():
        path = f"{prefix}{key}"
        rule = FIELD_RULES.get(key)
        if rule is not None and not rule(value):
            raise ConfigError(f"config.{path}={value!r}: expected {rule.expected}")
        reg, plural = _component_registry(key)
        if isinstance(value, ml_collections.ConfigDict):
            owner = key.removesuffix("_kwargs")
            args_reg, _ = _component_registry(key.removesuffix("_args"))
            if key.endswith("_kwargs") and owner in COMPONENT_KEYS and config.get(owner):
                _validate_names(COMPONENT_KEYS[owner], [config[owner]], f"{prefix}{owner}")
                _check_args(COMPONENT_KEYS[owner], config[owner], value.to_dict(), path + ".")
            elif key.endswith("_args") and args_reg is not None:
                _validate_names(args_reg, list(value.keys()), path)
                for name, kwargs in value.items():
                    _check_args(args_reg, name, dict(kwargs or {}), f"{path}.{name}.")
            validate(value, path + ".")
        elif reg is not None and value:
            names = _names(value) if plural else [value] if isinstance(value, str) else None
            if names is None:
                raise ConfigError(f"config.{path}={value!r}: expected the name of a registered {reg.kind}")
            _validate_names(reg, names, path)
            for name in names:  # siblings named like the factory's parameters (`protocol`)
                params = reg.accepted(name) or set()
                _check_args(reg, name, {k: config[k] for k in params if k in config and k != key}, prefix)


def _is_numeric(value: Any) -> bool:
    """An int or float (not a bool), or a non-empty sequence of them: a field that needs bounds."""
    if isinstance(value, (tuple, list)):
        return len(value) > 0 and all(_is_numeric(v) for v in value)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def unbounded_fields(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Paths of numeric fields with no bound: neither a `FIELD_RULES` entry nor a check declared
    by the component whose arguments they are (`X_kwargs` beside `X`, `X_args.NAME`)."""
    out = []

    def walk(node: ml_collections.ConfigDict, path: str, declared: dict) -> None:
        for key, value in node.items():
            here = f"{path}{key}"
            if isinstance(value, ml_collections.ConfigDict):
                owner = key.removesuffix("_kwargs")
                args_reg, _ = _component_registry(key.removesuffix("_args"))
                if key.endswith("_kwargs") and owner in COMPONENT_KEYS and node.get(owner):
                    walk(value, here + ".", COMPONENT_KEYS[owner].declared_checks(node[owner]))
                elif key.endswith("_args") and args_reg is not None:
                    for name, kwargs in value.items():
                        walk(kwargs, f"{here}.{name}.", args_reg.declared_checks(name))
                else:
                    walk(value, here + ".", {})
            elif _is_numeric(value) and key not in FIELD_RULES and key not in declared:
                out.append(here)

    walk(config, prefix, {})
    return out


def check_combinations(config: ml_collections.ConfigDict) -> None:
    """Checks that join several fields: the selection metric is one the task's validation
    reports, and `distill.teacher_weights` has one weight per teacher."""
    train = config.get("train")
    metric = train.get("select_metric") if isinstance(train, ml_collections.ConfigDict) else None
    metrics = SELECT_METRICS.get(config.get("task"))
    if metric is not None and metrics is not None:
        gan = config.get("gan") or {}
        present = {"guide_target_rate": bool(gan.get("class_guide")) and gan.get("lambda_class", 0.0) > 0,
                   "judge_target_rate": bool((config.get("quality") or {}).get("model"))}
        available = [m for m in metrics if present.get(m, True)]
        if metric not in available:
            raise ConfigError(f"config.train.select_metric={metric!r}: task {config.task!r} reports "
                              f"{', '.join(available)} on validation; expected one of those")
    if config.get("protocol") == "paper" and "paper_run" in config and not config.paper_run:
        raise ConfigError("config.paper_run is empty: protocol 'paper' scores the 20% test part of a "
                          "reproduce_paper run; set --config.paper_run=RUN_DIR (its --workdir)")
    distill = config.get("distill")
    if isinstance(distill, ml_collections.ConfigDict) and "teachers" in distill:
        teachers = _names(distill.teachers)
        weights = _names(distill.get("teacher_weights", ""))
        if weights and (len(weights) != len(teachers) or sum(float(w) for w in weights) <= 0):
            raise ConfigError(f"config.distill.teacher_weights={distill.teacher_weights!r}: expected "
                              f"{len(teachers)} weights >= 0 (one per teacher in {teachers}), not all zero")


def _validate_names(reg: registry.Registry, names: list[str], path: str) -> None:
    for name in names:
        try:
            reg.get(name)
        except registry.RegistryError as e:
            raise ConfigError(f"config.{path}: {e}") from None


def invoked_command() -> str:
    """The `python -m ferjax.run ...` line that is running (with `FER2013_PATH=...` in front when
    that variable is set), for manifests and model cards."""
    if not (sys.argv and Path(sys.argv[0]).name in ("run.py", "ferjax")):
        return "(called from Python: " + shlex.join(sys.argv) + ")"
    env = f"FER2013_PATH={shlex.quote(os.environ['FER2013_PATH'])} " if os.environ.get("FER2013_PATH") else ""
    return env + shlex.join(["python", "-m", "ferjax.run", *sys.argv[1:]])


def build(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """Loads, overrides, validates and locks an experiment config."""
    config = load_experiment(spec)
    apply_overrides(config, overrides)
    if "task" not in config:
        raise ConfigError(f"experiment {spec!r} has no `task` field")
    validate(config)
    check_combinations(config)
    config.lock()
    return config


# ---- comparing configs (resume checks, studies) --------------------------------------------------
def flat_config(config: ml_collections.ConfigDict, prefix: str = "") -> dict:
    """{"a.b": value} for every leaf, JSON-normalised (tuples become lists), for `run_config`."""
    flat = {}
    for k, v in config.items():
        if isinstance(v, ml_collections.ConfigDict):
            flat.update(flat_config(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return json.loads(json.dumps(flat, default=str))


def changed_fields(saved: dict, current: dict, ignore: tuple[str, ...] = (),
                   defaults: dict | None = None) -> list[str]:
    """Sorted flat keys whose values differ between two `flat_config`s, `ignore`d keys aside;
    with `defaults` (a `flat_config`), a key only `current` has does not count while it holds its
    default (an option added after `saved` was written: new options default to the earlier
    behaviour)."""
    keys = set(saved) | set(current)
    defaults = defaults or {}
    return sorted(k for k in keys if k not in ignore and saved.get(k) != current.get(k)
                  and (k in saved or k not in defaults or current.get(k) != defaults[k]))


def recipe_defaults(name: str | None) -> dict | None:
    """`flat_config` of experiment `name` (NAME or NAME:variant) as declared, without overrides;
    None when `name` is not a registered experiment (a config built in code)."""
    try:
        return flat_config(load_experiment(name)) if name else None
    except ValueError:  # ConfigError included
        return None
