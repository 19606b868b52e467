"""Named component registries (one per kind) with decorator registration and entry-point plugins.

A registry maps a name to a factory (class or function). Built-in components live in the
top-level ``registry/`` folder (installed as ``ferjax.components``); third-party packages add
theirs through the ``ferjax.plugins`` entry-point group, whose targets are imported on first use.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import math
import numbers
from importlib import metadata
from typing import Any, Callable, Iterator, Mapping, NamedTuple, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
PLUGIN_GROUP = "ferjax.plugins"
BUILTIN_MODULES = (
    "ferjax.components.classifiers",
    "ferjax.components.generators",
    "ferjax.components.discriminators",
    "ferjax.components.losses",
    "ferjax.components.detectors",
    "ferjax.components.datasets",
    "ferjax.components.tasks",
    "ferjax.components.pretrained",
    "ferjax.components.curation_signals",
    "ferjax.components.pretrained_generators",
)
_log = logging.getLogger(__name__)
_state = "unloaded"  # "loading" while the component modules import, then "loaded"
_load_error: str | None = None  # set once a component import failed; every lookup re-raises it


class RegistryError(KeyError):
    """Raised for duplicate or unknown component names."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0])


class ComponentLoadError(RegistryError):
    """A built-in component module or a plugin failed to import; no component is available."""


class Check(NamedTuple):
    """A bound or choice for one value: `ok(value)` is True when it is valid."""

    ok: Callable[[Any], bool]
    expected: str

    def __call__(self, value: Any) -> bool:
        try:
            return bool(self.ok(value))
        except (TypeError, ValueError):
            return False


def one_of(*choices: Any) -> Check:
    return Check(lambda v: v in choices, f"one of {', '.join(map(repr, choices))}")


def _real(v: Any) -> bool:
    """A finite real number (not a bool; numpy scalars too): NaN and infinities satisfy no bound."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def greater(bound: float) -> Check:
    return Check(lambda v: _real(v) and v > bound, f"a number > {bound}")


def at_least(bound: float) -> Check:
    return Check(lambda v: _real(v) and v >= bound, f"a number >= {bound}")


def between(low: float, high: float) -> Check:
    return Check(lambda v: _real(v) and low <= v <= high, f"a number in [{low}, {high}]")


def number(low: float, high: float = math.inf, *, open_low: bool = False, open_high: bool = False,
           note: str = "") -> Check:
    """A finite int or float in the interval from `low` to `high` (`open_*`: that end excluded)."""
    def ok(v: Any) -> bool:
        return (_real(v) and (v > low if open_low else v >= low)
                and (v < high if open_high else v <= high))

    if high == math.inf:
        what = f"a finite number {'>' if open_low else '>='} {low}"
    else:
        what = f"a number in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
    return Check(ok, what + (f" ({note})" if note else ""))


def integer(low: int, high: int | None = None, note: str = "") -> Check:
    """An int (not a bool, not a float) in [low, high] (no upper end when `high` is None)."""
    what = ("an integer > 0" if (low, high) == (1, None) else f"an integer >= {low}" if high is None else f"the integer {low}" if high == low
            else f"an integer in [{low}, {high}]")
    return Check(lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= low
                 and (high is None or v <= high), what + (f" ({note})" if note else ""))


class Registry:
    """A mapping from names to factories for one kind of component."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}
        self._docs: dict[str, str] = {}
        self._checks: dict[str, dict[str, Check]] = {}

    def register(self, name: str | None = None, *, doc: str | None = None,
                 checks: Mapping[str, Check] | None = None) -> Callable[[F], F]:
        """Decorator registering a factory under ``name`` (default: the object's name).

        ``checks`` bound the factory's keyword arguments (``{"scale_factor": greater(1.0)}``);
        experiment configs are validated against them before any work starts.
        """

        def deco(obj: F) -> F:
            key = name or obj.__name__
            if key in self._entries:
                raise RegistryError(
                    f"{self.kind} {key!r} is already registered (by {_origin(self._entries[key])}); "
                    f"choose another name for {_origin(obj)}")
            self._entries[key] = obj
            lines = (obj.__doc__ or "").strip().splitlines()
            self._docs[key] = doc or (lines[0] if lines else "")
            self._checks[key] = dict(checks or {})
            return obj

        return deco

    def get(self, name: str) -> Callable[..., Any]:
        """Returns the factory named ``name``; unknown names raise with close matches."""
        load_components()
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=5, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise RegistryError(
                f"unknown {self.kind} {name!r}.{hint} Registered {self.kind}s: "
                f"{', '.join(sorted(self._entries)) or '(none)'}")
        return self._entries[name]

    def create(self, name: str, **kwargs: Any) -> Any:
        """Calls the factory named ``name`` with ``kwargs``."""
        return self.get(name)(**kwargs)

    def check_args(self, name: str, kwargs: Mapping[str, Any]) -> None:
        """Raises RegistryError naming the first argument outside the bounds ``name`` declared."""
        self.get(name)
        for arg, check in self._checks.get(name, {}).items():
            if arg in kwargs and not check(kwargs[arg]):
                raise RegistryError(f"{arg}={kwargs[arg]!r}: {self.kind} {name!r} expects {check.expected}")

    def declared_checks(self, name: str) -> dict[str, Check]:
        """The bounds `name` declared for its keyword arguments when registered."""
        self.get(name)
        return dict(self._checks.get(name, {}))

    def accepted(self, name: str) -> set[str] | None:
        """Keyword names the factory ``name`` accepts; None when it takes ``**kwargs``."""
        params = inspect.signature(self.get(name)).parameters.values()
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return None
        return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

    def create_accepting(self, name: str, kwargs: Mapping[str, Any]) -> Any:
        """Calls the factory with the entries of ``kwargs`` it accepts, so a minimal plugin
        (``my_net(num_classes=7)``) works under an experiment that configures more; the
        others are logged and left out."""
        accepted = self.accepted(name)
        kwargs = dict(kwargs)
        if accepted is not None:
            dropped = sorted(set(kwargs) - accepted)
            if dropped:
                _log.warning("%s %r takes no %s; not passed", self.kind, name, ", ".join(dropped))
            kwargs = {k: v for k, v in kwargs.items() if k in accepted}
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        load_components()
        return sorted(self._entries)

    def describe(self, name: str) -> str:
        load_components()
        return self._docs.get(name, "")

    def __contains__(self, name: str) -> bool:
        load_components()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


