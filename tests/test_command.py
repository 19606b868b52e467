"""The one `ferjax` command: every subcommand has --help, the older forms still work."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ferjax import command


def _ferjax(*args: str, module: str = "ferjax") -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_help_lists_every_subcommand(capsys):
    assert command.dispatch(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("run", "list", "analyze", "serve", "bench", "convert", "compact", "export", "doctor"):
        assert f"\n  {name} " in out
    assert command.dispatch([]) == 2  # no subcommand: the same text, and a usage error


@pytest.mark.parametrize("name", ["list", "analyze", "serve", "convert", "compact", "export", "doctor"])
def test_each_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        command.dispatch([name, "--help"])
    assert e.value.code == 0
    assert f"usage: ferjax {name}" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["run", "bench"])
def test_absl_subcommands_have_help_naming_their_flags(name):
    proc = _ferjax(name, "--help")
    assert proc.returncode == 0, proc.stderr
    assert f"usage: ferjax {name}" in proc.stdout
    assert ("--experiment" if name == "run" else "--classifiers") in proc.stdout


def test_unknown_subcommand_suggests_the_close_one(capsys):
    assert command.dispatch(["analyse"]) == 2
    assert "Did you mean: analyze?" in capsys.readouterr().err


def test_version(capsys):
    from ferjax import __version__

    assert command.dispatch(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ferjax {__version__}"


def test_run_takes_hyphens_and_the_old_forms_print_the_same_config():
    new = _ferjax("run", "--experiment=fer2013_vgg:cpu", "--print-config", "--config.train.epochs=3")
    old = _ferjax("--experiment=fer2013_vgg:cpu", "--print_config", "--config.train.epochs=3")
    alias = _ferjax("--experiment=fer2013_vgg:cpu", "--print_config", "--config.train.epochs=3", module="ferjax.run")
    assert new.returncode == old.returncode == alias.returncode == 0, (new.stderr, old.stderr, alias.stderr)
    assert new.stdout == old.stdout == alias.stdout and "epochs: 3" in new.stdout


def test_hyphenated_absl_names_become_underscored_but_overrides_do_not():
    assert command.underscored(["--print-config", "--cpu-devices=2", "--config.train.batch_size=8", "x-y"]) == [
        "--print_config", "--cpu_devices=2", "--config.train.batch_size=8", "x-y"]
