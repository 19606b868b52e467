"""tools/gpu_check.py: what it carries, its arguments, and its refusals (no GPU, no data, no wheels).

The end-to-end path (wheels installed offline into a fresh Python 3.12 environment, compact data,
training, benchmark) is the `--allow-cpu` dry run recorded in README "GPU check"; it installs
packages, so it is not part of the test suite.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import synthetic_rows, write_csv

from ferjax.data import compact
from ferjax.data import fer2013 as fer

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "gpu_check.py"
_spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)


def test_parser_defaults_and_bad_arguments(capsys, monkeypatch):
    monkeypatch.setenv("OUT", "/tmp/some_out")
    args = gpu_check.build_parser().parse_args(["run"])
    assert (args.experiment, args.epochs, args.allow_cpu, args.bench, args.out) == (
        "fer2013_vgg:gpu", gpu_check.GPU_EPOCHS, False, True, "/tmp/some_out")
    args = gpu_check.build_parser().parse_args(["run", "--allow-cpu", "--no-bench", "--epochs=3"])
    assert (args.allow_cpu, args.bench, args.epochs) == (True, False, 3)
    for bad in (["run", "--epochs=-1"], ["run", "--epochs=x"], ["fly"], []):
        with pytest.raises(SystemExit) as e:
            gpu_check.build_parser().parse_args(bad)
        assert e.value.code == 2
    assert "expected an integer >= 0, got -1" in capsys.readouterr().err


def test_carried_wheels_never_include_the_machines_jax_or_its_preinstalled_packages():
    closure = gpu_check.dependency_closure()  # ferjax's real run-time closure in this environment
    for needed in ("jax", "flax", "tensorflow-datasets", "grain", "dm-pix", "ml-collections", "array-record"):
        assert needed in closure, needed
    pins = gpu_check.carried_requirements(closure, ["setuptools>=77", "wheel"])
    assert pins[-2:] == ["setuptools>=77", "wheel"]
    pins = pins[:-2]
    names = {p.split("==")[0] for p in pins}
    assert {"tensorflow-datasets", "grain", "dm-pix", "ml-collections", "array-record"} <= names
    assert not names & {"jax", "jaxlib", "flax", "optax", "numpy", "opencv-python-headless", "torch", "ferjax"}
    assert all(p.count("==") == 1 and p.split("==")[1] for p in pins)


def test_names_and_last_json():
    assert gpu_check.wheel_name(Path("dm_pix-0.4.5-py3-none-any.whl")) == "dm-pix"
    assert gpu_check.wheel_name(Path("ml_collections-1.1.0-py3-none-any.whl")) == "ml-collections"
    assert gpu_check.normalize("Array_Record") == "array-record"
    text = 'log\n{"a": 1}\nnot json {\n{"test": {"accuracy": 0.5}}\ntrailing\n'
    assert gpu_check.last_json(text) == {"test": {"accuracy": 0.5}}
    assert gpu_check.last_json("nothing here") is None


@pytest.fixture
def small_compact(tmp_path):
    write_csv(tmp_path / "src" / "fer2013.csv", synthetic_rows((7, 2, 2)))
    return compact.write(tmp_path / "fer2013.npz.xz", fer.iter_records(tmp_path / "src" / "fer2013.csv"))


def test_run_refuses_without_data_or_installed_packages(tmp_path, small_compact, capsys):
    out = tmp_path / "out"
    common = ["--bundle", str(tmp_path / "bundle"), "--site", str(tmp_path / "site"), "--out", str(out)]
    assert gpu_check.main(["run", *common, "--data", str(tmp_path / "none.npz.xz")]) == 2
    assert f"no compact FER2013 file at {tmp_path / 'none.npz.xz'}" in capsys.readouterr().out
    assert json.loads((out / "gpu_check.json").read_text())["ok"] is False
    assert gpu_check.main(["run", *common, "--data", str(small_compact)]) == 2
    said = capsys.readouterr().out
    assert "not installed yet" in said and "tools/gpu_check.py install" in said
    assert gpu_check.main(["install", *common]) == 2
    assert f"no wheels in {tmp_path / 'bundle' / 'install' / 'wheels'}" in capsys.readouterr().out
    assert gpu_check.main(["run", *common]) == 2  # neither --data nor carried parts
    assert "carry .gpu_check/run in this call" in capsys.readouterr().out


def test_data_parts_split_and_join_with_checks(tmp_path, small_compact):
    first, second, stage = tmp_path / "install", tmp_path / "run", tmp_path / "stage"
    manifest = gpu_check.split_file(small_compact, 1000, first, second)
    assert [p["bytes"] for p in manifest["parts"]] == [1000, small_compact.stat().st_size - 1000]
    joined = gpu_check.join_parts([second, first], stage / "fer2013.npz.xz")
    assert joined.read_bytes() == small_compact.read_bytes()
    assert compact.summary(joined)["rows"] == 11
    joined.unlink()
    (first / "fer2013.npz.xz.part1").unlink()  # the install call's part did not arrive
    with pytest.raises(FileNotFoundError, match="data part fer2013.npz.xz.part1 not found .* back to back"):
        gpu_check.join_parts([second, stage], stage / "fer2013.npz.xz")
    (first / "fer2013.npz.xz.part1").write_bytes(b"x" * 1000)  # same size, other bytes
    with pytest.raises(ValueError, match="part1: 1000 bytes, not the 1000 with the sha256"):
        gpu_check.join_parts([second, first], stage / "fer2013.npz.xz")


def test_run_refuses_when_jax_sees_no_gpu(tmp_path, small_compact, capsys, monkeypatch):
    """With ferjax 'installed' (here: this environment's, via the marker), JAX on this CPU machine is
    asked for its backend in a child process, and the run stops before training."""
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    site = tmp_path / "site"
    site.mkdir()
    (site / gpu_check.MARKER).write_text(json.dumps({"source": gpu_check.source_digest()}))
    code = gpu_check.main(["run", "--site", str(site), "--out", str(tmp_path / "out"),
                           "--data", str(small_compact), "--workdir", str(tmp_path / "work")])
    said = capsys.readouterr().out
    assert code == 2, said
    assert "no GPU visible to JAX (backend cpu)" in said and "--allow-cpu" in said
    assert not (tmp_path / "work" / "run").exists()


def _fake_wheel(folder: Path, name: str, version: str, requires: list[str]) -> Path:
    import zipfile

    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}-{version}.dist-info/METADATA", "Metadata-Version: 2.1\nName: "
                   f"{name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires))
    return path


def test_preinstalled_packages_are_kept_unless_a_carried_wheel_needs_a_newer_one(tmp_path):
    from packaging.requirements import Requirement

    protos = _fake_wheel(tmp_path, "googleapis_common_protos", "1.76.0",
                         ["protobuf<8,>=6.33.5", "grpcio>=1; extra == 'grpc'", "colorama; sys_platform == 'win32'"])
    tfds = _fake_wheel(tmp_path, "tensorflow_datasets", "4.9.10", ["absl-py", "etils[epath]>=1.9.1"])
    protobuf = _fake_wheel(tmp_path, "protobuf", "7.36.2", [])
    absl = _fake_wheel(tmp_path, "absl_py", "2.5.1", [])
    assert [str(r) for r in gpu_check.wheel_requirements(protos)] == ["protobuf<8,>=6.33.5"]
    closure = {"protobuf": "7.36.2", "absl-py": "2.5.1", "etils": "1.15.0", "numpy": "2.4.6"}
    assert gpu_check.fallback_requirements([protos, tfds], closure) == ["etils==1.15.0", "protobuf==7.36.2"]
    requires = [Requirement("absl-py>=2.1")]
    old = {"protobuf": "5.29.3", "absl-py": "2.3.0"}
    chosen, notes = gpu_check.choose_wheels([protos, tfds, protobuf, absl], old, requires)
    assert chosen == [protos, tfds, protobuf]
    assert any("installed protobuf 5.29.3 does not satisfy" in n for n in notes)
    assert any("using the installed absl-py 2.3.0" in n for n in notes)
    new = {"protobuf": "7.1.0", "absl-py": "2.3.0", "tensorflow-datasets": "4.9.10"}
    chosen, _ = gpu_check.choose_wheels([protos, tfds, protobuf, absl], new, requires)
    assert chosen == [protos]  # tfds already there: its needs are not checked
    chosen, _ = gpu_check.choose_wheels([protos, absl], {"absl-py": "1.4.0"}, requires)
    assert chosen == [protos, absl]  # ferjax itself needs absl-py >= 2.1


def test_unknown_experiment_is_refused_before_training(tmp_path, small_compact, capsys, monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    site = tmp_path / "site"
    site.mkdir()
    (site / gpu_check.MARKER).write_text(json.dumps({"source": gpu_check.source_digest()}))
    code = gpu_check.main(["run", "--allow-cpu", "--experiment=no_such_experiment:gpu", "--site", str(site),
                           "--out", str(tmp_path / "out"), "--data", str(small_compact),
                           "--workdir", str(tmp_path / "work")])
    said = capsys.readouterr().out
    assert code == 2 and "experiment 'no_such_experiment:gpu' does not build" in said, said
    assert not (tmp_path / "work" / "run").exists()


@pytest.mark.slow  # a long end-to-end run: the slow set (pytest -m slow)
def test_set_adds_config_overrides_and_a_malformed_one_is_refused(tmp_path, small_compact, capsys, monkeypatch):
    """`--set KEY=VALUE` reaches the training command as --config.KEY=VALUE (an unknown field stops
    ferjax.run, naming it); without '=' it is refused before anything runs."""
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    site = tmp_path / "site"
    site.mkdir()
    (site / gpu_check.MARKER).write_text(json.dumps({"source": gpu_check.source_digest()}))
    common = ["run", "--allow-cpu", "--no-bench", "--site", str(site), "--out", str(tmp_path / "out"),
              "--data", str(small_compact), "--workdir", str(tmp_path / "work")]
    assert gpu_check.main([*common, "--set", "classifier"]) == 2
    assert "--set 'classifier': expected KEY=VALUE" in capsys.readouterr().out
    assert not (tmp_path / "work" / "run").exists()
    assert gpu_check.main([*common, "--set", "train.no_such_field=1"]) == 1
    said = capsys.readouterr().out
    assert "--config.train.no_such_field=1" in said and "training exited" in said, said
    assert "no_such_field" in (tmp_path / "out" / "train.log").read_text()
    # the dry run's limits skip fields an experiment lacks (a CycleGAN has no train.eval_batch_size)
    assert gpu_check.main([*common, "--experiment=cyclegan_neutral2disgust:tiny", "--set", "train.no_such_field=1"]) == 1
    limited = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("limited: "))
    assert "train.batch_size=32" in limited and "eval_batch_size" not in limited, limited


def test_export_parts_join_back_with_their_card_and_checks(tmp_path, capsys):
    model = tmp_path / "m.msgpack"
    model.write_bytes(bytes(range(256)) * 10)  # 2,560 bytes
    card = {"name": "m", "classifier": "vgg13"}
    manifest = gpu_check.split_for_return(model, tmp_path / "out", card, max_bytes=1000)
    assert [p["bytes"] for p in manifest["parts"]] == [1000, 1000, 560]
    dest = tmp_path / "here" / "m.msgpack"
    assert gpu_check.main(["join", "--from", str(tmp_path / "out"), "--to", str(dest)]) == 0
    assert dest.read_bytes() == model.read_bytes()
    assert json.loads(dest.with_suffix(".json").read_text()) == card
    dest.unlink()
    (tmp_path / "out" / "m.msgpack.part2").write_bytes(b"x" * 1000)  # same size, other bytes
    assert gpu_check.main(["join", "--from", str(tmp_path / "out"), "--to", str(dest)]) == 2
    said = capsys.readouterr().err
    assert "part2: 1000 bytes, not the 1000 with the sha256 that export_parts.json names" in said, said
    assert not dest.exists()
    assert gpu_check.main(["join", "--from", str(tmp_path), "--to", str(dest)]) == 2
    assert "no export_parts.json" in capsys.readouterr().err


@pytest.mark.slow  # a long end-to-end run: the slow set (pytest -m slow)
def test_run_export_returns_the_trained_model_in_at_most_eight_files(tmp_path, capsys, monkeypatch):
    """A dry run of `run --export NAME` (the tiny profile, this environment's ferjax via the marker):
    refused with the benchmark or a bad name before training; otherwise the exported weights come
    back in parts beside the logs, at most 8 files, and `join` rebuilds the exported file exactly."""
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    write_csv(tmp_path / "src" / "fer2013.csv", synthetic_rows((70, 14, 14)))  # the dry run's batch is 32
    data = compact.write(tmp_path / "fer2013.npz.xz", fer.iter_records(tmp_path / "src" / "fer2013.csv"))
    site, work, out = tmp_path / "site", tmp_path / "work", tmp_path / "out"
    site.mkdir()
    (site / gpu_check.MARKER).write_text(json.dumps({"source": gpu_check.source_digest()}))
    common = ["run", "--allow-cpu", "--experiment=fer2013_vgg:tiny", "--site", str(site), "--out", str(out),
              "--data", str(data), "--workdir", str(work)]
    assert gpu_check.main([*common, "--export", "tiny_model"]) == 2
    assert "add --no-bench" in capsys.readouterr().out
    assert gpu_check.main([*common, "--no-bench", "--export", "a/b"]) == 2
    assert "--export 'a/b': expected a model name" in capsys.readouterr().out
    assert not (work / "run").exists()
    for stale in out.iterdir():
        stale.unlink()
    assert gpu_check.main([*common, "--no-bench", "--export", "tiny_model"]) == 0, capsys.readouterr().out
    returned = sorted(p.name for p in out.iterdir())
    assert len(returned) <= 8 and "export_parts.json" in returned and "tiny_model.msgpack.part1" in returned
    exported = work / "export" / "tiny_model.msgpack"
    dest = tmp_path / "back" / "tiny_model.msgpack"
    assert gpu_check.main(["join", "--from", str(out), "--to", str(dest)]) == 0
    assert dest.read_bytes() == exported.read_bytes()
    assert json.loads(dest.with_suffix(".json").read_text())["name"] == "tiny_model"
    monkeypatch.setattr(gpu_check, "RETURN_PART_BYTES", exported.stat().st_size // 8 + 1)  # 8 parts
    for stale in out.iterdir():
        stale.unlink()
    assert gpu_check.main([*common, "--no-bench", "--export", "tiny_model"]) == 1
    assert "more than a device call returns (8 files, 64 MiB)" in capsys.readouterr().out