CLASSIFIERS = Registry("classifier")
GENERATORS = Registry("generator")
DISCRIMINATORS = Registry("discriminator")
LOSSES = Registry("loss")
DETECTORS = Registry("detector")
DATASETS = Registry("dataset")
TASKS = Registry("task")
PRETRAINED = Registry("pretrained model")
CURATION_SIGNALS = Registry("curation signal")
# Trained image-to-image generators by name: each entry returns the folder of a generator export
# (ferjax.train.generator_export), apart from the classifiers in PRETRAINED.
PRETRAINED_GENERATORS = Registry("pretrained generator")
ALL = {r.kind: r for r in (CLASSIFIERS, GENERATORS, DISCRIMINATORS, LOSSES, DETECTORS,
                            DATASETS, TASKS, PRETRAINED, CURATION_SIGNALS, PRETRAINED_GENERATORS)}


def _origin(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def load_components() -> None:
    """Imports the built-in component modules and every ``ferjax.plugins`` entry point: all or nothing.

    A failing import removes whatever it had registered and makes every later lookup raise a
    `ComponentLoadError` naming the module or plugin and the original exception.
    """
    global _state, _load_error
    if _load_error is not None:
        raise ComponentLoadError(_load_error)
    if _state != "unloaded":
        return  # loaded, or a component module being imported looks something up
    _state = "loading"
    snapshot = {kind: (dict(reg._entries), dict(reg._docs), dict(reg._checks))
                for kind, reg in ALL.items()}
    what = ""
    try:
        for mod in BUILTIN_MODULES:
            what = f"built-in module {mod!r}"
            importlib.import_module(mod)
        for ep in metadata.entry_points(group=PLUGIN_GROUP):
            what = f"plugin {ep.name!r} (module {ep.value!r})"
            target = ep.load()
            if callable(target) and not isinstance(target, type):
                target()  # An entry point may name a `register()` function instead of a module.
            _log.info("loaded ferjax plugin %s", ep.name)
    except Exception as e:
        for kind, (entries, docs, checks) in snapshot.items():
            ALL[kind]._entries, ALL[kind]._docs, ALL[kind]._checks = entries, docs, checks
        _load_error = (f"ferjax components could not be loaded: {what} failed with "
                       f"{type(e).__name__}: {e}. Fix or uninstall it; nothing was registered.")
        _state = "unloaded"
        raise ComponentLoadError(_load_error) from e
    _state = "loaded"


def table() -> str:
    """A Markdown table of every registered component, kind by kind."""
    load_components()
    lines = ["| kind | name | description |", "| --- | --- | --- |"]
    for kind, reg in ALL.items():
        for n in reg.names():
            lines.append(f"| {kind} | `{n}` | {reg.describe(n)} |")
    return "\n".join(lines)
