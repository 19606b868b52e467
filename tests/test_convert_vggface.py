"""VGG-Face converters on files built in the exact published layouts, layer by layer against NumPy.

Each file is written as its own framework writes it (keras-vggface HDF5 via h5py, Caffe
protobuf bytes in the V1 `layers` and current `layer` forms, `torch.save` zip and legacy). The
reference is a NumPy forward pass in the file's own layout and channel order (NCHW + C,H,W flatten
+ BGR for Caffe, NHWC + BGR for keras-vggface, NCHW + RGB for PyTorch); the Flax model gets RGB.
"""
import collections
import json
import os
import subprocess
import sys
import zipfile

import h5py
import jax
import numpy as np
import pytest

from ferjax import pretrained
from ferjax.convert import ConversionError, convert, convert_file, template
from ferjax.convert.__main__ import main as convert_main
from ferjax.registry import CLASSIFIERS

BGR_MEAN = np.array([93.5940, 104.7624, 129.1863], np.float32)
RGB_MEAN = BGR_MEAN[::-1]
DEPTHS = (2, 2, 3, 3, 3)
CONVS = [f"conv{b}_{i}" for b, n in enumerate(DEPTHS, 1) for i in range(1, n + 1)]
SMALL = dict(widths=(4, 6, 8, 10, 12), fc_width=16, identities=5, size=64)  # pool5 is 2x2x12
FULL = dict(widths=(64, 128, 256, 512, 512), fc_width=4096, identities=2622, size=224)


