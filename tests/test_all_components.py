"""Every registered component, the way timm tests every registered model: parametrised over the
registries at collection time, so a component added later (built-in or plugin) is covered without
writing a test. Large models run at a small input size; an exclusion must name its reason here.
"""
from __future__ import annotations

import re

import cv2
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from ferjax import config as cfg_lib
from ferjax import pretrained
from ferjax.registry import (CLASSIFIERS, CURATION_SIGNALS, DATASETS, DETECTORS, DISCRIMINATORS,
                             GENERATORS, LOSSES, PRETRAINED)
from conftest import MEDIA, MODELS, require_detector, require_files

SMALL_IMAGE = 32  # input side for classifiers that resize internally (VGG-Face's 224 costs ~50x more)
FACE_VIDEO = MEDIA / "one_face_pexels_640x360.mp4"


def _grey_batch(n: int, seed: int = 0) -> jnp.ndarray:
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (n, 48, 48, 1)), jnp.float32)


def _faces_in_unit_range(n: int, seed: int = 0) -> jnp.ndarray:
    return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, (n, 48, 48, 1)), jnp.float32)


def _finite(tree) -> bool:
    return all(bool(jnp.isfinite(leaf).all()) for leaf in jax.tree.leaves(tree))


def _apply(model, variables, x, rng=None, train=False):
    """Applies a linen module the way the train steps do (batch stats mutable when training)."""
    if not train:
        return model.apply(variables, x, train=False)
    out, _ = model.apply(variables, x, train=True, mutable=["batch_stats"],
                         rngs={"dropout": rng if rng is not None else jax.random.key(1)})
    return out


# ------------------------------------------------------------------------------ classifiers
# Registered classifiers that break the classifier contract, each with its reason. strict xfail:
# the test fails as soon as one of them meets the contract, so the entry must then be removed.
CLASSIFIER_CONTRACT_BREAKS = {
    "vggface": "the VGG-Face identity backbone (2622 identity logits, no num_classes): not an "
               "expression classifier; it belongs in a registry kind of its own",
}


# The default suite checks the contract on vgg_small; the others, costlier to compile, in the slow
# set (mini_xception's and vggface_fer's forward passes keep default tests: tests/test_mini_xception.py,
# tests/test_mixed_precision.py).
DEFAULT_CLASSIFIERS = {"vgg_small"}


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=[pytest.mark.xfail(reason=CLASSIFIER_CONTRACT_BREAKS[n], strict=True), pytest.mark.slow])
    if n in CLASSIFIER_CONTRACT_BREAKS else n if n in DEFAULT_CLASSIFIERS else pytest.param(n, marks=pytest.mark.slow)
    for n in CLASSIFIERS.names()])
def test_classifier_forward_and_one_train_step(name):
    """[N,48,48,1] grey levels 0..255 -> [N,7] logits; one gradient step lowers the loss and
    keeps everything finite (loss, gradient norm, new weights)."""
    kwargs = {"image_size": SMALL_IMAGE} if "image_size" in (CLASSIFIERS.accepted(name) or ()) else {}
    model = CLASSIFIERS.create(name, **kwargs)
    x, labels = _grey_batch(4), jnp.arange(4) % 7
    # jitted: op by op, init and the gradient of the deeper models cost 2-3x more on a CPU
    variables = jax.jit(lambda k: model.init(k, x[:1], train=False))(jax.random.key(0))
    logits = jax.jit(lambda v: _apply(model, v, x))(variables)
    assert logits.shape == (4, 7) and _finite(logits)
    loss_fn = LOSSES.create("cross_entropy")

    @jax.jit
    def objective(p):
        return loss_fn(_apply(model, {**variables, "params": p}, x, train=True), labels)

    loss, grads = jax.jit(jax.value_and_grad(objective))(variables["params"])
    grad_norm = float(optax.tree.norm(grads))
    assert np.isfinite(float(loss)) and np.isfinite(grad_norm) and grad_norm > 0
    params = optax.apply_updates(variables["params"], jax.tree.map(lambda g: -0.01 * g, grads))
    assert _finite(params) and float(objective(params)) < float(loss)  # one SGD step helps
    assert any(not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(params), jax.tree.leaves(variables["params"])))


# ------------------------------------------------------------------------------ losses
def _ssim_reference(a: np.ndarray, b: np.ndarray, max_val: float) -> float:
    """Mean SSIM (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, valid
    filtering, written from the paper with numpy (independent of dm-pix)."""
    t = np.arange(11) - 5.0
    g = np.exp(-t ** 2 / (2 * 1.5 ** 2))
    g /= g.sum()

    def blur(img):  # separable 'valid' filtering of [H,W]
        rows = np.apply_along_axis(lambda r: np.convolve(r, g, "valid"), 1, img)
        return np.apply_along_axis(lambda c: np.convolve(c, g, "valid"), 0, rows)

    c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2
    scores = []
    for x, y in zip(a.astype(np.float64), b.astype(np.float64)):
        per_channel = []
        for ch in range(x.shape[-1]):
            xi, yi = x[..., ch], y[..., ch]
            mx, my = blur(xi), blur(yi)
            sxx, syy, sxy = blur(xi * xi) - mx ** 2, blur(yi * yi) - my ** 2, blur(xi * yi) - mx * my
            ssim_map = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
            per_channel.append(ssim_map)
        scores.append(np.mean(per_channel))
    return float(np.mean(scores))


