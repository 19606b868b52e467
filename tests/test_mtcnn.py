"""JAX MTCNN: weight reading, TF-compatible crops, NMS, and boxes vs the mtcnn package's own."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import cv2
import jax.numpy as jnp
import lz4.frame
import numpy as np
import pytest

from ferjax.convert.mapping import ConversionError
from ferjax.realtime import models, mtcnn_weights
from ferjax.realtime.detect import box_iou
from ferjax.realtime.mtcnn import MTCNN, crop_and_resize, nms, scale_pyramid
from conftest import detector_files, require_detector
from fuzzing import MemoryWatch

SHARED = Path(os.environ.get("FERJAX_SHARED", Path(__file__).resolve().parents[2] / "shared"))
MEDIA, MODELS = SHARED / "media", SHARED / "models"
REFERENCE = Path(__file__).parent / "data" / "mtcnn_reference.json"


def _weights_or_skip() -> dict:
    require_detector("mtcnn")  # skips only when the files are absent; the code's own errors fail
    return mtcnn_weights.load_all(models_dir=MODELS)


# sha256 of mtcnn==1.0.0's weight files -> sha256 of (dtype, shape, bytes) of every array they hold, as the
# hand-written LZ4 decoder read them before the `lz4` package replaced it.
SHIPPED = {
    "pnet": ("ea6b0c3e685ebee3165326ad6484acc95f2ef78f1c94fbf40a55704fa989f7b5",
             "9a456efb3288f0fd1da7587509cf7a29249a76a6d4f5eaf4cb93cff611756cf2"),
    "rnet": ("cb00e6460f3c98b0bfafaba3c0a0ded4bdf6e62cee7174d969e8670d7e757fee",
             "4934213377911df3d9d4292b795d2ed097d5bc2a77b2b1f9717cd92f4dd874af"),
    "onet": ("94f6ea2f4cf985275ee958cdd762d17b6009348a4fb9d8c6be39ba73ffd22ca3",
             "b56e3ee2a6818fb0821ccd648a7f907020956fdbf1b88ac8c488bb8516a2af60"),
}


def test_shipped_weights_read_exactly_as_before():
    require_detector("mtcnn")
    for path in detector_files("mtcnn"):
        file_sha, arrays_sha = SHIPPED[path.stem]
        if hashlib.sha256(path.read_bytes()).hexdigest() != file_sha:
            pytest.skip(f"{path} is not mtcnn==1.0.0's file")
        h = hashlib.sha256()
        for a in mtcnn_weights.load_file(path):
            h.update(str((a.dtype.str, a.shape)).encode())
            h.update(a.tobytes())
        assert h.hexdigest() == arrays_sha, path


def _lz4_zeros(mib: int) -> bytes:
    """An LZ4 frame of `mib` MiB of zeros, made 1 MiB at a time (about 4 KB per MiB)."""
    c = lz4.frame.LZ4FrameCompressor()
    return c.begin() + b"".join(c.compress(bytes(1 << 20)) for _ in range(mib)) + c.flush()


def test_lz4_bomb_is_refused_at_the_cap_without_expanding(tmp_path):
    """256 MiB of zeros in a 1 MB frame: refused once past the 64 MiB cap (the hand-written decoder had
    no cap: it built all 256 MiB, then the pickle reader failed on it)."""
    path = tmp_path / "pnet.lz4"
    path.write_bytes(_lz4_zeros(256))
    assert path.stat().st_size < 2 << 20
    with MemoryWatch() as watch, pytest.raises(ConversionError, match=f"{path}: the LZ4 frame expands to more "
                                                                       f"than 67108864 bytes"):
        mtcnn_weights.load_file(path)
    assert watch.grown_mb < 100, f"refusing took {watch.grown_mb:.0f} MB"


def test_lz4_frames_of_every_kind_and_bad_ones_name_the_file(tmp_path):
    arrays = [np.random.default_rng(0).normal(size=(3, 3, 3, 10)).astype(np.float32), np.arange(10, dtype=np.float32)]
    joblib = pytest.importorskip("joblib", reason="joblib writes the LZ4 weights files under test")
    joblib.dump(arrays, tmp_path / "w.lz4", compress=("lz4", 3))
    plain = (tmp_path / "w.lz4").read_bytes()
    assert plain[:4] == b"\x04\x22\x4d\x18"
    (tmp_path / "checked.lz4").write_bytes(lz4.frame.compress(
        lz4.frame.decompress(plain), block_checksum=True, content_checksum=True, store_size=True))
    for name in ("w.lz4", "checked.lz4"):
        for a, b in zip(arrays, mtcnn_weights.load_file(tmp_path / name), strict=True):
            np.testing.assert_array_equal(a, b)
    frame = lz4.frame.compress(b"payload", content_checksum=True)
    bad = {"truncated": (plain[: len(plain) // 2], "truncated LZ4 frame"),
           "trailing": (frame + b"xx", "2 bytes after the LZ4 frame"),
           "checksum": (frame[:-1] + bytes([frame[-1] ^ 1]), "corrupt LZ4 frame"),
           "header": (frame[:4] + b"\x00" * 8, "corrupt LZ4 frame")}
    for name, (data, msg) in bad.items():
        (tmp_path / f"{name}.lz4").write_bytes(data)
        with pytest.raises(ConversionError, match=f"{tmp_path / name}.lz4: {msg}"):
            mtcnn_weights.load_file(tmp_path / f"{name}.lz4")


def test_missing_weights_error_says_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.delenv(models.ENV_VAR, raising=False)
    monkeypatch.setattr(models, "DEFAULT_DIR", tmp_path / "none")
    monkeypatch.setattr(mtcnn_weights.metadata, "distribution",
                        lambda name: (_ for _ in ()).throw(mtcnn_weights.metadata.PackageNotFoundError(name)))
    with pytest.raises(FileNotFoundError, match=r"pip download mtcnn==1\.0\.0"):
        mtcnn_weights.find_dir(tmp_path / "empty")


def test_weight_files_have_keras_layout():
    w = _weights_or_skip()
    assert [a.shape for a in w["pnet"][:3]] == [(3, 3, 3, 10), (10,), (1, 1, 10)]
    assert w["rnet"][9].shape == (576, 128) and w["onet"][12].shape == (1152, 256)


def test_crop_and_resize_follows_tensorflow_semantics():
    img = jnp.asarray(np.arange(5 * 7 * 1, dtype=np.float32).reshape(5, 7, 1))
    # The whole image, sampled at its own size, is the image itself (TF maps 1.0 to H-1).
    full = crop_and_resize(img, jnp.array([[0.0, 0.0, 7.0, 5.0]]), 5)
    assert full.shape == (1, 5, 5, 1)
    np.testing.assert_allclose(full[0, :, 0, 0], img[:, 0, 0], atol=1e-5)
    # Samples outside the image are zero.
    outside = crop_and_resize(img, jnp.array([[-20.0, -20.0, -10.0, -10.0]]), 4)
    assert float(jnp.abs(outside).max()) == 0.0


def test_nms_drops_boxes_overlapped_by_any_earlier_box():
    rows = np.array([[0, 0, 0, 10, 10, 0.9], [0, 1, 1, 11, 11, 0.8], [0, 50, 50, 60, 60, 0.7]], np.float64)
    kept = nms(rows, 0.5)
    assert kept[:, 5].tolist() == [0.9, 0.7]
    assert len(scale_pyramid(640, 360)) == 9  # as mtcnn==1.0.0 computes it


def _frame(video: Path, index: int, width: int) -> np.ndarray:
    cap = cv2.VideoCapture(str(video))
    for _ in range(index + 1):
        ok, frame = cap.read()
        assert ok, f"{video} has no frame {index}"
    cap.release()
    if width:
        frame = cv2.resize(frame, (width, round(frame.shape[0] * width / frame.shape[1])),
                           interpolation=cv2.INTER_AREA)
    return frame


def test_matches_mtcnn_package_reference_boxes():
    """Boxes stored from mtcnn==1.0.0 (tools/compare_mtcnn.py) on real frames: IoU >= 0.9 each."""
    if not MEDIA.is_dir():
        pytest.skip(f"real videos not present at {MEDIA}")
    net = MTCNN(_weights_or_skip())
    ref = json.loads(REFERENCE.read_text())["frames"]
    assert len(ref) >= 5
    for item in ref:
        frame = _frame(MEDIA / item["video"], item["frame"], item["resize_width"])
        rows = net.detect_rows(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        want = np.asarray(item["boxes"]).reshape(-1, 4)
        assert len(rows) == len(want), item["video"]
        if len(want):
            iou = box_iou(want, rows[:, 1:5])
            assert iou.max(axis=1).min() >= 0.9, (item["video"], item["frame"], iou.max(axis=1))
            best = iou.argmax(axis=1)
            np.testing.assert_allclose(rows[best, 6:16], np.asarray(item["landmarks"]), atol=2.0)
