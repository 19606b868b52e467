"""`ferjax`: one command with subcommands; each `ferjax SUB --help` says what it does and lists its flags.

    ferjax run --experiment=NAME[:variant] [--config.a.b=VALUE ...] [--workdir=DIR]
    ferjax list | analyze | serve | bench | convert | compact | export | export-web | doctor [...]

The older forms keep working: `ferjax --experiment=...` (= `ferjax run`), and every
`python -m ferjax.X` the documentation used (`ferjax.run`, `ferjax.serve`, `ferjax.bench`,
`ferjax.convert`, `ferjax.data.compact`, ...). Every subcommand takes hyphenated long options;
`ferjax run` and `ferjax bench` also take their flags with underscores, as before.
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Callable, NamedTuple, Sequence


class Subcommand(NamedTuple):
    module: str
    function: str
    help: str
    absl: bool = False  # absl flags (underscored names): hyphenated spellings are translated


SUBCOMMANDS: dict[str, Subcommand] = {
    "run": Subcommand("ferjax.run", "main_argv", "run an experiment: train, evaluate, curate, balance, "
                      "the CycleGAN, real time (--experiment=NAME[:variant] --config.a.b=V)", absl=True),
    "list": Subcommand("ferjax.run", "list_main", "list the experiments and every registered component"),
    "analyze": Subcommand("ferjax.cli", "main", "expressions in photos, folders and videos, as JSON lines"),
    "serve": Subcommand("ferjax.serve", "main", "the HTTP service and its live web page"),
    "bench": Subcommand("ferjax.bench", "main_argv", "jit throughput of classifiers and train steps "
                        "(beside PyTorch when it is installed)", absl=True),
    "convert": Subcommand("ferjax.convert.__main__", "main", "convert published weights (VGG-Face: "
                          "Keras, Caffe, PyTorch) to a ferjax model"),
    "compact": Subcommand("ferjax.data.compact.cli", "main", "write FER2013 as one compact file, or check one"),
    "export": Subcommand("ferjax.export", "main", "a pretrained classifier as one ONNX file (--int8: "
                         "quantised) with its model card (needs the onnx extra)"),
    "export-web": Subcommand("ferjax.export_web", "main", "the client-side web page (detection and "
                             "expressions in the browser) as a static folder"),
    "doctor": Subcommand("ferjax.doctor", "main", "what this machine gives ferjax: model files, OpenCV "
                         "(CUDA), JAX devices, each detector on a frame"),
}


def usage() -> str:
    from ferjax import __version__  # noqa: PLC0415

    width = max(map(len, SUBCOMMANDS))
    lines = [f"ferjax {__version__}: facial expression recognition with JAX/Flax", "",
             "usage: ferjax SUBCOMMAND [options]    (ferjax SUBCOMMAND --help for its options)", "",
             "subcommands:"]
    lines += [f"  {name:<{width}}  {sub.help}" for name, sub in SUBCOMMANDS.items()]
    lines += ["", "  --version     print the version", "  --experiment=NAME ...  the same as `ferjax run`"]
    return "\n".join(lines)


def underscored(argv: Sequence[str]) -> list[str]:
    """absl flag names use underscores: `--print-config` -> `--print_config` (values and
    `--config.a.b=` overrides untouched)."""
    out = []
    for arg in argv:
        if arg.startswith("--") and not arg.startswith("--config."):
            name, sep, value = arg[2:].partition("=")
            arg = "--" + name.replace("-", "_") + sep + value
        out.append(arg)
    return out


def dispatch(argv: Sequence[str]) -> int:
    """Runs `ferjax ARGV` and returns its exit status."""
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from ferjax import __version__  # noqa: PLC0415

        print(f"ferjax {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name.startswith("-"):  # `ferjax --experiment=...`, `ferjax --list`: the run command's flags
        name, rest = "run", argv
    sub = SUBCOMMANDS.get(name)
    if sub is None:
        import difflib  # noqa: PLC0415

        close = difflib.get_close_matches(name, SUBCOMMANDS, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        print(f"ferjax: unknown subcommand {name!r}.{hint}\n\n{usage()}", file=sys.stderr)
        return 2
    fn: Callable[[list[str]], int | None] = getattr(importlib.import_module(sub.module), sub.function)
    return int(fn(underscored(rest) if sub.absl else rest) or 0)


def main() -> None:
    """The `ferjax` console script."""
    try:
        code = dispatch(sys.argv[1:])
    except BrokenPipeError:  # `ferjax list | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
