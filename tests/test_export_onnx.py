"""ONNX export (`ferjax export`, `ferjax.export.to_onnx`): a shipped classifier, exported once for
this module, gives the JAX Predictor's probabilities on 64 faces (the first 64 PrivateTest rows of
the real FER2013 when present, else synthetic faces drawn here): argmax agreement 100% and max
|difference| < 1e-4; the batch is symbolic (1 and 5 run); the card's fields and sha256 hold; the
int8 export runs and agrees with JAX on at least 60 of 64 faces; `Analyzer(backend="onnxruntime")`
exports into the cache once and labels a photo as the JAX Analyzer does. The default suite exports two
models, one of each architecture (the default model, vgg_small with logit adjustment, and
mini_xception); the other four are in the slow set (jax2onnx takes about 11 s for its first
conversion in a process and 12 s for mini_xception, 1-3 s for each further vgg_small). The full
3,589-face figures are on docs/deploy.md (tools/onnx_equality.py)."""
from __future__ import annotations

import gzip
import hashlib
import json

import cv2
import numpy as np
import pytest

from conftest import MEDIA, REAL_FER

pytest.importorskip("jax2onnx", reason="the onnx extra (jax2onnx, onnx, onnxruntime) converts the models")
pytest.importorskip("onnxruntime", reason="the onnx extra (jax2onnx, onnx, onnxruntime) runs the exports")

from ferjax import command, export, pretrained  # noqa: E402
from ferjax.data.records import EMOTIONS  # noqa: E402
from ferjax.inference import Predictor  # noqa: E402

SHIPPED = ["fer2013_distilled", "fer2013_distilled_adjusted", "fer2013_robust_small", "fer2013_vgg_small",
           "fer2013_video", "fer_mini_xception", "ferplus_vgg_small"]
DEFAULT_SET = ("fer2013_distilled_adjusted", "fer_mini_xception")
MODELS = [n if n in DEFAULT_SET else pytest.param(n, marks=pytest.mark.slow) for n in SHIPPED]
N_FACES = 64
INT8_MODEL = "fer2013_distilled_adjusted"


