"""README.md stays true: every shell command in its code blocks is one the project accepts, and every
figure in its results tables stands on the page its row links.

Commands are checked without the data CI may lack: each `ferjax run` / `python -m ferjax.run` with
`--print_config` (the config builds and passes its checks), each other `ferjax` subcommand with
`--help`, all of them in one child process (one JAX start-up); `pip install` extras must exist,
`pytest` must be what `.ci/run` runs, `curl` must name a route of the service, `sphinx-build` must
build `docs/` with warnings as errors.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib

from conftest import REPO

sys.path.insert(0, str(REPO / "tools"))
import figures_lost  # noqa: E402

README = (REPO / "README.md").read_text(encoding="utf-8")
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
# The two fresh-machine commands, byte for byte: CI runs the second (.ci/run), users paste both.
MAIN_JOB = ("python3 -m venv .venv && . .venv/bin/activate && pip install -e . && "
            "FER2013_PATH=data/fer2013 python -m ferjax.run --experiment=cyclegan_neutral2disgust")
TESTS = ("python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]' && "
         "pytest -q -m 'not slow' -n 2 --dist loadfile")
ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")


def shell_lines(text: str) -> list[str]:
    """Every command line of the ```bash blocks (continuations joined, comments kept)."""
    lines, block = [], None
    for line in text.splitlines():
        if line.startswith("```"):
            block = line[3:].strip() if block is None else None
            continue
        if block in ("bash", "sh", "shell") and line.strip():
            if lines and lines[-1].endswith("\\"):
                lines[-1] = lines[-1][:-1] + " " + line.strip()
            else:
                lines.append(line.strip())
    return lines


def commands(line: str) -> list[list[str]]:
    """The simple commands of one line: comments dropped, split on `&&`, env assignments removed."""
    tokens = shlex.split(line, comments=True)
    out, current = [], []
    for tok in [*tokens, "&&"]:
        if tok == "&&":
            while current and ENV_ASSIGNMENT.match(current[0]):
                current.pop(0)
            if current:
                out.append(current)
            current = []
        else:
            current.append(tok)
    return out


def classify(cmd: list[str]) -> tuple[str, list[str]]:
    """('dispatch', argv for ferjax.command.dispatch) for what must run, or ('ok', []) once checked here."""
    head = cmd[0]
    if cmd[:3] == ["python3", "-m", "venv"] or head in (".", "source"):
        assert head not in (".", "source") or cmd[1] == ".venv/bin/activate", cmd
        return "ok", []
    if head == "pip":
        assert cmd[1:3] == ["install", "-e"], cmd
        spec = cmd[3]
        extras = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", spec)
        assert extras, f"unexpected install target {spec!r}"
        for extra in filter(None, (extras.group(1) or "").split(",")):
            assert extra in PYPROJECT["project"]["optional-dependencies"], f"no extra {extra!r}"
        return "ok", []
    if head == "pytest":
        markers = {m.split(":")[0] for m in PYPROJECT["tool"]["pytest"]["ini_options"]["markers"]}
        if "-m" in cmd:
            names = set(re.findall(r"\w+", cmd[cmd.index("-m") + 1])) - {"not", "and", "or"}
            assert names <= markers, f"undeclared markers {names - markers}"
        assert shlex.join(cmd) in (REPO / ".ci" / "run").read_text(), "CI does not run README's test command"
        return "ok", []
    if head == "curl":
        url = next(t for t in cmd if t.startswith("http"))
        path = re.sub(r"^https?://[^/]+", "", url).split("?")[0] or "/"
        routes = re.findall(r'@app\.(?:get|post|websocket)\("([^"]+)"\)', (REPO / "ferjax" / "serve.py").read_text())
        assert path in routes, f"the service has no route {path} (routes: {routes})"
        return "ok", []
    if head == "sphinx-build":
        assert "-W" in cmd and "docs" in cmd and (REPO / "docs" / "conf.py").is_file(), cmd
        return "ok", []
    if cmd[:3] == ["python", "-m", "ferjax.run"]:
        return "dispatch", ["run", *cmd[3:], *(["--print_config"] if "--print_config" not in cmd else [])]
    if head == "ferjax":
        if cmd[1] == "run" or cmd[1].startswith("--experiment"):
            rest = cmd[2:] if cmd[1] == "run" else cmd[1:]
            return "dispatch", ["run", *rest, *(["--print_config"] if "--print_config" not in rest else [])]
        if cmd[1] in ("list", "--version", "--help"):
            return "dispatch", cmd[1:]
        # needs photos, a port or data: run its --help, which must list every option the README uses
        return "dispatch", [cmd[1], "--help", *[t.split("=")[0] for t in cmd[2:] if t.startswith("--")]]
    if cmd[:2] == ["python", "-m"] and cmd[2].startswith("ferjax."):
        return "dispatch", ["python-m", cmd[2], "--help"]
    raise AssertionError(f"README shows a command the project does not provide: {' '.join(cmd)}")


