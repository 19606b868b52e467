"""The PyTorch reader on files written here in torch.save's two layouts (no PyTorch needed): valid
views read back exactly; views reaching outside their storage, zip bombs and refused pickles end in
one error line naming the file, never a crash."""
from __future__ import annotations

import json
import os
import pickle
import pickletools
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ferjax.convert import ConversionError, torch_pth
from ferjax.convert.safe_pickle import UnsafePickleError
from fuzzing import MemoryWatch

STORAGES = {np.dtype("float32"): "FloatStorage", np.dtype("float64"): "DoubleStorage",
            np.dtype("float16"): "HalfStorage", np.dtype("int64"): "LongStorage", np.dtype("uint8"): "ByteStorage"}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def op(value: object) -> bytes:
    """Protocol-2 opcodes that push `value` (ints, strings, tuples of them), without PROTO and STOP."""
    return pickletools.optimize(pickle.dumps(value, protocol=2))[2:-1]


def global_op(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def contiguous(a: np.ndarray) -> tuple:
    """(storage, offset, size, stride) of a C-contiguous tensor holding `a`."""
    strides = tuple(s // a.itemsize for s in np.ascontiguousarray(a).strides)
    return np.ascontiguousarray(a).ravel(), 0, a.shape, strides


def state_dict_pickle(views: dict[str, tuple], storage_names: dict[str, str] | None = None) -> bytes:
    """The pickle torch.save writes for {name: tensor}: an OrderedDict of `_rebuild_tensor_v2(persistent
    storage, offset, size, stride, requires_grad, hooks)`; storage i is persistent key str(i)."""
    out = b"\x80\x02" + global_op("collections", "OrderedDict") + b")R"
    for i, (name, (storage, offset, size, stride)) in enumerate(views.items()):
        kind = (storage_names or {}).get(name) or STORAGES[storage.dtype]
        pid = b"(" + op("storage") + global_op("torch", kind) + op(str(i)) + op("cpu") + op(storage.size) + b"tQ"
        out += (op(name) + global_op("torch._utils", "_rebuild_tensor_v2") + b"(" + pid + op(offset) + op(size)
                + op(stride) + b"\x89" + global_op("collections", "OrderedDict") + b")R" + b"tR" + b"s")
    return out + b"."


def write_pth(path: Path, views: dict[str, tuple], zip_format: bool = True, pkl: bytes | None = None) -> Path:
    """A torch.save file of `views` ({name: (1-D storage array, offset, size, stride)}): the zip layout
    (archive/data.pkl, archive/data/<key>, byteorder, version) or the legacy one (magic, protocol,
    sys info and state dict pickles, the storage keys, then each storage as int64 count + bytes)."""
    pkl = pkl if pkl is not None else state_dict_pickle(views)
    storages = [np.ascontiguousarray(v[0]).astype(v[0].dtype.newbyteorder("<")) for v in views.values()]
    if zip_format:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", pkl)
            z.writestr("archive/byteorder", "little")
            for i, s in enumerate(storages):
                z.writestr(f"archive/data/{i}", s.tobytes())
            z.writestr("archive/version", "3\n")
    else:
        head = b"".join(pickle.dumps(v, protocol=2) for v in
                        (LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True}))
        body = b"".join(struct.pack("<q", s.size) + s.tobytes() for s in storages)
        path.write_bytes(head + pkl + pickle.dumps([str(i) for i in range(len(storages))], protocol=2) + body)
    return path


def sample_views() -> dict[str, tuple]:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 4)).astype(np.float32)
    big = np.arange(24, dtype=np.float64)
    return {"conv.weight": contiguous(w), "conv.bias": contiguous(np.arange(3, dtype=np.float16)),
            "t.weight": (big, 2, (4, 3), (1, 4)),  # a transposed view at an offset
            "empty": (np.zeros(0, np.float32), 0, (0, 5), (5, 1)),
            "count": contiguous(np.array([7], np.int64))}


def expected(views: dict[str, tuple]) -> dict[str, np.ndarray]:
    """What each view holds, computed with NumPy's own index arithmetic (no strides tricks)."""
    out = {}
    for name, (storage, offset, size, stride) in views.items():
        idx = offset + sum(np.arange(n).reshape([-1 if i == d else 1 for i in range(len(size))]) * s
                           for d, (n, s) in enumerate(zip(size, stride)))
        out[name] = storage[idx] if size else storage[offset]
    return out


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_written_files_read_back_exactly(tmp_path, zip_format):
    views = sample_views()
    got = torch_pth.read(write_pth(tmp_path / "w.pth", views, zip_format))
    want = expected(views)
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, name
        np.testing.assert_array_equal(got[name], want[name])


# name -> (offset, size, stride) of a view on a 16-element float32 storage, each reaching outside it.
BAD_VIEWS = {
    "stride -2**40": (0, (2,), (-2**40,)),  # segfaulted `python -m ferjax.convert pytorch-vggface`
    "negative stride": (15, (4,), (-1,)),
    "negative offset": (-8, (16,), (1,)),  # read 8 elements past the storage ("weights" from the heap)
    "negative size": (0, (-2, 4), (4, 1)),
    "past the end": (8, (3, 4), (4, 1)),
    "huge stride": (0, (2,), (2**62,)),
    "broadcast": (0, (1000, 1000), (0, 0)),  # one element as a million
    "bool offset": (True, (4,), (1,)),
    "size/stride lengths": (0, (4, 4), (1,)),
}


