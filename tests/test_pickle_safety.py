"""Pickle-based weight files go through one allow-list; crafted files that would run code run nothing."""
import json
import os
import pickle
import pickletools
import struct
import subprocess
import sys
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


# ---------------------------------------------------------------- every allow-listed name, called directly

class G(tuple):
    """A global reference (module, name) inside crafted arguments."""


def _op(value: object) -> bytes:
    """Protocol-2 opcodes pushing `value`: primitives and tuples via pickle (memo puts removed),
    `G` globals via the GLOBAL opcode."""
    if isinstance(value, G):
        return b"c" + f"{value[0]}\n{value[1]}\n".encode()
    if isinstance(value, tuple):
        return b"(" + b"".join(map(_op, value)) + b"t"
    return pickletools.optimize(pickle.dumps(value, protocol=2))[2:-1]


NULL8 = bytes(8)  # a NULL object pointer: an object array reads it as None (garbage would crash)
HOSTILE_ARGS = [
    (), ((1,), "O", NULL8), ((1,), "O"), ("O",), ("O", False, True), (b"O",), ("T",), ("f8",),
    ("f8", False, True), ([("a", "O")],), (G(("numpy", "ndarray")), (1,), "O"), (G(("numpy", "ndarray")), (0,), "b"),
    (NULL8, "O", (1,), "C"), (NULL8, "f8", (1,), "C"), ("O", NULL8), ("<f8", NULL8), ("hello", "latin-1"),
    ("hello", "rot13"), ((1, 2), 0, (2,), (1,)), ({},),
]


def _calls(module: str, name: str, args: tuple) -> dict[str, bytes]:
    cls, a = _op(G((module, name))), _op(args)
    return {"REDUCE": b"\x80\x02" + cls + a + b"R.", "NEWOBJ": b"\x80\x02" + cls + a + b"\x81.",
            "NEWOBJ_EX": b"\x80\x04" + cls + a + b"}\x92."}


def _object_arrays(obj: object) -> list[str]:
    """Object arrays (or object dtypes) anywhere in a result, without reading their elements."""
    found, todo, seen = [], [obj], set()
    while todo:
        x = todo.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, (np.ndarray, np.generic, np.dtype)):
            dt = x if isinstance(x, np.dtype) else x.dtype
            if dt.hasobject or dt.kind not in "biufcSU":
                found.append(f"{type(x).__name__} of {dt}")
        elif isinstance(x, dict):
            todo += [*x.keys(), *x.values()]
        elif isinstance(x, (list, tuple, set, frozenset)):
            todo += list(x)
        if hasattr(x, "__dict__") and not isinstance(x, type):
            todo += list(vars(x).values())
    return found


def _allow_lists() -> dict[str, dict]:
    from ferjax.convert import torch_pth
    return {"safe_pickle.NUMPY": safe_pickle.NUMPY, "safe_pickle.JOBLIB": safe_pickle.JOBLIB,
            "torch_pth.ALLOWED": torch_pth.ALLOWED}


@pytest.mark.parametrize("allow_list", ["safe_pickle.NUMPY", "safe_pickle.JOBLIB", "torch_pth.ALLOWED"])
def test_every_allow_listed_name_called_directly_gives_no_object_array(allow_list):
    """REDUCE, NEWOBJ and NEWOBJ_EX of every allow-listed global with hostile arguments: a plain
    result, or the reader's own refusal; never an object array (the old `numpy.ndarray` entry was
    the type itself: `ndarray((1,), "O", buffer)` read object pointers from the file)."""
    from ferjax.convert.mapping import ConversionError

    allowed = _allow_lists()[allow_list]
    outcomes: dict[str, int] = {"refused": 0, "result": 0}
    for module, name in allowed:
        for args in HOSTILE_ARGS:
            for opcode, data in _calls(module, name, args).items():
                try:
                    result = safe_pickle.loads(data, allowed, "crafted.pkl")
                except (safe_pickle.UnsafePickleError, ConversionError) as e:
                    assert str(e).startswith("crafted.pkl: "), (module, name, opcode, args, str(e))
                    outcomes["refused"] += 1
                    continue
                bad = _object_arrays(result)
                assert not bad, f"{opcode} {module}.{name}{args!r} gave {bad}"
                outcomes["result"] += 1
    assert outcomes["refused"] > outcomes["result"] > 0, outcomes
    with pytest.raises(safe_pickle.UnsafePickleError, match="refusing REDUCE of numpy.ndarray"):
        safe_pickle.loads(_calls("numpy", "ndarray", ((1,), "f8"))["REDUCE"], safe_pickle.NUMPY, "x.pkl")