def _image_pair():
    a = _faces_in_unit_range(2, 0)
    b = jnp.clip(a + 0.3 * _faces_in_unit_range(2, 1), -1, 1)
    return a, b


def _ce_case():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(6, 7)) * 3, jnp.float32)
    labels = jnp.asarray([0, 1, 2, 3, 4, 6])
    return {"label_smoothing": 0.1}, (logits, labels)


def _ce_reference(logits, labels):
    z = np.asarray(logits, np.float64)
    log_p = z - z.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    target = np.full(z.shape, 0.1 / 7)
    target[np.arange(len(z)), np.asarray(labels)] += 0.9
    return float(-(target * log_p).sum(1).mean())


def _l1(a, b):
    return float(np.mean(np.abs(np.float64(a) - np.float64(b))))


def _l2(a, b):
    return float(np.mean((np.float64(a) - np.float64(b)) ** 2))


# name -> (factory kwargs and call args, numpy reference of the value). A loss registered later
# needs an entry: the reference test fails for it until one is written.
LOSS_REFERENCES = {
    "cross_entropy": (_ce_case, _ce_reference),
    "lsgan": (lambda: ({}, (_faces_in_unit_range(2), 1.0)), lambda p, t: _l2(p, t)),
    "l1": (lambda: ({}, _image_pair()), _l1),
    "ssim": (lambda: ({}, _image_pair()), lambda a, b: 1 - _ssim_reference(np.asarray(a), np.asarray(b), 2.0)),
    "cycle_l1_l2_ssim": (lambda: ({}, _image_pair()), lambda a, b: (
        _l1(a, b) + _l2(a, b) + 1 - _ssim_reference(np.asarray(a), np.asarray(b), 2.0)) / 3),
}


@pytest.mark.parametrize("name", LOSSES.names())
def test_loss_matches_independent_reference_and_has_finite_gradient(name):
    if name not in LOSS_REFERENCES:
        pytest.fail(f"loss {name!r} has no independent reference: add one to LOSS_REFERENCES")
    make_case, reference = LOSS_REFERENCES[name]
    kwargs, args = make_case()
    loss = LOSSES.create(name, **kwargs)
    value = float(loss(*args))
    assert value == pytest.approx(reference(*args), rel=1e-5, abs=1e-6)
    grad = jax.grad(lambda first: loss(first, *args[1:]))(args[0])
    assert grad.shape == args[0].shape and _finite(grad) and float(jnp.abs(grad).sum()) > 0


# ------------------------------------------------------------------------------ GAN networks
def _output_and_check_gradients(model, objective):
    """Output on two faces in [-1, 1] (inference mode), after checking that the training-mode
    gradient of `objective(output)` is finite and not zero."""
    x = _faces_in_unit_range(2)
    variables = jax.jit(lambda k: model.init(k, x, train=False))(jax.random.key(0))
    grads = jax.jit(jax.grad(lambda p: objective(_apply(model, {**variables, "params": p}, x, train=True))))(
        variables["params"])
    assert _finite(grads) and float(optax.tree.norm(grads)) > 0
    return jax.jit(lambda v: _apply(model, v, x))(variables)


@pytest.mark.parametrize("name", GENERATORS.names())
def test_generator_maps_faces_to_faces(name):
    """48x48 grey faces in [-1, 1] -> the same shape in [-1, 1]; training mode has finite gradients."""
    y = _output_and_check_gradients(GENERATORS.create(name), lambda out: jnp.mean(out ** 2))
    assert y.shape == (2, 48, 48, 1) and _finite(y) and float(jnp.abs(y).max()) <= 1.0


@pytest.mark.parametrize("name", DISCRIMINATORS.names())
def test_discriminator_scores_faces(name):
    """48x48 grey faces in [-1, 1] -> one score per image or per patch; finite gradients."""
    scores = _output_and_check_gradients(DISCRIMINATORS.create(name), jnp.mean)
    assert scores.shape[0] == 2 and scores.shape[-1] == 1 and _finite(scores)


# ------------------------------------------------------------------------------ detectors
@pytest.fixture(scope="module")
def face_frame() -> np.ndarray:
    require_files(FACE_VIDEO, why="real face video")
    ok, frame = cv2.VideoCapture(str(FACE_VIDEO)).read()
    assert ok, f"cannot decode {FACE_VIDEO}"
    return frame