def test_views_outside_their_storage_are_refused_not_read(tmp_path):
    """Each crafted view goes through the command line's entry point in a child process (on the old
    code a negative stride killed the process with SIGSEGV): exit 2 and one `error:` line."""
    cases = {}
    for i, (name, view) in enumerate(BAD_VIEWS.items()):
        for fmt in ("zip", "legacy"):
            path = write_pth(tmp_path / f"bad{i}_{fmt}.pth", {"fc.weight": (np.ones(16, np.float32), *view)},
                             zip_format=fmt == "zip")
            cases[f"{name} ({fmt})"] = str(path)
    script = textwrap.dedent(f"""
        import contextlib, io, json, sys
        from ferjax.convert.__main__ import main
        for name, path in json.loads(sys.argv[1]).items():
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                rc = main(["pytorch-vggface", "--in", path, "--out", {str(tmp_path / "out.msgpack")!r}])
            print(json.dumps([name, rc, err.getvalue()]), flush=True)
    """)
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(cases)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    done = {name: (rc, err) for name, rc, err in map(json.loads, proc.stdout.splitlines())}
    assert proc.returncode == 0, (f"the reader crashed (return code {proc.returncode}) after "
                                  f"{list(done)}: {proc.stderr[-2000:]}")
    for name, path in cases.items():
        rc, err = done[name]
        assert rc == 2 and err.count("\n") == 1 and err.startswith(f"error: {path}"), (name, rc, err)
        assert "tensor" in err, (name, err)


def test_storage_entry_is_decompressed_only_as_far_as_its_tensor_needs(tmp_path):
    """A 4-element storage stored as 200 MB of deflated zeros (under 1 MB in the file): the reader
    takes its 16 bytes; it used to inflate all 200 MB."""
    path = tmp_path / "bomb.pth"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        z.writestr("archive/data.pkl", state_dict_pickle({"w": (np.zeros(4, np.float32), 0, (4,), (1,))}))
        with z.open("archive/data/0", "w") as f:
            chunk = bytes(1 << 20)
            for _ in range(200):
                f.write(chunk)
    assert path.stat().st_size < 1 << 20
    with MemoryWatch() as watch:
        got = torch_pth.read(path)
    np.testing.assert_array_equal(got["w"], np.zeros(4, np.float32))
    assert watch.grown_mb < 50, f"reading took {watch.grown_mb:.0f} MB"


def test_oversized_pickle_entry_is_refused_before_inflating(tmp_path):
    path = tmp_path / "big.pth"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        with z.open("archive/data.pkl", "w") as f:
            chunk = bytes(1 << 20)
            for _ in range(65):  # just over the 64 MiB cap
                f.write(chunk)
    with MemoryWatch() as watch, pytest.raises(ConversionError, match=r"big.pth: archive/data.pkl holds \d+ "
                                                                       r"bytes, expected at most"):
        torch_pth.read(path)
    assert watch.grown_mb < 30, f"refusing took {watch.grown_mb:.0f} MB"


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_malformed_containers_name_the_file(tmp_path, zip_format):
    good = write_pth(tmp_path / "good.pth", sample_views(), zip_format).read_bytes()
    bad = {"truncated": good[: len(good) * 2 // 3],
           "non-string key": state_dict_pickle({"w": contiguous(np.ones(2, np.float32))}).replace(
               op("w"), op(3)),
           "storage of a tuple": global_op("collections", "OrderedDict") + b")R" + op("w")
           + global_op("torch._utils", "_rebuild_tensor_v2") + b"(" + op((1, 2)) + op(0) + op((2,)) + op((1,))
           + b"tRs."}
    for name, data in bad.items():
        path = tmp_path / f"{name}.pth"
        if name == "truncated":
            path.write_bytes(data)
        else:
            pkl = data if data.startswith(b"\x80\x02") else b"\x80\x02" + data
            write_pth(path, {"w": contiguous(np.ones(2, np.float32))}, zip_format, pkl=pkl)
        with pytest.raises((ConversionError, UnsafePickleError), match=f"{path.name}"):
            torch_pth.read(path)


def test_refused_pickle_is_one_error_line_from_the_command_line(tmp_path):
    """`python -m ferjax.convert` on a .pth whose pickle calls os.system: exit 2, `error: ...`, no
    traceback (UnsafePickleError is a pickle.UnpicklingError, which the command did not catch)."""
    marker = tmp_path / "ran"
    evil = b"\x80\x02" + global_op("os", "system") + b"(" + op(f"touch {marker}") + b"tR."
    path = write_pth(tmp_path / "evil.pth", {"w": contiguous(np.ones(2, np.float32))}, pkl=evil)
    proc = subprocess.run([sys.executable, "-m", "ferjax.convert", "pytorch-vggface", "--in", str(path),
                           "--out", str(tmp_path / "out.msgpack")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr[-3000:]
    assert "refusing to load global os.system" in proc.stderr and str(path) in proc.stderr
    assert not marker.exists() and not (tmp_path / "out.msgpack").exists()