EXPLOIT = r"""
import json, pickle, pickletools, struct, sys
from ferjax.convert import safe_pickle
from ferjax.realtime import mtcnn_weights

def op(v):
    return pickletools.optimize(pickle.dumps(v, protocol=2))[2:-1]

target = ["a live object the file points at"]
pointer = op(struct.pack("<Q", id(target)))
cases = {
    "REDUCE numpy.ndarray": b"\x80\x02cnumpy\nndarray\n(" + op((1,)) + op("O") + pointer + b"tR.",
    "NEWOBJ numpy.ndarray": b"\x80\x02cnumpy\nndarray\n(" + op((1,)) + op("O") + pointer + b"t\x81.",
    "NEWOBJ_EX numpy.ndarray": b"\x80\x04cnumpy\nndarray\n(" + op((1,)) + op("O") + pointer + b"t}\x92.",
    "garbage pointer": b"\x80\x02cnumpy\nndarray\n(" + op((1,)) + op("O") + op(b"\x41" * 8) + b"tR.",
    "tuple nested 1e6 deep as a dict key": b"\x80\x02})" + b"\x85" * 10**6 + b"K\x01s.",
}
for name, data in cases.items():
    try:
        with open(sys.argv[1], "wb") as f:  # as an MTCNN weights file: a list of one "array"
            f.write(data[:2] + b"]" + data[2:-1] + b"a.")
        for result in (safe_pickle.loads(data, safe_pickle.JOBLIB, "crafted.pkl"),
                       mtcnn_weights.load_file(sys.argv[1])):
            got = result if not isinstance(result, list) else result[0]
            alive = getattr(got, "dtype", None) is not None and got.dtype.hasobject and got[0] is target
            print(json.dumps([name, "LIVE OBJECT FROM A FILE POINTER" if alive else f"returned {type(got).__name__}"]))
            sys.stdout.flush()
            if getattr(got, "dtype", None) is not None and got.dtype.hasobject:
                repr(got[0])  # what a caller would do with it (a garbage pointer crashes here)
    except (safe_pickle.UnsafePickleError, ValueError) as e:
        print(json.dumps([name, "refused: " + type(e).__name__ + ": " + str(e)[:200]]), flush=True)
"""


