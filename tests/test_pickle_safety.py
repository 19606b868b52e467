"""Pickle-based weight files go through one allow-list; crafted files that would run code run nothing."""
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from ferjax.convert import safe_pickle
from ferjax.realtime import mtcnn_weights


def _call(module: str, name: str, *args: object) -> bytes:
    """Protocol-2 opcodes for `module.name(*args)` (str args, or {} for an empty dict)."""
    out = b"c" + f"{module}\n{name}\n".encode() + b"("
    for a in args:
        if a == {}:
            out += b"}"
        else:
            enc = str(a).encode()
            out += b"X" + struct.pack("<I", len(enc)) + enc
    return out + b"tR"


def _payloads(marker: Path) -> dict[str, bytes]:
    code = f"open({str(marker)!r}, 'w').close()"
    return {
        "builtins.eval": _call("builtins", "eval", code),
        "os.system": _call("os", "system", f"touch {marker}"),
        "numpy.testing._private.utils.runstring": _call("numpy.testing._private.utils", "runstring", code, {}),
    }


@pytest.mark.parametrize("target", ["builtins.eval", "os.system", "numpy.testing._private.utils.runstring"])
def test_crafted_pickles_run_nothing(tmp_path, target):
    marker = tmp_path / "ran"
    payload = b"\x80\x02" + _payloads(marker)[target] + b"."
    pickle.loads(payload)  # the standard unpickler runs it: the payload is real
    assert marker.exists()
    marker.unlink()
    with pytest.raises(safe_pickle.UnsafePickleError, match=f"refusing to load global {target}"):
        safe_pickle.loads(payload, safe_pickle.JOBLIB, "crafted.pkl")
    assert not marker.exists()


@pytest.mark.parametrize("target", ["builtins.eval", "os.system", "numpy.testing._private.utils.runstring"])
def test_mtcnn_reader_refuses_crafted_weights(tmp_path, target):
    marker = tmp_path / "ran"
    # A list of one "array" that is in fact a call, as a weights file would hold.
    path = tmp_path / "pnet.lz4"
    path.write_bytes(b"\x80\x02]q\x00(" + _payloads(marker)[target] + b"e.")
    with pytest.raises(safe_pickle.UnsafePickleError, match=target):
        mtcnn_weights.load_file(path)
    assert not marker.exists()


def test_numpy_arrays_round_trip_and_object_arrays_are_refused(tmp_path):
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.asfortranarray(np.ones((3, 2), np.int16)),
              np.float64(2.5)]
    for protocol in (2, 4, 5):
        back = safe_pickle.loads(pickle.dumps(arrays, protocol=protocol), safe_pickle.NUMPY)
        for a, b in zip(arrays, back):
            np.testing.assert_array_equal(a, b)
            assert np.asarray(a).dtype == np.asarray(b).dtype
    with pytest.raises(safe_pickle.UnsafePickleError, match="object"):
        safe_pickle.loads(pickle.dumps(np.array([1, "a"], dtype=object)), safe_pickle.NUMPY)
    with pytest.raises(ValueError, match="truncated or corrupt pickle"):
        safe_pickle.loads(pickle.dumps(arrays)[:40], safe_pickle.NUMPY, "cut.pkl")


def test_mtcnn_weights_match_joblib():
    joblib = pytest.importorskip("joblib", reason="joblib is the reference reader here")
    pytest.importorskip("lz4", reason="joblib needs lz4 to read the shipped files")
    d = mtcnn_weights.find_dir()  # the test extra installs mtcnn==1.0.0, which ships the files
    for net in mtcnn_weights.NETS:
        ours, ref = mtcnn_weights.load_file(d / f"{net}.lz4"), joblib.load(d / f"{net}.lz4")
        assert len(ours) == len(ref) == mtcnn_weights.ARRAY_COUNTS[net]
        for a, b in zip(ours, ref):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)


def test_joblib_file_written_by_joblib(tmp_path):
    joblib = pytest.importorskip("joblib", reason="joblib writes the file under test")
    arrays = [np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32), np.arange(5)]
    joblib.dump(arrays, tmp_path / "w.pkl")
    for a, b in zip(arrays, mtcnn_weights.load_file(tmp_path / "w.pkl")):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pytorch_reader_refuses_crafted_state_dicts(tmp_path, zip_format):
    """A .pth whose pickle calls os.system: refused by the same allow-list, nothing runs."""
    torch = pytest.importorskip("torch", reason="torch writes the genuine file that is then altered")
    from ferjax.convert import torch_pth

    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(2)}, path, _use_new_zipfile_serialization=zip_format)
    evil = b"\x80\x02" + _payloads(marker)["os.system"] + b"."
    if zip_format:
        import zipfile
        with zipfile.ZipFile(path) as z:
            entries = {n: z.read(n) for n in z.namelist()}
        pkl = next(n for n in entries if n.endswith("data.pkl"))
        with zipfile.ZipFile(path, "w") as z:
            for n, data in entries.items():
                z.writestr(n, evil if n == pkl else data)
    else:  # legacy: magic, protocol, sys_info, then the state dict's pickle
        head = b"".join(pickle.dumps(v, protocol=2) for v in
                        (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}))
        path.write_bytes(head + evil)
    with pytest.raises(safe_pickle.UnsafePickleError, match="refusing to load global os.system"):
        torch_pth.read(path)
    assert not marker.exists()