CHILD = r"""
import contextlib, io, json, runpy, sys
import ferjax.run
from ferjax.command import dispatch

results = []
for full in json.loads(sys.argv[1]):
    argv = full[:full.index("--help") + 1] if "--help" in full else full  # after it: options to find
    out = io.StringIO()
    ferjax.run._overrides.clear()  # `--config.` overrides of the previous command
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            if argv[0] == "python-m":
                sys.argv = [argv[1], *argv[2:]]
                runpy.run_module(argv[1], run_name="__main__")
                code = 0
            else:
                code = dispatch(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    results.append({"argv": full, "code": code, "out": out.getvalue()[-20000:]})
print(json.dumps(results))
"""


def test_fresh_machine_commands_unchanged():
    assert MAIN_JOB in README.splitlines() and TESTS in README.splitlines()


def test_every_readme_command_is_accepted():
    to_run = []
    for line in shell_lines(README):
        for cmd in commands(line):
            kind, argv = classify(cmd)
            if kind == "dispatch" and argv not in to_run:
                to_run.append(argv)
    assert any(a[:2] == ["run", "--experiment=cyclegan_neutral2disgust"] for a in to_run), to_run
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(to_run)], capture_output=True,
                          text=True, env=env, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    failed = [r for r in results if r["code"] != 0]
    assert not failed, "\n\n".join(f"{' '.join(r['argv'])} -> {r['code']}\n{r['out']}" for r in failed)
    for r in results:
        if "--print_config" in r["argv"]:
            assert "task:" in r["out"], r  # a config was printed
        if "--help" in r["argv"]:
            for option in r["argv"][r["argv"].index("--help") + 1:]:
                assert option in r["out"], f"`ferjax {r['argv'][0]}` has no option {option}"


def results_rows() -> list[str]:
    section = README.split("\n## Results", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("|") and not re.match(r"^\|\s*-", line)]


def test_results_figures_stand_on_the_linked_pages():
    rows = [r for r in results_rows() if "](" in r]
    assert len(rows) >= 10, "README's results tables lost their rows"
    for row in rows:
        pages = {REPO / target for target in re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", row)}
        assert pages, f"row links no page of this repository: {row}"
        text = "\n".join(p.read_text(encoding="utf-8") for p in pages)
        bare = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", row)
        for _, figure in figures_lost.numbers(bare):
            assert figures_lost.present(figure, text), f"{figure} of README's row is not on {sorted(map(str, pages))}"


def test_model_cards_give_each_shipped_weights_sha256():
    cards = (REPO / "docs" / "models.md").read_text(encoding="utf-8")
    for weights in sorted((REPO / "ferjax" / "pretrained").glob("*.msgpack")):
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()
        assert digest in cards, f"docs/models.md lacks the sha256 of {weights.name} ({digest})"
