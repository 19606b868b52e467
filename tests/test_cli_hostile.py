"""`ferjax analyze` given what careless users give it: outputs that would land on inputs, unwritable
or impossible outputs, out-of-range numbers, bad detector arguments, a reader that leaves the pipe.
Every usage error is one line and exit status 2 before any model loads. (Files no decoder can read
and a video with no decodable frame: tests/test_api_cli.py, in its one run of the command.)
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import MEDIA, require_files
from ferjax import analyzer as analyzer_module
from ferjax import cli

SHORT = MEDIA / "one_face_short.mp4"


@pytest.fixture
def no_models(monkeypatch):
    """Fails the test if the command gets as far as loading the models."""
    def refuse(*args, **kwargs):
        raise AssertionError("the models were loaded before the usage error was found")

    monkeypatch.setattr(analyzer_module, "Analyzer", refuse)


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.jpg", "b.png"):
        cv2.imwrite(str(folder / name), np.full((32, 48, 3), 120, np.uint8))
    (folder / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    return folder


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line_usage_error(capsys, rc: int, starts: str) -> str:
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ferjax analyze: {starts}"), err
    return lines[0]


# ---------------------------------------------------------------- item 7: outputs over inputs
def test_out_folder_of_the_inputs_is_refused(photos, no_models, capsys):
    """`ferjax analyze DIR --out DIR` overwrote the original photo and video (exit 0)."""
    before = _digests(photos)
    line = _one_line_usage_error(capsys, cli.main([str(photos), "--out", str(photos)]), "--out ")
    assert "holds the input" in line and "choose a folder that holds none of them" in line
    assert _digests(photos) == before


def test_out_folder_reached_through_a_symlink_is_refused(photos, tmp_path, no_models, capsys):
    link = tmp_path / "annotated"
    link.symlink_to(photos, target_is_directory=True)
    before = _digests(photos)
    _one_line_usage_error(capsys, cli.main([str(photos / "a.jpg"), "--out", str(link)]), "--out ")
    assert _digests(photos) == before


def test_input_symlink_whose_file_is_in_the_out_folder_is_refused(photos, tmp_path, no_models, capsys):
    links = tmp_path / "links"
    links.mkdir()
    (links / "a.jpg").symlink_to(photos / "a.jpg")
    before = _digests(photos)
    _one_line_usage_error(capsys, cli.main([str(links), "--out", str(photos)]), "--out ")
    assert _digests(photos) == before


def test_copy_that_is_a_hard_link_to_an_input_is_refused(photos, tmp_path, no_models, capsys):
    out = tmp_path / "out"
    out.mkdir()
    os.link(photos / "a.jpg", out / "a.jpg")  # writing out/a.jpg would rewrite photos/a.jpg
    before = _digests(photos)
    line = _one_line_usage_error(capsys, cli.main([str(photos / "a.jpg"), "--out", str(out)]), "--out ")
    assert f"which is the input {photos / 'a.jpg'}" in line
    assert _digests(photos) == before


def test_out_folder_inside_the_inputs_holding_earlier_copies_is_refused(photos, no_models, capsys):
    """A second `--recursive` run into a sub-folder: the first run's copies are now inputs."""
    (photos / "annotated").mkdir()
    cv2.imwrite(str(photos / "annotated" / "a.jpg"), np.zeros((32, 48, 3), np.uint8))
    before = _digests(photos)
    rc = cli.main([str(photos), "--recursive", "--out", str(photos / "annotated")])
    _one_line_usage_error(capsys, rc, "--out ")
    assert _digests(photos) == before


def test_out_that_is_a_file_is_one_line(photos, tmp_path, no_models, capsys):
    (tmp_path / "taken").write_text("x")
    line = _one_line_usage_error(capsys, cli.main([str(photos), "--out", str(tmp_path / "taken")]), "--out ")
    assert "is not a folder" in line