@pytest.mark.parametrize("name", DETECTORS.names())
def test_detector_on_a_real_frame_and_a_blank_one(name, face_frame):
    """One face in the first frame of a real video (boxes finite, inside the frame); none in a
    blank frame of the same size."""
    require_detector(name)  # skips only when its files are absent; the code's own errors fail
    det = DETECTORS.create_accepting(name, {"models_dir": str(MODELS)})
    h, w = face_frame.shape[:2]
    found = det(face_frame)
    assert len(found) == 1, f"{name}: {len(found)} detections on a one-face frame"
    x1, y1, x2, y2 = found[0].box
    assert np.isfinite(found[0].box).all() and 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
    assert det(np.zeros_like(face_frame)) == []


# ------------------------------------------------------------------------------ curation signals
@pytest.mark.parametrize("name", CURATION_SIGNALS.names())
def test_curation_signal_on_a_real_face_and_a_blank_image(name, face_frame):
    """Training = [a real face cropped to 48x48 grey, a blank image, that face again]; a test split
    holding the face once more. One result per Training row, flagged rows have reasons, the real
    face is never flagged as not a face, the blank image never as a face problem of another group."""
    from ferjax.curation.signals import GROUPS, SignalResult

    require_detector("yunet")
    box = DETECTORS.create_accepting("yunet", {"models_dir": str(MODELS)})(face_frame)[0].box
    x1, y1, x2, y2 = (int(v) for v in box)
    face = cv2.resize(cv2.cvtColor(face_frame[y1:y2, x1:x2], cv2.COLOR_BGR2GRAY), (48, 48))[..., None]
    images = np.stack([face, np.full_like(face, 128), face])
    splits = {"train": {"image": images, "label": np.array([3, 3, 3]), "row": np.arange(3)},
              "test": {"image": face[None], "label": np.array([3]), "row": np.array([9])}}
    signal = CURATION_SIGNALS.create_accepting(name, {"models_dir": str(MODELS)})
    res = signal(splits, None)
    assert isinstance(res, SignalResult) and res.group in GROUPS
    assert res.score.shape == res.flagged.shape == (3,) and len(res.reason) == 3
    assert all(bool(r) == f for r, f in zip(res.reason, res.flagged)), res.reason
    if res.group == "non_face":
        assert not res.flagged[0], f"{name} flags a real face: {res.reason[0]}"
    if res.group == "duplicate":  # both copies of the face leak the test image
        assert res.flagged[0] and res.flagged[2]


# ------------------------------------------------------------------------------ datasets
@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_on_small_data(name, synthetic_csv, tmp_path_factory):
    """Split arrays on the 288-row synthetic FER2013 file: train and validation present, images
    [N,48,48,1] uint8 and labels 0..6 of equal length."""
    data = ml_collections.ConfigDict({"fer2013_path": str(synthetic_csv), "skip_bad_rows": False,
                                      "tfds_data_dir": str(tmp_path_factory.mktemp("tfds")),
                                      "limit_per_split": 0})
    if name == "derived":  # a derived dataset is a folder: one removal, relabel and addition
        from ferjax.data.derived import DerivedBuilder

        builder = DerivedBuilder("fer2013", data)
        builder.remove(0, "test")
        builder.relabel(1, "happy", "test")
        builder.add(builder.base_splits["train"]["image"][:1], ["disgust"], source="original",
                    base_rows=[2], reason="test copy")
        data.derived_dir = str(builder.write(tmp_path_factory.mktemp("derived") / "set", "test"))
    splits = DATASETS.create(name, cfg=data, protocol="original")
    assert {"train", "validation"} <= set(splits)
    for split, arrays in splits.items():
        assert arrays["image"].dtype == np.uint8 and arrays["image"].shape[1:] == (48, 48, 1), split
        assert len(arrays["label"]) == len(arrays["image"]) > 0, split
        assert set(np.unique(arrays["label"])) <= set(range(7)), split


# ------------------------------------------------------------------------------ pretrained
@pytest.mark.parametrize("name", PRETRAINED.names())
def test_pretrained_model_loads_and_predicts(name):
    require_files(PRETRAINED.get(name)().weights, why=f"weights of {name} (made by a converter)")
    model, variables, card = pretrained.load(name)
    logits = model.apply(variables, _grey_batch(2), train=False)
    assert logits.shape == (2, len(card.get("classes", range(7)))) and _finite(logits)
    assert card.get("protocol"), f"{name}: its model card states no protocol"


# ------------------------------------------------------------------------------ experiments
def _specs() -> list[str]:
    return [spec for name in cfg_lib.experiment_names()
            for spec in [name] + [f"{name}:{v}" for v in cfg_lib.variants(name)]]


@pytest.mark.parametrize("spec", _specs())
def test_experiment_variant_prints_its_config(spec, capsys):
    """`--experiment=SPEC --print_config` succeeds: every experiment and every declared variant
    builds, validates and locks."""
    from absl import flags

    from ferjax import run

    argv = flags.FLAGS(["ferjax", f"--experiment={spec}", "--print_config"])
    try:
        rc = run.main(argv)
    finally:
        flags.FLAGS.unparse_flags()
    out, err = capsys.readouterr()
    assert rc == 0, err
    task = cfg_lib.build(spec).task
    assert re.search(rf"^task: {re.escape(task)}$", out, re.M), out[:500]