def test_object_pointers_and_deep_tuples_in_a_file_are_refused_in_a_child_process(tmp_path):
    """A pickle calling numpy.ndarray((1,), "O", 8 bytes) got back the object those bytes point at
    (garbage bytes: SIGSEGV); a tuple nested a million deep crashed CPython when hashed as a key."""
    proc = subprocess.run([sys.executable, "-c", EXPLOIT, str(tmp_path / "pnet.lz4")], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 0, f"child died with code {proc.returncode} after {lines}: {proc.stderr[-1500:]}"
    assert len(lines) == 5 and all(outcome.startswith("refused: UnsafePickleError") for _, outcome in lines), lines


# ---------------------------------------------------------------- states, dtypes, declared sizes

def _float64_then(state_of_dtype: bytes) -> bytes:
    """[array of one float64 made with dtype d, d after BUILD(state)]: a state arriving after use."""
    dt = _op(G(("numpy", "dtype"))) + _op(("f8", False, True)) + b"R" + b"q\x01"
    arr = (_op(G(("numpy.core.multiarray", "_reconstruct"))) + _op((G(("numpy", "ndarray")), (0,), b"b")) + b"R"
           + b"(" + _op(1) + _op((1,)) + b"h\x01\x89" + _op(b"\x41" * 8) + b"tb")
    return b"\x80\x02" + dt + b"0](" + arr + b"h\x01" + state_of_dtype + b"be."


@pytest.mark.parametrize("state", [
    (3, "<", None, None, None, -1, -1, 0x3F),  # object flags on float64 (numpy took them)
    (3, "|", None, ("a",), {"a": (G(("numpy", "dtype")), 1000)}, 8, 1, 0),  # a field past the item's end
    (3, "|", None, None, None, 1 << 30, 1, 0),  # an item size of 1 GiB under an 8-byte array
], ids=["object flags", "field past the end", "item size"])
def test_dtype_states_are_plain_and_never_change_a_dtype_in_use(state):
    st = b"(" + b"".join(_op(x) if not isinstance(x, dict) else
                         b"}" + _op("a") + b"(" + _op(G(("numpy", "dtype"))) + _op(("f8",)) + b"R" + _op(1000)
                         + b"ts" for x in state) + b"t"
    with pytest.raises(safe_pickle.UnsafePickleError, match="refusing dtype state"):
        safe_pickle.loads(_float64_then(st), safe_pickle.NUMPY, "crafted.pkl")
    arr = safe_pickle.loads(_float64_then(_op((3, ">", None, None, None, -1, -1, 0))), safe_pickle.NUMPY)
    assert arr[0].dtype == np.dtype("<f8") and arr[1] == np.dtype(">f8")  # the array keeps its dtype


def test_a_file_cannot_change_the_readers_own_objects():
    """BUILD on a global (a module's function or torch_pth's storage token) used to set its
    attributes for every later file: e.g. FloatStorage read as float64 from then on."""
    from ferjax.convert import torch_pth

    token = torch_pth.ALLOWED[("torch", "FloatStorage")]
    cases = {"torch.FloatStorage": (torch_pth.ALLOWED, b"\x80\x02ctorch\nFloatStorage\n(}}" + _op("dtype")
                                    + _op("<f8") + b"stb."),
             "numpy.dtype": (safe_pickle.NUMPY, b"\x80\x02cnumpy\ndtype\n(}}" + _op("__defaults__")
                             + _op(("O", True)) + b"stb.")}
    for name, (allowed, data) in cases.items():
        with pytest.raises(safe_pickle.UnsafePickleError, match=f"refusing to set the state of {name}"):
            safe_pickle.loads(data, allowed, "crafted.pkl")
    assert token.dtype == np.dtype("<f4") and safe_pickle.NUMPY[("numpy", "dtype")].__defaults__ == (False, False)


def test_object_dtypes_are_refused_through_every_door():
    wrapper = (b"\x80\x02cjoblib.numpy_pickle\nNumpyArrayWrapper\n)\x81}" + _op("dtype")
               + _op(G(("numpy", "dtype"))) + _op(("O",)) + b"R" + _op("shape") + _op((1,)) + b"ub.")
    frombuffer = b"\x80\x02cnumpy.core.numeric\n_frombuffer\n" + _op((NULL8, "O", (1,), "C")) + b"R."
    scalar = b"\x80\x02cnumpy.core.multiarray\nscalar\n" + _op(("O", NULL8)) + b"R."
    for data in (wrapper, frombuffer, scalar, pickle.dumps(np.array([None]), protocol=2),
                 pickle.dumps(np.array([None]), protocol=5), pickle.dumps(np.dtype("T"), protocol=2)):
        with pytest.raises(safe_pickle.UnsafePickleError, match="refusing"):
            safe_pickle.loads(data, safe_pickle.JOBLIB, "crafted.pkl")


def test_declared_lengths_allocate_nothing_beyond_the_file():
    """BYTEARRAY8 declaring 256 MiB in a 14-byte pickle: the stock unpickler allocated it first."""
    from ferjax.convert.mapping import ConversionError
    from fuzzing import MemoryWatch

    data = b"\x80\x05\x96" + struct.pack("<Q", 256 << 20) + b"."
    with MemoryWatch() as watch, pytest.raises(ConversionError, match="BYTEARRAY8 of 268435456 bytes"):
        safe_pickle.loads(data, safe_pickle.NUMPY, "crafted.pkl")
    assert watch.grown_mb < 50, f"{watch.grown_mb:.0f} MB allocated for a 14-byte file"
