"""Experiment lookup, `--config.a.b=value` overrides, and validation against the registries.

An experiment is a module with `get_config(variant) -> ml_collections.ConfigDict`, found in
`ferjax.experiments` or through the `ferjax.experiments` entry-point group. `NAME:variant` picks
a variant. Everything is checked before any work starts.
"""
from __future__ import annotations

import ast
import difflib
import importlib
import pkgutil
from importlib import metadata
from typing import Any, Iterable

import ml_collections

from ferjax import registry

EXPERIMENT_GROUP = "ferjax.experiments"
# Config keys whose values must name a registered component of the given kind.
COMPONENT_KEYS = {
    "classifier": registry.CLASSIFIERS, "generator": registry.GENERATORS,
    "discriminator": registry.DISCRIMINATORS, "loss": registry.LOSSES,
    "detector": registry.DETECTORS, "dataset": registry.DATASETS, "task": registry.TASKS,
    "pretrained": registry.PRETRAINED, "model": registry.PRETRAINED,
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


def load_experiment(spec: str) -> ml_collections.ConfigDict:
    """Config of `NAME` or `NAME:variant`."""
    name, _, variant = spec.partition(":")
    module = _experiment_module(name)
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


def validate_components(config: ml_collections.ConfigDict, prefix: str = "") -> None:
    """Every field named like a component kind must name a registered component."""
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            validate_components(value, f"{prefix}{key}.")
        elif key in COMPONENT_KEYS and isinstance(value, str) and value:
            try:
                COMPONENT_KEYS[key].get(value)
            except registry.RegistryError as e:
                raise ConfigError(f"config.{prefix}{key}: {e}") from None


def build(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """Loads, overrides and validates an experiment config."""
    config = load_experiment(spec)
    apply_overrides(config, overrides)
    if "task" not in config:
        raise ConfigError(f"experiment {spec!r} has no `task` field")
    validate_components(config)
    return config