def _first_private_test_rows(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `n` PrivateTest rows of the real CSV, read line by line (the rows end the file:
    the full reader would parse the 32,298 rows before them)."""
    images, labels = [], []
    with gzip.open(REAL_FER / "fer2013.csv.gz", "rb") as f:
        for line in f:
            if line.rstrip().endswith(b",PrivateTest"):
                label, pixels, _ = line.split(b",")
                images.append(np.array(pixels.split(), np.uint8).reshape(48, 48, 1))
                labels.append(int(label))
                if len(images) == n:
                    break
    return np.stack(images).astype(np.float32), np.array(labels)


def _synthetic_faces(n: int, seed: int = 0) -> np.ndarray:
    """Grey cartoon faces: an oval, two eyes, brows and a mouth whose curve, opening and tilt vary."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, 48, 48, 1), np.float32)
    for i in range(n):
        img = rng.normal(rng.uniform(30, 90), 12, (48, 48)).clip(0, 255).astype(np.uint8)
        skin = int(rng.uniform(120, 220))
        cv2.ellipse(img, (24 + int(rng.integers(-2, 3)), 25), (int(rng.integers(14, 19)), int(rng.integers(18, 23))),
                    0, 0, 360, skin, -1)
        eye = int(rng.integers(1, 4))
        for x in (17, 31):
            cv2.circle(img, (x, 20), eye, skin - 90, -1)
            cv2.line(img, (x - 4, 15 + int(rng.integers(-2, 3))), (x + 4, 15 + int(rng.integers(-2, 3))), skin - 80, 1)
        curve, open_ = int(rng.integers(-5, 6)), int(rng.integers(0, 5))
        cv2.ellipse(img, (24, 34), (7, max(1, abs(curve))), 0, 0 if curve > 0 else 180, 180 if curve > 0 else 360,
                    skin - 100, 1 + open_ // 2)
        out[i, ..., 0] = cv2.GaussianBlur(img, (3, 3), 0)
    return out


@pytest.fixture(scope="module")
def faces() -> tuple[np.ndarray, str]:
    if (REAL_FER / "fer2013.csv.gz").is_file():
        return _first_private_test_rows(N_FACES)[0], "real"
    return _synthetic_faces(N_FACES), "synthetic"


@pytest.fixture(scope="module")
def exported(tmp_path_factory, faces):
    """exported(name) -> (.onnx path, card returned by to_onnx, JAX Predictor probabilities, ONNX
    Runtime probabilities on the 64 faces): each model exported and run once for the module."""
    out, done = tmp_path_factory.mktemp("onnx"), {}
    x, _ = faces

    def get(name: str) -> tuple:
        if name not in done:
            path = out / f"{name}.onnx"
            card = export.to_onnx(name, path)
            model, variables, source_card = pretrained.load(name)
            reference = Predictor(model, variables, buckets=(N_FACES,), class_names=source_card.get("classes"))(x)
            done[name] = (path, card, reference, export.predict(export.session(path), x, batch=N_FACES))
        return done[name]

    return get


def test_the_shipped_list_is_every_registered_model_with_weights():
    """A newly shipped model fails here until it joins SHIPPED (vggface counts once converted)."""
    assert sorted(n for n in export.shipped_models() if n != "vggface") == SHIPPED


@pytest.mark.parametrize("name", MODELS)
def test_float32_onnx_gives_the_jax_probabilities(name, exported, faces):
    _, _, reference, onnx_probs = exported(name)
    figures = export.compare(reference, onnx_probs)
    assert onnx_probs.shape == (N_FACES, 7) and onnx_probs.dtype == np.float32
    assert figures["argmax_agreement"] == 1.0, (faces[1], figures)
    assert figures["max_abs_diff"] < 1e-4, (faces[1], figures)
    np.testing.assert_allclose(onnx_probs.sum(1), 1.0, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_the_batch_is_symbolic(name, exported, faces):
    path, _, reference, _ = exported(name)
    sess = export.session(path)
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, inp.shape, inp.type) == ("faces", ["N", 48, 48, 1], "tensor(float)")
    assert (out.name, out.shape) == ("probabilities", ["N", 7])
    x, _ = faces
    for batch in (1, 5):
        got = sess.run(None, {"faces": x[:batch]})[0]
        assert got.shape == (batch, 7)
        np.testing.assert_allclose(got, reference[:batch], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_the_card_describes_the_file(name, exported):
    path, card, _, _ = exported(name)
    assert json.loads(export.card_path(path).read_text()) == card
    assert card["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert card["bytes"] == path.stat().st_size
    assert card["source_model"] == card["name"] == name
    assert card["source_weights_sha256"] == pretrained.weights_sha256(name)
    assert card["labels"] == list(EMOTIONS)
    assert card["input"]["shape"] == ["N", 48, 48, 1] and card["input"]["layout"] == "NHWC"
    assert card["input"]["dtype"] == "float32" and "0..255" in card["normalisation"]
    assert card["outputs"][0]["shape"] == ["N", 7] and card["outputs"][0]["name"] == "probabilities"
    assert card["quantization"] == "none (float32)"
    assert card["ferjax_version"] == __import__("ferjax").__version__
    assert card["converter"]["jax2onnx"] and card["opset"] == export.OPSET
    adjusted = "logit_adjustment" in pretrained.load(name)[2]  # its source model card says so
    assert card["logit_adjustment"].startswith("in the weights" if adjusted else "none")
    meta = export.session(path).get_modelmeta().custom_metadata_map
    assert meta["ferjax_source_model"] == name and json.loads(meta["ferjax_labels"]) == list(EMOTIONS)


def test_int8_export_runs_and_agrees_with_jax(exported, faces, tmp_path, capsys):
    """`ferjax export MODEL --int8`, through the command: about 4x smaller than float32 (int8
    kernels), and the same argmax as JAX on at least 60 of the 64 faces (the full PrivateTest
    figures, accuracy within 0.5 point of float32, are on docs/deploy.md)."""
    path = tmp_path / "int8.onnx"
    assert command.dispatch(["export", INT8_MODEL, "--format", "onnx", "--out", str(path), "--int8"]) == 0
    printed = json.loads(capsys.readouterr().out)
    card = json.loads((tmp_path / "int8.json").read_text())
    assert printed["sha256"] == card["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert card["name"] == f"{INT8_MODEL}_int8" and card["quantization"].startswith("dynamic int8")
    float_path, _, reference, _ = exported(INT8_MODEL)
    assert path.stat().st_size < float_path.stat().st_size / 3
    x, _ = faces
    got = export.predict(export.session(path), x, batch=1)
    figures = export.compare(reference, got)
    assert got.shape == (N_FACES, 7)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-4)
    assert figures["argmax_agreement"] >= 60 / 64, (faces[1], figures)


def test_refusals_come_before_any_work(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"ending in \.onnx"):
        export.to_onnx("fer2013_vgg_small", tmp_path / "model.msgpack")
    assert command.dispatch(["export", "no_such_model", "--out", str(tmp_path / "x.onnx")]) == 1
    assert "unknown pretrained model 'no_such_model'" in capsys.readouterr().err
    assert command.dispatch(["export", "fer2013_vgg_small", "--out", str(tmp_path / "x.json")]) == 1
    assert not list(tmp_path.iterdir())


def test_analyzer_onnxruntime_backend_exports_once_into_the_cache_and_labels_as_jax(exported, faces, tmp_path,
                                                                                     monkeypatch):
    """`Analyzer(..., backend="onnxruntime")`: the model is exported into $FERJAX_CACHE_DIR/onnx on
    first use, named by its weights' sha256, and reused; the same probabilities as JAX (1e-4) on
    the 64 faces, and on a photo of four of them (each upscaled to 160 px) the same boxes and labels
    as the JAX Analyzer sharing the same detector settings."""
    from ferjax import Analyzer

    monkeypatch.setenv("FERJAX_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="backend="):
        Analyzer("yunet", INT8_MODEL, backend="tensorrt")
    analyzer = Analyzer("yunet", INT8_MODEL, backend="onnxruntime")
    path = analyzer.predictor.path
    assert path == tmp_path / "cache" / "onnx" / f"{INT8_MODEL}-{pretrained.weights_sha256(INT8_MODEL)}.onnx"
    stamp = path.stat().st_mtime_ns
    assert export.load_onnx_predictor(INT8_MODEL).path == path and path.stat().st_mtime_ns == stamp  # reused
    x, _ = faces
    _, _, reference, _ = exported(INT8_MODEL)
    np.testing.assert_allclose(analyzer.predictor(x), reference, atol=1e-4, rtol=0)
    assert analyzer.model_desc == f"pretrained {INT8_MODEL} (onnxruntime)"

    tiles = [cv2.resize(x[i, ..., 0].astype(np.uint8), (160, 160), interpolation=cv2.INTER_CUBIC) for i in range(4)]
    photo = cv2.cvtColor(np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:])]), cv2.COLOR_GRAY2BGR)
    jax_faces = Analyzer("yunet", INT8_MODEL).analyze(photo)
    onnx_faces = analyzer.analyze(photo)
    assert len(jax_faces) >= 2  # YuNet finds 3 of the 4 real faces, all 4 synthetic ones
    assert [f.box for f in onnx_faces] == [f.box for f in jax_faces]
    assert [f.label for f in onnx_faces] == [f.label for f in jax_faces]
    for a, b in zip(onnx_faces, jax_faces):
        assert max(abs(a.probs[k] - b.probs[k]) for k in a.probs) < 1e-4


def test_auto_backend_resolves_by_the_benchmarks_rule():
    """"auto" follows `AUTO_PREFERS` for registered models where the onnx extra is installed; a
    loaded predictor runs where it was built; unknown backends are refused by name."""
    from ferjax import analyzer

    assert analyzer.onnx_available()
    assert analyzer.resolve_backend(None) == analyzer.resolve_backend("auto") == analyzer.AUTO_PREFERS
    assert analyzer.resolve_backend("auto", classifier="vgg_small") == "jax"  # random weights: JAX only
    assert analyzer.resolve_backend("jax") == "jax" and analyzer.resolve_backend("onnxruntime") == "onnxruntime"
    with pytest.raises(ValueError, match="'tensorrt'"):
        analyzer.resolve_backend("tensorrt")


def test_analyze_command_backend_flag_labels_a_photo_as_jax_does(faces, tmp_path, capsys):
    """`ferjax analyze PHOTO --backend onnxruntime` and `--backend jax`: the same boxes and labels,
    probabilities within 1e-4 (as printed, rounded to 4 places); a backend it does not know is a
    usage error (exit 2) before any model loads."""
    x, _ = faces
    tiles = [cv2.resize(x[i, ..., 0].astype(np.uint8), (160, 160), interpolation=cv2.INTER_CUBIC) for i in range(4)]
    photo = tmp_path / "four.png"
    cv2.imwrite(str(photo), np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:])]))
    out = {}
    for backend in ("jax", "onnxruntime"):
        assert command.dispatch(["analyze", str(photo), "--backend", backend]) == 0
        out[backend] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["faces"]
    assert len(out["jax"]) >= 2
    assert [f["box"] for f in out["onnxruntime"]] == [f["box"] for f in out["jax"]]
    assert [f["label"] for f in out["onnxruntime"]] == [f["label"] for f in out["jax"]]
    for a, b in zip(out["onnxruntime"], out["jax"]):
        assert max(abs(a["probs"][k] - b["probs"][k]) for k in a["probs"]) <= 2e-4
    with pytest.raises(SystemExit) as e:
        command.dispatch(["analyze", str(photo), "--backend", "tensorrt"])
    assert e.value.code == 2 and "invalid choice: 'tensorrt'" in capsys.readouterr().err