# ---------------------------------------------------------------- item 13: --jsonl, detector arguments
@pytest.mark.parametrize("where,expected", [("missing/faces.jsonl", "does not exist"), ("photos", "is a folder"),
                                            ("photos/a.jpg", "is the input")])
def test_jsonl_that_cannot_be_written_is_refused_before_the_models_load(photos, tmp_path, no_models, capsys,
                                                                       where, expected):
    """`--jsonl` into a missing folder was a traceback after the models had loaded; into an input
    it overwrote the photo."""
    before = _digests(photos)
    rc = cli.main([str(photos), "--jsonl", str(tmp_path / where)])
    assert expected in _one_line_usage_error(capsys, rc, "--jsonl ")
    assert _digests(photos) == before and not (tmp_path / "missing").exists()


def test_jsonl_in_the_out_folder_to_be_created_is_accepted(photos, tmp_path, monkeypatch):
    """The checks must not refuse the usual layout: --out results --jsonl results/faces.jsonl."""
    reached = []

    def stop(*args, **kwargs):
        reached.append(True)
        raise ValueError("stop here")

    monkeypatch.setattr(analyzer_module, "Analyzer", stop)
    rc = cli.main([str(photos), "--out", str(tmp_path / "results"), "--jsonl", str(tmp_path / "results" / "f.jsonl")])
    assert reached and rc == 2 and (tmp_path / "results").is_dir()


@pytest.mark.parametrize("args,message", [
    (["--detector-arg", "threshold=abc"], "threshold='abc': detector 'yunet' expects a number in [0.0, 1.0]"),
    (["--detector-arg", "threshold=5"], "threshold=5: detector 'yunet' expects a number in [0.0, 1.0]"),
    (["--detector-arg", "threshold"], "--detector-arg 'threshold': expected KEY=VALUE"),
    (["--detector", "no_such_detector"], "unknown detector 'no_such_detector'"),
])
def test_detector_argument_errors_are_one_line_exit_2(photos, capsys, args, message):
    """Checked by the real Analyzer: the registry's bounds refuse before any model loads."""
    line = _one_line_usage_error(capsys, cli.main([str(photos / "a.jpg"), *args]), "")
    assert message in line


# ---------------------------------------------------------------- item 12: numbers argparse refuses
@pytest.mark.parametrize("flag,value,expected", [
    ("--max-frames", "-1", "must be at least 0, got -1"), ("--batch", "0", "must be at least 1, got 0"),
    ("--max-side", "0", "must be at least 1, got 0"), ("--max-pixels", "-5", "must be at least 1, got -5"),
    ("--max-frames", "x", "expected an integer, got 'x'"),
])
def test_out_of_range_numbers_are_refused_by_argparse(photos, no_models, capsys, flag, value, expected):
    """`--max-frames -1` silently analysed nothing, with exit status 0."""
    with pytest.raises(SystemExit) as exit_:
        cli.main([str(photos), flag, value])
    assert exit_.value.code == 2
    assert f"argument {flag}: {expected}" in capsys.readouterr().err


def test_folder_that_cannot_be_listed_is_an_error_line(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("running as a user who can list a mode-000 folder (root)")
        unreadable: list = []
        assert list(cli.expand([str(locked)], unreadable=unreadable)) == []
        assert unreadable and "cannot list the folder" in unreadable[0][1]
    finally:
        locked.chmod(0o700)


# ---------------------------------------------------------------- a reader that leaves
@pytest.mark.slow
def test_reader_leaving_the_pipe_is_not_a_traceback():
    """`ferjax analyze clip.mp4 | head -1`: the reader leaves, the command stops quietly."""
    require_files(SHORT, why="the real video")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, "-m", "ferjax.run", "analyze", str(SHORT)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    rc = proc.wait(timeout=300)
    assert json.loads(first)["frame"] == 0
    assert "Traceback" not in err and "BrokenPipeError" not in err, err[-2000:]
    assert rc == 1
