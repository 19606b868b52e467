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
import os
import pkgutil
import shlex
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

import ml_collections

from ferjax import registry

EXPERIMENT_GROUP = "ferjax.experiments"
# Config keys whose values must name a registered component of the given kind.
COMPONENT_KEYS = {
    "classifier": registry.CLASSIFIERS, "generator": registry.GENERATORS,
    "discriminator": registry.DISCRIMINATORS, "loss": registry.LOSSES,
    "detector": registry.DETECTORS, "dataset": registry.DATASETS, "task": registry.TASKS,
    "pretrained": registry.PRETRAINED, "model": registry.PRETRAINED, "init_from": registry.PRETRAINED,
    "curation_signal": registry.CURATION_SIGNALS,
}


_POSITIVE_INT = registry.Check(lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
                               "an integer > 0")
_COUNT = registry.Check(lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                        "an integer >= 0 (0: no limit)")
VIDEO_SUFFIXES = (".mp4", ".avi")  # the containers ferjax's OpenCV writer encodes (mp4v, MJPG)
# Bounds and choices by field name, wherever the field sits in an experiment config.
FIELD_RULES: dict[str, registry.Check] = {
    "batch_size": _POSITIVE_INT, "eval_batch_size": _POSITIVE_INT, "epochs": _POSITIVE_INT,
    "log_every_steps": _POSITIVE_INT, "checkpoint_every_steps": _POSITIVE_INT,
    "max_faces": _POSITIVE_INT, "max_steps": _COUNT, "max_frames": _COUNT, "warmup_frames": _COUNT,
    "reconnects": _COUNT, "limit_per_split": _COUNT, "num_devices": _COUNT,
    "learning_rate": registry.greater(0.0), "select_mode": registry.one_of("max", "min"),
    "display": registry.one_of("auto", "yes", "no"),
    "compute_dtype": registry.one_of("float32", "bfloat16"),
    "class_weighting": registry.one_of("none", "balanced"),
    "logit_adjustment": registry.one_of("none", "select"),
    "training_twins": registry.one_of("keep", "drop", "only"),
    "adversarial_eps": registry.Check(lambda v: isinstance(v, float) and v >= 0.0, "a float >= 0 (0: off)"),
    "adversarial_steps": _POSITIVE_INT,
    "adversarial_warmup_epochs": registry.Check(lambda v: isinstance(v, float) and v >= 0.0, "a float >= 0"),
    "ema_decay": registry.Check(lambda v: isinstance(v, float) and 0.0 <= v < 1.0, "a float in [0, 1)"),
    "video_out": registry.Check(lambda v: v == "" or str(v).lower().endswith(VIDEO_SUFFIXES),
                                f"'' (no video) or a file name ending in {' or '.join(VIDEO_SUFFIXES)}"),
    "buckets": registry.Check(lambda v: len(v) > 0 and all(_POSITIVE_INT(b) for b in v),
                              "a non-empty sequence of integers > 0"),
}


class ConfigError(ValueError):
    """A bad experiment name, override or component reference."""


def experiment_names() -> list[str]:
    import ferjax.experiments as pkg

    names = {m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_")}
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
    config.lock()
    return config