@pytest.mark.slow  # 25 s on the 2-core VM: in the slow set (pytest -m slow), which CI runs too
@pytest.mark.skipif(not (MEDIA / "one_face_short.mp4").is_file(), reason=f"shared videos not found at {MEDIA}")
def test_backend_benchmark_times_both_and_finds_the_same_labels_on_a_real_video(tmp_path, capsys):
    """`python -m ferjax.backend_bench` on 12 frames of a real video: classifier rows for batch
    1/8/32 and pipeline FPS for both backends, and every face labelled alike (no near-tie needed)."""
    from ferjax import backend_bench

    out = tmp_path / "bench.json"
    assert backend_bench.main(["--videos", str(MEDIA / "one_face_short.mp4"), "--max-frames", "12", "--rounds", "1",
                               "--repeats", "3", "--iters", "1", "--json-out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert "| one_face_short.mp4 | 12 |" in capsys.readouterr().out
    assert [r["batch"] for r in report["classifier"]] == list(backend_bench.BATCHES)
    assert all(r["jax_ms"] > 0 and r["onnxruntime_ms"] > 0 for r in report["classifier"])
    (row,) = report["pipeline"]
    assert row["frames"] == 12 and row["jax_fps"] > 0 and row["onnxruntime_fps"] > 0
    agreement = report["agreement"]["one_face_short.mp4"]
    assert agreement["faces"] >= 12 and agreement["same_label"] == agreement["faces"]
    assert agreement["frames_with_other_boxes"] == 0 and agreement["max_abs_diff"] < 1e-4
    assert set(report["decision"]) >= {"onnxruntime_default", "faster_on_every_video", "labels_equal"}
