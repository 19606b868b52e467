"""Fuzzing the weight-file readers a stranger's file reaches: the MTCNN weights reader, the restricted
unpickler, and the three converters' readers (PyTorch zip and legacy, Keras HDF5, Caffe protobuf).

Seeds are real files where present (mtcnn==1.0.0's pnet.lz4) and small valid files made here in each
format's own layout; `tests/fuzzing.py` mutates them. The only accepted outcomes are a result or the
reader's documented errors (ConversionError, and UnsafePickleError for pickles); any other exception,
a crash or memory over fuzzing.MEMORY_CAP_MB fails. Quick mode (default suite) is derandomized.
"""
from __future__ import annotations

import collections
import os
import pickle
import subprocess
import sys
from pathlib import Path

import h5py
import lz4.frame
import numpy as np
import pytest

from ferjax.convert import caffe, safe_pickle, torch_pth
from ferjax.convert.mapping import ConversionError
from ferjax.convert.safe_pickle import UnsafePickleError
from ferjax.realtime import mtcnn_weights
from conftest import detector_files
from fuzzing import MODES, QUICK, fuzz, mutated
from test_convert_torch import contiguous, sample_views, state_dict_pickle, write_pth
from test_convert_vggface import _bytes, _varint, write_caffemodel

PICKLE_ERRORS = (ConversionError, UnsafePickleError)
RNG = np.random.default_rng(0)


def _arrays() -> list:
    return [RNG.normal(size=(3, 3, 3, 4)).astype(np.float32), np.arange(4, dtype=np.float32),
            np.asfortranarray(np.ones((2, 3), np.int16)), np.float64(2.5)]


def pickle_seeds() -> list[bytes]:
    """Numpy pickles in every protocol, an ordered dict of arrays, a torch state dict's pickle."""
    objs = [_arrays(), collections.OrderedDict(w=np.zeros(3, ">f4"), b=np.array([True])), np.dtype("<U3")]
    return [pickle.dumps(o, protocol=p) for o in objs for p in (0, 2, 4, 5)] + [state_dict_pickle(sample_views())]


def joblib_seeds(tmp: Path) -> list[bytes]:
    """Small joblib files (plain and LZ4, as mtcnn ships), and the shipped pnet.lz4 when present."""
    joblib = pytest.importorskip("joblib", reason="joblib writes the joblib-format seeds")
    seeds = []
    for i, compress in enumerate((0, ("lz4", 3))):
        joblib.dump(_arrays()[:3], tmp / f"seed{i}", compress=compress)
        seeds.append((tmp / f"seed{i}").read_bytes())
    pnet = next((p for p in detector_files("mtcnn") if p.stem == "pnet" and p.is_file()), None)
    if pnet is not None:
        seeds += [pnet.read_bytes(), lz4.frame.decompress(pnet.read_bytes())]
    return seeds


def torch_seeds(tmp: Path) -> list[bytes]:
    views = {**sample_views(), "fc.weight": contiguous(RNG.normal(size=(2, 3)).astype(np.float32))}
    return [write_pth(tmp / f"seed{z}.pth", views, zip_format=z).read_bytes() for z in (True, False)]


def keras_seeds(tmp: Path) -> list[bytes]:
    """A save_weights file (two layers, one without weights) and a whole-model file with its config."""
    seeds = []
    for i, config in enumerate((None, {"class_name": "Sequential", "config": {"layers": [
            {"class_name": "Conv2D", "config": {"name": "conv1", "data_format": "channels_last"}},
            {"class_name": "SeparableConv2D", "config": {"name": "sep"}}]}})):
        path = tmp / f"seed{i}.h5"
        with h5py.File(path, "w") as f:
            g = f.create_group("model_weights") if config else f
            if config:
                f.attrs["model_config"] = __import__("json").dumps(config).encode()
            g.attrs["layer_names"] = [b"conv1", b"pool", b"sep"]
            for name, weights in (("conv1", {"kernel:0": (3, 3, 1, 2), "bias:0": (2,)}), ("pool", {}),
                                  ("sep", {"depthwise_kernel:0": (3, 3, 2, 1), "pointwise_kernel:0": (1, 1, 2, 2)})):
                lg = g.create_group(name)
                lg.attrs["weight_names"] = [f"{name}/{w}".encode() for w in weights]
                for w, shape in weights.items():
                    lg[f"{name}/{w}"] = RNG.normal(size=shape).astype(np.float32)
        seeds.append(path.read_bytes())
    return seeds


