"""JAX MTCNN: weight reading, TF-compatible crops, NMS, and boxes vs the mtcnn package's own."""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import jax.numpy as jnp
import numpy as np
import pytest

from ferjax.realtime import models, mtcnn_weights
from ferjax.realtime.detect import box_iou
from ferjax.realtime.mtcnn import MTCNN, crop_and_resize, nms, scale_pyramid
from conftest import require_detector

SHARED = Path(os.environ.get("FERJAX_SHARED", Path(__file__).resolve().parents[2] / "shared"))
MEDIA, MODELS = SHARED / "media", SHARED / "models"
REFERENCE = Path(__file__).parent / "data" / "mtcnn_reference.json"


def _weights_or_skip() -> dict:
    require_detector("mtcnn")  # skips only when the files are absent; the code's own errors fail
    return mtcnn_weights.load_all(models_dir=MODELS)


def test_lz4_frame_decoder_handles_literals_and_overlapping_matches():
    # One block: literals "abcd", then a match (offset 4, length 4 + 6 = 10), then literals "xyz".
    block = bytes([0x46]) + b"abcd" + bytes([4, 0]) + bytes([0x30]) + b"xyz"
    frame = b"\x04\x22\x4d\x18" + bytes([0x60, 0x40, 0x00]) + len(block).to_bytes(4, "little") + block
    frame += b"\x00\x00\x00\x00"
    assert mtcnn_weights.lz4_frame_decompress(frame) == b"abcdabcdabcdab" + b"xyz"


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
