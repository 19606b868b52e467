"""Command-line entry point.

    ferjax run --experiment=NAME[:variant] [--config.a.b=value ...] [--workdir=DIR]
    ferjax list                        (or --list)
    python -m ferjax.run ...           (the same command)

The other subcommands (analyze, serve, bench, ...) are listed by `ferjax --help` (ferjax.command).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from absl import app, flags, logging

from ferjax.jax_setup import CACHE_ENV, DEFAULT_JAX_CACHE, enable_jax_cache, split_host_cpu

flags.DEFINE_string("experiment", None, "Experiment NAME or NAME:variant (see --list).")
flags.DEFINE_string("workdir", None, "Output folder (default runs/NAME/VARIANT).")
flags.DEFINE_integer("cpu_devices", 0,
                     "Split the host CPU into this many XLA devices for data-parallel steps "
                     "(0: one per core; 1: one device). Ignored on GPUs and under --distributed.")
flags.DEFINE_bool("list", False, "List experiments and registered components, then exit.")
flags.DEFINE_bool("print_config", False, "Print the resolved config, then exit.")
flags.DEFINE_bool("distributed", False,
                  "Call jax.distributed.initialize() first (multi-host data parallelism; the "
                  "coordinator comes from the cluster environment or JAX_COORDINATOR_ADDRESS).")
flags.DEFINE_string("jax_cache_dir", DEFAULT_JAX_CACHE,
                    f"Persistent JAX compilation cache ('' disables; default ${CACHE_ENV}/jax).")
FLAGS = flags.FLAGS
_overrides: list[str] = []


def _split_overrides(argv: list[str]) -> list[str]:
    """Removes `--config.KEY=VALUE` items from argv (absl does not know them) and keeps them."""
    rest = []
    for arg in argv:
        if arg.startswith("--config."):
            _overrides.append(arg[len("--config."):])
        else:
            rest.append(arg)
    return rest


def listing() -> str:
    from ferjax import config, registry

    lines = ["## Experiments", "", "| experiment | variants | description |", "| --- | --- | --- |"]
    for name in config.experiment_names():
        doc = (config._experiment_module(name).__doc__ or "").strip().splitlines()
        variants = ", ".join(f"`{v}`" for v in config.variants(name))
        lines.append(f"| `{name}` | {variants} | {doc[0] if doc else ''} |")
    lines += ["", "## Registered components", "", registry.table()]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from ferjax import config as cfg_lib
    from ferjax import registry

    if FLAGS.list:
        print(listing())
        return 0
    if not FLAGS.experiment:
        raise app.UsageError("--experiment is required (see --list)")
    try:
        config = cfg_lib.build(FLAGS.experiment, _overrides)
    except (cfg_lib.ConfigError, registry.RegistryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if FLAGS.print_config:
        print(config)
        return 0
    if not FLAGS.distributed:
        split_host_cpu(FLAGS.cpu_devices or None)
    import jax

    if FLAGS.distributed:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU hosts; GPUs use NCCL
        jax.distributed.initialize()
    enable_jax_cache(FLAGS.jax_cache_dir)
    name, _, variant = FLAGS.experiment.partition(":")
    workdir = FLAGS.workdir or str(Path("runs") / name / (variant or "default"))
    from ferjax.train.loop import Interrupted, NonFinite

    try:
        summary = registry.TASKS.get(config.task)(config, workdir)
    except Interrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        return 3
    except NonFinite as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary, default=str))
    return 1 if isinstance(summary, dict) and summary.get("error") else 0


def main_argv(argv: list[str]) -> int:
    """`ferjax run ARGV`: the absl command above, returning its exit status."""
    if {"-h", "--help", "--helpshort"} & set(argv):
        print(f"usage: ferjax run --experiment=NAME[:variant] [--config.a.b=VALUE ...] [--workdir=DIR]\n\n"
              f"{__doc__.strip()}\n\nflags:\n{FLAGS.module_help(sys.modules[__name__])}")
        return 0
    logging.set_verbosity(logging.WARNING)
    try:
        app.run(main, argv=["ferjax run", *argv], flags_parser=lambda a: FLAGS(_split_overrides(a)))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def list_main(argv: list[str]) -> int:
    """`ferjax list`: the experiments and registered components, as Markdown tables."""
    import argparse  # noqa: PLC0415

    argparse.ArgumentParser(prog="ferjax list", description=list_main.__doc__.split(":", 1)[1].strip()).parse_args(argv)
    print(listing())
    return 0


def entry() -> None:
    """`python -m ferjax.run ...` (and the `ferjax` command's `run`); `python -m ferjax.run analyze
    PATH...`, the older spelling of `ferjax analyze`, still runs the photo/video command."""
    if sys.argv[1:2] == ["analyze"]:
        from ferjax import cli  # noqa: PLC0415

        sys.exit(cli.main(sys.argv[2:]))
    sys.exit(main_argv(sys.argv[1:]))


if __name__ == "__main__":
    entry()