def caffe_seeds(tmp: Path) -> list[bytes]:
    layers = {"conv1_1": (RNG.normal(size=(2, 3, 3, 3)).astype(np.float32), np.zeros(2, np.float32)),
              "fc6": (RNG.normal(size=(3, 4)).astype(np.float32), np.ones(3, np.float32))}
    seeds = []
    for v1 in (True, False):
        write_caffemodel(tmp / "seed.caffemodel", layers, v1=v1)
        seeds.append((tmp / "seed.caffemodel").read_bytes())
    # A blob whose shape holds 10-byte varints, for mutations to vary (64-bit dimensions).
    huge = _bytes(7, _bytes(1, _varint(2**63) + _varint(2**32) + _varint(0))) + _bytes(5, bytes(8))
    return seeds + [_bytes(100, _bytes(1, b"conv1_1") + _bytes(7, huge))]


def _from_file(tmp: Path, name: str, read) -> callable:
    """A parser of bytes that writes them to one file and calls a path-based reader on it."""
    path = tmp / name

    def parse(data: bytes) -> object:
        path.write_bytes(data)
        return read(path)
    return parse


@pytest.mark.parametrize("mode", MODES)
def test_fuzz_mtcnn_weights_reader(tmp_path, mode):
    fuzz(lambda data: mtcnn_weights.loads(data, "fuzzed.lz4"), mutated(joblib_seeds(tmp_path)), PICKLE_ERRORS,
         mode, examples=150)


@pytest.mark.parametrize("mode", MODES)
def test_fuzz_restricted_unpickler(mode):
    allow_lists = (safe_pickle.JOBLIB, torch_pth.ALLOWED)
    fuzz(lambda data: [safe_pickle.loads(data, allowed, "fuzzed.pkl") for allowed in allow_lists],
         mutated(pickle_seeds()), PICKLE_ERRORS, mode, examples=300)


@pytest.mark.parametrize("mode", MODES)
def test_fuzz_pytorch_reader(tmp_path, mode):
    fuzz(_from_file(tmp_path, "fuzzed.pth", torch_pth.read), mutated(torch_seeds(tmp_path)), PICKLE_ERRORS,
         mode, examples=200)


KERAS_CHILD = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from fuzzing import fuzz, mutated
from ferjax.convert import keras_h5
from ferjax.convert.mapping import ConversionError

tmp = Path(sys.argv[2])
path = tmp / "fuzzed.h5"

def parse(data):
    path.write_bytes(data)
    return keras_h5.to_flax(keras_h5.read(path), str(path))

watch = fuzz(parse, mutated([p.read_bytes() for p in sorted(tmp.glob("seed*.h5"))]), (ConversionError,),
             sys.argv[3], examples=int(sys.argv[4]))
print(f"grew {watch.grown_mb:.0f} MB")
"""


@pytest.mark.parametrize("mode", MODES)
def test_fuzz_keras_h5_reader(tmp_path, mode):
    """In a child process: libhdf5 can loop forever or crash on a malformed file (the loop the fuzzer
    found is guarded by keras_h5.check_global_heaps); another one fails this test, naming the input
    left in fuzzed.h5, instead of hanging or killing the suite."""
    keras_seeds(tmp_path)
    timeout = 120 if mode == QUICK else 1200
    try:
        proc = subprocess.run([sys.executable, "-c", KERAS_CHILD, str(Path(__file__).parent), str(tmp_path), mode,
                               "150"], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "JAX_PLATFORMS": "cpu"})
    except subprocess.TimeoutExpired:
        pytest.fail(f"keras_h5.read did not finish the fuzz run in {timeout} s: it hangs on "
                    f"{tmp_path / 'fuzzed.h5'}")
    assert proc.returncode == 0, (f"keras_h5.read failed (return code {proc.returncode}; input left in "
                                  f"{tmp_path / 'fuzzed.h5'}):\n{proc.stdout[-3000:]}{proc.stderr[-5000:]}")


@pytest.mark.parametrize("mode", MODES)
def test_fuzz_caffe_reader(tmp_path, mode):
    fuzz(_from_file(tmp_path, "fuzzed.caffemodel", caffe.read), mutated(caffe_seeds(tmp_path)),
         (ConversionError,), mode, examples=200)