def torch_layout_weights(cfg: dict, seed: int = 0, top: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{layer: (weight, bias)}: conv [O,I,3,3], fc [O,I] over a C,H,W flatten (Caffe and PyTorch)."""
    rng = np.random.default_rng(seed)
    out, cin = {}, 3
    for name in CONVS:
        cout = cfg["widths"][int(name[4]) - 1]
        out[name] = (rng.normal(0, np.sqrt(2 / (9 * cin)), (cout, cin, 3, 3)).astype(np.float32),
                     rng.normal(0, 0.1, cout).astype(np.float32))
        cin = cout
    if top:
        side = cfg["size"] // 32
        fin = cin * side * side
        for name, fout in (("fc6", cfg["fc_width"]), ("fc7", cfg["fc_width"]), ("fc8", cfg["identities"])):
            out[name] = (rng.normal(0, np.sqrt(2 / fin), (fout, fin)).astype(np.float32),
                         rng.normal(0, 0.1, fout).astype(np.float32))
            fin = fout
    return out


def keras_layout_weights(cfg: dict, seed: int = 1, top: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{layer: (kernel, bias)}: conv [3,3,I,O], Dense [I,O] over an H,W,C flatten (keras-vggface)."""
    rng = np.random.default_rng(seed)
    return {n: (rng.normal(0, np.sqrt(2 / np.prod(w.shape[1:])), w.shape[::-1] if w.ndim == 2 else
                           (3, 3, w.shape[1], w.shape[0])).astype(np.float32), b)
            for n, (w, b) in torch_layout_weights(cfg, seed, top).items()}


# ---------------------------------------------------------------- independent NumPy references

def numpy_forward_nchw(x_nchw: np.ndarray, layers: dict) -> dict[str, np.ndarray]:
    """Caffe/PyTorch semantics: pre-activation output of every layer (conv as NHWC for comparison)."""
    outs, x = {}, x_nchw.astype(np.float64)
    for name in CONVS:
        w, b = layers[name]
        h, wd = x.shape[2:]
        xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        y = sum(np.einsum("oi,nihw->nohw", w[:, :, i, j], xp[:, :, i:i + h, j:j + wd])
                for i in range(3) for j in range(3)) + b[None, :, None, None]
        outs[name] = y.transpose(0, 2, 3, 1)
        x = np.maximum(y, 0)
        if name.endswith(f"_{DEPTHS[int(name[4]) - 1]}"):
            n, c, h, wd = x.shape
            x = x.reshape(n, c, h // 2, 2, wd // 2, 2).max(axis=(3, 5))
    if "fc6" in layers:
        x = x.reshape(x.shape[0], -1)  # C, H, W order
        for name in ("fc6", "fc7", "fc8"):
            w, b = layers[name]
            outs[name] = x @ w.T + b
            x = np.maximum(outs[name], 0)
    return outs


def numpy_forward_nhwc(x_nhwc: np.ndarray, layers: dict) -> dict[str, np.ndarray]:
    """Keras (channels_last) semantics: pre-activation output of every layer."""
    outs, x = {}, x_nhwc.astype(np.float64)
    for name in CONVS:
        k, b = layers[name]
        h, wd = x.shape[1:3]
        xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        y = sum(np.einsum("nhwi,io->nhwo", xp[:, i:i + h, j:j + wd], k[i, j]) for i in range(3) for j in range(3)) + b
        outs[name] = y
        x = np.maximum(y, 0)
        if name.endswith(f"_{DEPTHS[int(name[4]) - 1]}"):
            n, h, wd, c = x.shape
            x = x.reshape(n, h // 2, 2, wd // 2, 2, c).max(axis=(2, 4))
    if "fc6" in layers:
        x = x.reshape(x.shape[0], -1)  # H, W, C order
        for name in ("fc6", "fc7", "fc8"):
            k, b = layers[name]
            outs[name] = x @ k + b
            x = np.maximum(outs[name], 0)
    return outs


def flax_layer_outputs(kwargs: dict, variables: dict, rgb: np.ndarray) -> dict[str, np.ndarray]:
    """Every layer's output of the converted model (no resize: the images are at its input size)."""
    model = CLASSIFIERS.create("vggface", **{**kwargs, "image_size": rgb.shape[1]})
    _, state = model.apply(variables, rgb, capture_intermediates=True, mutable=["intermediates"])
    return {k: np.asarray(v["__call__"][0]) for k, v in state["intermediates"].items() if k != "__call__"}


def assert_layers_match(ours: dict, ref: dict, tol: float = 1e-4) -> dict[str, float]:
    assert set(ref) <= set(ours), sorted(set(ref) - set(ours))
    errs = {k: float(np.linalg.norm(ours[k] - ref[k]) / np.linalg.norm(ref[k])) for k in ref}
    bad = {k: e for k, e in errs.items() if not e < tol}
    assert not bad, f"relative error >= {tol}: {bad}"
    return errs


def rgb_images(cfg: dict, n: int = 2) -> np.ndarray:
    return np.random.default_rng(7).uniform(0, 255, (n, cfg["size"], cfg["size"], 3)).astype(np.float32)


# ---------------------------------------------------------------- writers in the published layouts

def write_keras_vggface(path, layers: dict) -> None:
    """As keras-vggface's `model.save_weights`: every layer listed, weights under <layer>/<layer>/."""
    names = ["input_1"]
    for b, n in enumerate(DEPTHS, 1):
        names += [f"conv{b}_{i}" for i in range(1, n + 1)] + [f"pool{b}"]
    if "fc6" in layers:
        names += ["flatten", "fc6", "fc6/relu", "fc7", "fc7/relu", "fc8", "fc8/softmax"]
    with h5py.File(path, "w") as f:
        f.attrs["backend"], f.attrs["keras_version"] = b"tensorflow", b"2.0.8"
        f.attrs["layer_names"] = [n.encode() for n in names]
        for name in names:
            g = f.require_group(name)
            weights = [f"{name}/kernel:0", f"{name}/bias:0"] if name in layers else []
            g.attrs["weight_names"] = [w.encode() for w in weights]
            for w, a in zip(weights, layers.get(name, ())):
                g[w] = a


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _varint(v: int) -> bytes:
    out = b""
    while True:
        out += bytes([(v & 0x7F) | (0x80 if v > 0x7F else 0)])
        v >>= 7
        if not v:
            return out


def _bytes(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def _caffe_blob(a: np.ndarray, legacy: bool) -> bytes:
    data = _bytes(5, a.astype("<f4").tobytes())  # packed floats
    if legacy:  # num, channels, height, width (VGG_FACE.caffemodel)
        dims = (1,) * (4 - a.ndim) + a.shape
        return b"".join(_key(f, 0) + _varint(d) for f, d in zip((1, 2, 3, 4), dims)) + data
    return _bytes(7, _bytes(1, b"".join(_varint(d) for d in a.shape))) + data


def write_caffemodel(path, layers: dict, v1: bool) -> None:
    """NetParameter bytes: V1 `layers` (field 2, enum types) or current `layer` (field 100)."""
    net = _bytes(1, b"VGG_FACE_16_layers") + _bytes(3, b"data")
    entries = []
    for b, n in enumerate(DEPTHS, 1):
        for i in range(1, n + 1):
            entries += [(f"conv{b}_{i}", 4, "Convolution"), (f"relu{b}_{i}", 18, "ReLU")]
        entries.append((f"pool{b}", 17, "Pooling"))
    if "fc6" in layers:
        entries += [("fc6", 14, "InnerProduct"), ("relu6", 18, "ReLU"), ("drop6", 6, "Dropout"),
                    ("fc7", 14, "InnerProduct"), ("relu7", 18, "ReLU"), ("drop7", 6, "Dropout"),
                    ("fc8", 14, "InnerProduct"), ("prob", 20, "Softmax")]
    for name, enum, type_name in entries:
        blobs = layers.get(name, ())
        if v1:
            bias_shape = lambda a: a.reshape(1, 1, 1, -1)
            fc = lambda a: a.reshape(1, 1, *a.shape) if a.ndim == 2 else a
            body = (_bytes(2, b"x") + _bytes(3, b"y") + _bytes(4, name.encode()) + _key(5, 0) + _varint(enum)
                    + b"".join(_bytes(6, _caffe_blob(fc(a) if k == 0 else bias_shape(a), True))
                               for k, a in enumerate(blobs)))
            net += _bytes(2, body)
        else:
            body = (_bytes(1, name.encode()) + _bytes(2, type_name.encode()) + _bytes(3, b"x") + _bytes(4, b"y")
                    + b"".join(_bytes(7, _caffe_blob(a, False)) for a in blobs))
            net += _bytes(100, body)
    path.write_bytes(net)


def write_torch(path, layers: dict, zip_format: bool) -> None:
    torch = pytest.importorskip("torch", reason="PyTorch writes the .pth files under test")
    sd = collections.OrderedDict()
    for name, (w, b) in layers.items():
        sd[f"{name}.weight"], sd[f"{name}.bias"] = torch.from_numpy(w.copy()), torch.from_numpy(b.copy())
    torch.save(sd, path, _use_new_zipfile_serialization=zip_format)


# ---------------------------------------------------------------- equivalence, per format

FORMATS = {
    "keras-vggface": ("h5", "nhwc", "bgr"),
    "caffe-vggface-v1": ("caffemodel", "nchw", "bgr"),
    "caffe-vggface-layer": ("caffemodel", "nchw", "bgr"),
    "pytorch-vggface-zip": ("pth", "nchw", "rgb"),
    "pytorch-vggface-legacy": ("pth", "nchw", "rgb"),
}


def build(kind: str, tmp_path, cfg: dict, top: bool = True) -> tuple:
    """(format name, file, source-layout weights) for one of FORMATS."""
    ext, layout, _ = FORMATS[kind]
    path = tmp_path / f"{kind}_{'top' if top else 'notop'}.{ext}"
    if layout == "nhwc":
        layers = keras_layout_weights(cfg, top=top)
        write_keras_vggface(path, layers)
        return "keras-vggface", path, layers
    layers = torch_layout_weights(cfg, top=top)
    if kind.startswith("caffe"):
        write_caffemodel(path, layers, v1=kind.endswith("v1"))
        return "caffe-vggface", path, layers
    write_torch(path, layers, zip_format=kind.endswith("zip"))
    return "pytorch-vggface", path, layers


def reference(kind: str, layers: dict, rgb: np.ndarray) -> dict[str, np.ndarray]:
    """What the file's own framework computes on the same image (its channel order and mean)."""
    _, layout, order = FORMATS[kind]
    x = rgb[..., ::-1] - BGR_MEAN if order == "bgr" else rgb - RGB_MEAN
    return numpy_forward_nhwc(x, layers) if layout == "nhwc" else numpy_forward_nchw(x.transpose(0, 3, 1, 2), layers)


@pytest.mark.parametrize("top", [True, False], ids=["top", "notop"])
@pytest.mark.parametrize("kind", list(FORMATS))
def test_every_layer_matches_numpy(kind, top, tmp_path):
    fmt, path, layers = build(kind, tmp_path, SMALL, top)
    conv, variables = convert(fmt, path)
    assert conv.kwargs["include_top"] is top and tuple(conv.kwargs["widths"]) == SMALL["widths"]
    rgb = rgb_images(SMALL)
    errs = assert_layers_match(flax_layer_outputs(conv.kwargs, variables, rgb), reference(kind, layers, rgb))
    assert len(errs) == 16 if top else 13
    # The channel convention: BGR files have conv1_1's input channels reversed, RGB files not.
    k = variables["params"]["conv1_1"]["kernel"]
    src = layers["conv1_1"][0]
    src_hwio = src if FORMATS[kind][1] == "nhwc" else src.transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(k, src_hwio[:, :, ::-1] if FORMATS[kind][2] == "bgr" else src_hwio)


def test_pytorch_reference_agrees_when_installed(tmp_path):
    """A second independent implementation: torch's own conv2d/linear on the vgg_face_dag layout."""
    torch = pytest.importorskip("torch", reason="PyTorch is the second reference")
    fmt, path, layers = build("pytorch-vggface-zip", tmp_path, SMALL)
    conv, variables = convert(fmt, path)
    rgb = rgb_images(SMALL)
    ours = flax_layer_outputs(conv.kwargs, variables, rgb)
    sd = torch.load(path, weights_only=True)
    x = torch.from_numpy((rgb - RGB_MEAN).transpose(0, 3, 1, 2).copy())
    ref = {}
    for name in CONVS:
        y = torch.nn.functional.conv2d(x, sd[f"{name}.weight"], sd[f"{name}.bias"], padding=1)
        ref[name] = y.numpy().transpose(0, 2, 3, 1)
        x = torch.relu(y)
        if name.endswith(f"_{DEPTHS[int(name[4]) - 1]}"):
            x = torch.nn.functional.max_pool2d(x, 2)
    x = x.flatten(1)
    for name in ("fc6", "fc7", "fc8"):
        y = torch.nn.functional.linear(x, sd[f"{name}.weight"], sd[f"{name}.bias"])
        ref[name], x = y.numpy(), torch.relu(y)
    assert_layers_match(ours, ref)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["keras-vggface", "caffe-vggface-v1", "pytorch-vggface-legacy"])
def test_full_size_files(kind, tmp_path):
    """Published sizes (138M-parameter VGG-16, 2622 identities, 224x224): last layers vs NumPy."""
    fmt, path, layers = build(kind, tmp_path, FULL)
    conv, variables = convert(fmt, path)
    assert conv.kwargs == {"widths": list(FULL["widths"]), "include_top": True, "image_size": 224,
                           "fc_width": 4096, "num_identities": 2622}
    rgb = rgb_images(FULL, n=1)
    assert_layers_match(flax_layer_outputs(conv.kwargs, variables, rgb), reference(kind, layers, rgb))


# ---------------------------------------------------------------- clear failures

def test_missing_extra_and_misshapen_layers_are_named(tmp_path):
    layers = torch_layout_weights(SMALL)
    cut = {k: v for k, v in layers.items() if k != "conv3_2"}
    write_caffemodel(tmp_path / "cut.caffemodel", cut, v1=True)
    with pytest.raises(ConversionError, match=r"cut.caffemodel: missing layer weights \['params/conv3_2/bias', "
                                              r"'params/conv3_2/kernel'\]"):
        convert("caffe-vggface", tmp_path / "cut.caffemodel")
    bad = dict(layers)
    bad["conv2_2"] = (np.zeros((6, 5, 3, 3), np.float32), layers["conv2_2"][1])
    write_caffemodel(tmp_path / "bad.caffemodel", bad, v1=False)
    with pytest.raises(ConversionError, match=r"params/conv2_2/kernel: shape \(3, 3, 5, 6\) in the file, "
                                              r"the model expects \(3, 3, 6, 6\)"):
        convert("caffe-vggface", tmp_path / "bad.caffemodel")
    keras = keras_layout_weights(SMALL)
    keras["fc9"] = (np.zeros((5, 3), np.float32), np.zeros(3, np.float32))
    write_keras_vggface(tmp_path / "extra.h5", keras)
    with h5py.File(tmp_path / "extra.h5", "a") as f:
        f.attrs["layer_names"] = np.array([*f.attrs["layer_names"], b"fc9"], dtype="S")
        g = f.require_group("fc9")
        g.attrs["weight_names"] = [b"fc9/kernel:0", b"fc9/bias:0"]
        g["fc9/kernel:0"], g["fc9/bias:0"] = keras["fc9"]
    with pytest.raises(ConversionError, match=r"no place for \['params/fc9/bias', 'params/fc9/kernel'\]"):
        convert("keras-vggface", tmp_path / "extra.h5")
    torch_extra = dict(layers)
    torch_extra["fc8"] = (layers["fc8"][0], None)  # a weight without its bias
    del torch_extra["conv1_1"]
    pytest.importorskip("torch", reason="PyTorch writes the .pth file")
    import torch
    sd = collections.OrderedDict((f"{n}.weight", torch.from_numpy(w)) for n, (w, _) in torch_extra.items())
    torch.save(sd, tmp_path / "nobias.pth")
    with pytest.raises(ConversionError, match=r"missing layer conv1_1"):
        convert("pytorch-vggface", tmp_path / "nobias.pth")


def test_truncated_and_wrong_files_fail_with_offsets(tmp_path):
    fmt, path, _ = build("caffe-vggface-v1", tmp_path, SMALL)
    data = path.read_bytes()
    (tmp_path / "cut.caffemodel").write_bytes(data[: len(data) - 100])
    with pytest.raises(ConversionError, match=r"cut.caffemodel: .* at byte \d+ in NetParameter \(truncated"):
        convert("caffe-vggface", tmp_path / "cut.caffemodel")
    for kind in ("pytorch-vggface-legacy", "pytorch-vggface-zip"):
        fmt, path, _ = build(kind, tmp_path, SMALL)
        data = path.read_bytes()
        (tmp_path / "cut.pth").write_bytes(data[: len(data) - 300])
        with pytest.raises(ConversionError, match=r"cut.pth: (truncated at byte \d+|a zip archive without its "
                                                  r"central directory)"):
            convert("pytorch-vggface", tmp_path / "cut.pth")
    h5 = build("keras-vggface", tmp_path, SMALL)[1]
    with pytest.raises(ConversionError, match="neither a zip archive nor a legacy torch.save pickle"):
        convert("pytorch-vggface", h5)
    with pytest.raises(ConversionError, match="caffemodel: cannot read as Keras HDF5"):
        convert("keras-vggface", tmp_path / "cut.caffemodel")
    with pytest.raises(ConversionError, match=r"(no layer with weights|at byte \d+)"):
        convert("caffe-vggface", h5)
    with pytest.raises(ConversionError, match="unknown format 'onnx'"):
        convert("onnx", h5)


def test_keras_vggface_refuses_lambda_and_keras3(tmp_path):
    path = tmp_path / "lambda.h5"
    write_keras_vggface(path, keras_layout_weights(SMALL, top=False))
    with h5py.File(path, "a") as f:
        f.attrs["model_config"] = json.dumps({"class_name": "Model", "config": {"layers": [
            {"class_name": "Lambda", "config": {"name": "preprocess"}}]}})
    with pytest.raises(ConversionError, match=r"Lambda layers \['preprocess'\].*supported: Keras 2 HDF5"):
        convert("keras-vggface", path)
    with zipfile.ZipFile(tmp_path / "vggface.keras", "w") as z:
        z.writestr("config.json", "{}")
    with pytest.raises(ConversionError, match="Keras 3 `.keras` archive"):
        convert("keras-vggface", tmp_path / "vggface.keras")


def test_command_line_writes_weights_the_registry_loads_by_name(tmp_path, monkeypatch, capsys):
    assert convert_main.__module__ == "ferjax.convert.__main__"
    with pytest.raises(SystemExit):
        convert_main(["--help"])
    out = capsys.readouterr().out
    assert all(f in out for f in ("keras-vggface", "caffe-vggface", "pytorch-vggface", "fer-mini-xception")), out
    fmt, path, layers = build("keras-vggface", tmp_path, SMALL)
    assert convert_main([fmt, "--in", str(path), "--out", str(tmp_path / "models" / "vggface.msgpack")]) == 0
    card = json.loads((tmp_path / "models" / "vggface.json").read_text())
    assert card["converted_from"]["format"] == "keras-vggface" and len(card["converted_from"]["sha256"]) == 64
    monkeypatch.setenv("FERJAX_MODELS_DIR", str(tmp_path / "models"))
    model, variables, _ = pretrained.load("vggface")
    rgb = rgb_images(SMALL)
    ref = reference("keras-vggface", layers, rgb)["fc8"]
    out = np.asarray(model.apply(variables, rgb))
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-4
    assert convert_main([fmt, "--in", str(tmp_path / "none.h5"), "--out", str(tmp_path / "x.msgpack")]) == 2
    assert "none.h5: no such file" in capsys.readouterr().err


def test_backbone_weights_initialise_the_paper_model_and_freezing_stops_gradients(tmp_path):
    fmt, path, _ = build("pytorch-vggface-zip", tmp_path, SMALL, top=False)
    convert_file(fmt, path, tmp_path / "notop.msgpack")
    model = CLASSIFIERS.create("vggface_fer", image_size=64, widths=SMALL["widths"],
                               backbone_weights=str(tmp_path / "notop.msgpack"), trainable_from="conv5_1")
    x = np.random.default_rng(0).uniform(0, 255, (2, 48, 48, 1)).astype(np.float32)
    v = model.init(jax.random.key(0), x)
    _, converted = convert(fmt, path)
    for name in CONVS:
        np.testing.assert_array_equal(v["params"]["vggface"][name]["kernel"],
                                      converted["params"][name]["kernel"])
    g = jax.grad(lambda p: model.apply({"params": p}, x).sum())(v["params"])
    norms = {n: float(np.abs(g["vggface"][n]["kernel"]).sum()) for n in CONVS}
    assert all(norms[n] == 0 for n in CONVS[:10]) and all(norms[n] > 0 for n in CONVS[10:])
    with pytest.raises(ValueError, match="trainable_from='conv9_9'"):
        CLASSIFIERS.create("vggface_fer", image_size=64, widths=SMALL["widths"],
                           trainable_from="conv9_9").init(jax.random.key(0), x)
    _, abstract = template("vggface_fer", image_size=64, widths=SMALL["widths"])
    assert abstract["params"]["fc_hidden"]["kernel"].shape == (2 * 2 * 12, 128)


def test_vggface_fer2013_tiny_trains_from_converted_weights(tmp_path, synthetic_csv, tfds_dir):
    """The paper's recipe end to end (tiny variant): converted notop weights -> train -> report."""
    from conftest import run_cli

    fmt, path, _ = build("pytorch-vggface-zip", tmp_path, dict(SMALL, widths=(4, 4, 8, 8, 8)), top=False)
    convert_file(fmt, path, tmp_path / "notop.msgpack")
    wd = tmp_path / "run"
    proc = run_cli("--experiment=vggface_fer2013:tiny", f"--config.backbone_weights={tmp_path / 'notop.msgpack'}",
                   f"--workdir={wd}", "--jax_cache_dir=",
                   env_extra={"FER2013_PATH": str(synthetic_csv), "TFDS_DATA_DIR": str(tfds_dir)})
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["experiment"] == "vggface_fer2013:tiny" and summary["classifier"] == "vggface_fer"
    assert summary["test_report"]["n"] == 64
    assert (wd / "curves.png").is_file() and (wd / "confusion_test.png").is_file()
    kwargs = json.loads((wd / "config.json").read_text())["classifier_kwargs"]
    assert kwargs["backbone_weights"] == str(tmp_path / "notop.msgpack")


def test_bench_has_a_pytorch_twin_of_the_paper_model():
    pytest.importorskip("torch", reason="the twin is PyTorch")
    from ferjax.bench_torch import torch_twin

    twin = torch_twin("vggface_fer")
    _, abstract = template("vggface_fer")
    assert sum(p.numel() for p in twin.parameters()) == sum(
        int(np.prod(a.shape)) for a in jax.tree.leaves(abstract["params"])) == 17_926_983


def test_caffe_dimensions_beyond_int64_are_refused_by_name(tmp_path):
    """Blob dimensions are 64-bit varints: they used to go through numpy int64 (OverflowError for
    2**64-1, a wrapped product for 2**32 x 2**32, a reshape ValueError for 2**32 x 2**32 x 0)."""
    def net(dims: list[int], values: int) -> bytes:
        blob = _bytes(7, _bytes(1, b"".join(_varint(d) for d in dims))) + _bytes(5, bytes(4 * values))
        return _bytes(100, _bytes(1, b"conv1_1") + _bytes(7, blob))
    for i, (dims, values) in enumerate([([2**64 - 1], 1), ([2**32, 2**32], 1), ([2**32, 2**32, 0], 0)]):
        (tmp_path / f"{i}.caffemodel").write_bytes(net(dims, values))
        with pytest.raises(ConversionError, match=rf"{i}.caffemodel: conv1_1.blobs\[0\]: shape \({dims[0]},"):
            convert("caffe-vggface", tmp_path / f"{i}.caffemodel")


def test_keras_datasets_must_be_stored_and_configs_well_formed(tmp_path):
    """An HDF5 header may declare a dataset of any shape over a fill value (no bytes stored): it
    used to be allocated in full (here 400 MB from a 30 KB file); a model_config that is JSON
    but not a Keras model ended in AttributeError."""
    from fuzzing import MemoryWatch

    path = tmp_path / "huge.h5"
    write_keras_vggface(path, keras_layout_weights(SMALL, top=False))
    with h5py.File(path, "a") as f:
        del f["conv1_1/conv1_1/kernel:0"]
        f["conv1_1"].create_dataset("conv1_1/kernel:0", shape=(100_000_000,), dtype="f4")
    assert path.stat().st_size < 1 << 20
    with MemoryWatch() as watch, pytest.raises(ConversionError, match=r"huge.h5: /conv1_1/conv1_1/kernel:0 "
                                                                       r"declares 400000000 bytes"):
        convert("keras-vggface", path)
    assert watch.grown_mb < 100, f"refusing took {watch.grown_mb:.0f} MB"
    for config in ("[1, 2]", '{"config": {"layers": [{"class_name": "Dense"}]}}', '"text"'):
        write_keras_vggface(path, keras_layout_weights(SMALL, top=False))
        with h5py.File(path, "a") as f:
            f.attrs["model_config"] = config
        with pytest.raises(ConversionError, match="huge.h5: model_config is not a Keras model"):
            convert("keras-vggface", path)


def test_keras_file_whose_string_heap_loops_libhdf5_is_refused(tmp_path):
    """A global heap object of size 0 (where `layer_names` strings live) made libhdf5 loop forever
    inside h5py, holding the GIL (found by the fuzzer). Run in a child process: the old code hangs."""
    path = tmp_path / "loop.h5"
    write_keras_vggface(path, keras_layout_weights(SMALL, top=False))
    data = bytearray(path.read_bytes())
    at = data.find(b"GCOL")
    assert at > 0 and data[at + 4] == 1
    data[at + 16:at + 32] = bytes(16)  # first object: index 0 (free space) of size 0
    path.write_bytes(bytes(data))
    script = ("import sys\nfrom ferjax.convert import ConversionError, keras_h5\ntry:\n    keras_h5.read(sys.argv[1])\n"
              "except ConversionError as e:\n    print(e)\n")
    try:
        proc = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "JAX_PLATFORMS": "cpu"})
    except subprocess.TimeoutExpired:
        pytest.fail("reading the file did not end within 60 s (libhdf5 loops on the heap)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"{path}: corrupt HDF5 global heap at byte {at}: object 0" in proc.stdout, proc.stdout
