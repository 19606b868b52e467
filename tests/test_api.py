"""The Python API on real photos (frames of ../shared/media videos): every input kind, EXIF,
odd pixel formats, limits, batching across images, video tracks, and no compilation after
warm-up on a folder of mixed sizes."""
from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import cv2
import jax
import numpy as np
import pytest
from PIL import Image, ImageOps

import ferjax
from conftest import MEDIA, require_detector
from ferjax.atomic import file_sha256
from ferjax import images
from ferjax.analyzer import Analyzer, build_detector, default_analyzer
from ferjax.components.classifiers import EMOTIONS

ONE_FACE = MEDIA / "one_face_pexels_640x360.mp4"
CROWD = MEDIA / "many_faces_1080p.mp4"


def _frame(path: Path, index: int = 0) -> np.ndarray:
    if not path.is_file():
        pytest.skip(f"real video {path} not present")
    cap = cv2.VideoCapture(str(path))
    cap.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, frame = cap.read()
    assert ok, f"{path}: no frame {index}"
    return frame


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    return _frame(ONE_FACE, 30)


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    return default_analyzer()  # YuNet shipped in the package + the default pretrained model


def _one_box(faces) -> np.ndarray:
    assert len(faces) == 1, [f.to_json() for f in faces]
    return np.asarray(faces[0].box)


def test_zero_config_analyze_every_input_kind(tmp_path, face):
    path = tmp_path / "face.jpg"
    cv2.imwrite(str(path), face)
    faces = ferjax.analyze(str(path))
    box = _one_box(faces)
    rec = json.loads(json.dumps([f.to_json() for f in faces]))[0]
    assert set(rec) >= {"box", "score", "landmarks", "label", "probs"} and rec["label"] in EMOTIONS
    assert sum(rec["probs"].values()) == pytest.approx(1.0, abs=1e-3) and len(rec["landmarks"]) == 5
    decoded = cv2.imread(str(path))
    rgb = decoded[..., ::-1]
    for same in (path, path.read_bytes(), Image.open(path), decoded):
        np.testing.assert_allclose(_one_box(ferjax.analyze(same)), box, atol=1.0)
    np.testing.assert_allclose(_one_box(ferjax.analyze(rgb, channels="rgb")), box, atol=1.0)
    with pytest.raises(images.ImageError, match="expected a path"):
        ferjax.analyze(12345)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil(tmp_path, face, orientation):
    im = Image.fromarray(cv2.resize(face, (160, 90))[..., ::-1])
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, format="PNG", exif=exif)
    want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))[..., ::-1]
    np.testing.assert_array_equal(images.decode(buf.getvalue()), want)


def test_rotated_photo_is_turned_upright_before_detection(analyzer, face):
    stored = cv2.rotate(face, cv2.ROTATE_90_CLOCKWISE)  # a camera held sideways
    exif = Image.Exif()
    exif[0x0112] = 8  # "rotate 90 counter-clockwise to view"
    buf = io.BytesIO()
    Image.fromarray(stored[..., ::-1]).save(buf, format="JPEG", quality=95, exif=exif)
    upright = _one_box(analyzer.analyze(face))
    np.testing.assert_allclose(_one_box(analyzer.analyze(buf.getvalue())), upright, atol=4.0)


def test_grey_rgba_palette_and_16_bit_photos(analyzer, face, tmp_path):
    grey = cv2.cvtColor(face, cv2.COLOR_BGR2GRAY)
    bgra = cv2.cvtColor(face, cv2.COLOR_BGR2BGRA)
    deep = (cv2.cvtColor(face, cv2.COLOR_BGR2RGB).astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "deep.png"), deep[..., ::-1])  # 16-bit PNG
    Image.fromarray(face[..., ::-1]).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "pal.png")
    inputs = [grey, grey[..., None], bgra, tmp_path / "deep.png", deep, face.astype(np.float32) / 255.0,
              Image.open(tmp_path / "pal.png"), Image.fromarray(grey).convert("LA")]
    for item in inputs:
        assert len(analyzer.analyze(item, channels="rgb" if item is deep else "bgr")) == 1, images.describe(item)


def test_limits_and_unusable_inputs(tmp_path, face):
    ok, png = cv2.imencode(".png", face[:16, :16])
    header = bytearray(png.tobytes())
    ihdr = struct.pack(">II", 100_000, 100_000) + bytes(header[24:29])  # claims 10 gigapixels
    header[16:29] = ihdr
    header[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    with pytest.raises(images.ImageError, match="exceeds the limit"):
        images.load_image(bytes(header))  # refused from the header: nothing is decoded
    with pytest.raises(images.ImageError, match="exceeds the limit"):
        images.load_image(face, max_pixels=1000)
    with pytest.raises(images.ImageError, match="not a decodable image"):
        images.load_image(b"this is not an image")
    (tmp_path / "x.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(images.ImageError, match="x.jpg"):
        images.load_image(tmp_path / "x.jpg")
    with pytest.raises(images.ImageError, match="no such file"):
        images.load_image(tmp_path / "missing.png")
    with pytest.raises(images.ImageError, match=r"shape \(4, 4, 7\)"):
        images.load_image(np.zeros((4, 4, 7), np.uint8))


def test_analyze_many_batches_all_faces_into_one_predict(analyzer, face, monkeypatch):
    crowd = _frame(CROWD, 0)
    frames = [face, crowd, cv2.flip(face, 1)]
    single = [analyzer.analyze(f) for f in frames]
    calls = []
    real = analyzer.predictor.__call__

    def counting(crops):
        calls.append(len(crops))
        return real(crops)

    monkeypatch.setattr(analyzer._core, "predictor", counting)
    batched = analyzer.analyze_many(frames)
    assert calls == [sum(len(s) for s in single)] and len(single[1]) >= 2
    for one, many in zip(single, batched):
        assert [f.label for f in one] == [f.label for f in many]
        np.testing.assert_allclose([list(f.probs.values()) for f in one],
                                   [list(f.probs.values()) for f in many], atol=1e-4)
    out = analyzer.analyze_each([face, b"broken", crowd])
    assert isinstance(out[1], images.ImageError) and len(out[0]) == 1 and len(out[2]) == len(single[1])


def test_video_yields_frames_with_stable_track_ids(analyzer):
    if not ONE_FACE.is_file():
        pytest.skip(f"real video {ONE_FACE} not present")
    frames = list(analyzer.video(ONE_FACE, max_frames=8))
    assert [f.index for f in frames] == list(range(8))
    assert all(len(f.faces) == 1 and f.faces[0].track == 0 for f in frames)
    assert json.loads(json.dumps(frames[3].to_json()))["faces"][0]["track"] == 0


def test_declared_config_arguments_reach_the_factory(tmp_path):
    """MTCNN declares `config_args = {"weights_dir": "mtcnn_weights_dir"}`; the builder fills it."""
    junk = tmp_path / "junk_weights"
    junk.mkdir()
    for net in ("pnet", "rnet", "onet"):
        (junk / f"{net}.lz4").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk_weights/pnet.lz4"):
        build_detector("mtcnn", {}, {"mtcnn_weights_dir": str(junk)})


class _CompileCounter:
    """Counts XLA compilations (jax.monitoring's backend-compile events)."""

    def __init__(self):
        self.n = 0
        jax.monitoring.register_event_duration_secs_listener(self._on)

    def _on(self, event: str, duration: float, **_) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            self.n += 1


@pytest.mark.slow  # a long end-to-end run: the slow set (pytest -m slow)
def test_mixed_size_photo_folder_compiles_once_per_size_bucket(tmp_path, analyzer):
    """MTCNN (JAX) + classifier: after the first photo of each size bucket, nothing compiles."""
    crowd = _frame(CROWD, 10)
    require_detector("mtcnn")
    analyzer = Analyzer("mtcnn", analyzer.predictor)
    counter = _CompileCounter()
    # (width, height): two buckets, 640x400 and 960x640, in mixed order.
    sizes = [(620, 349), (600, 338), (900, 506), (640, 360), (944, 531), (577, 396)]
    compiles = []
    for i, (w, h) in enumerate(sizes):
        path = tmp_path / f"{i}.jpg"
        cv2.imwrite(str(path), cv2.resize(crowd, (w, h), interpolation=cv2.INTER_AREA))
        before = counter.n
        faces = analyzer.analyze(path)
        compiles.append(counter.n - before)
        assert all(0 <= f.box[0] <= f.box[2] <= w - 1 and 0 <= f.box[1] <= f.box[3] <= h - 1 for f in faces)
    assert compiles[0] > 0 and compiles[2] > 0, compiles  # first of each bucket
    assert compiles[1] == compiles[3] == compiles[4] == compiles[5] == 0, compiles


def test_yunet_ships_in_the_package_with_its_notice(tmp_path, monkeypatch):
    from ferjax.realtime import models

    monkeypatch.delenv(models.ENV_VAR, raising=False)
    monkeypatch.setattr(models, "DEFAULT_DIR", tmp_path / "empty_cache")
    path = models.locate(models.YUNET)  # nothing configured: the shipped copy
    assert path.parent == models.PACKAGED_DIR and file_sha256(path) == models.YUNET.sha256
    notice = (models.PACKAGED_DIR / "NOTICE.md").read_text()
    assert models.YUNET.sha256 in notice and "MIT" in (models.PACKAGED_DIR / "YUNET_LICENSE.txt").read_text()
    damaged = tmp_path / "pkg"
    damaged.mkdir()
    (damaged / models.YUNET.name).write_bytes(path.read_bytes()[:-10])
    monkeypatch.setattr(models, "PACKAGED_DIR", damaged)
    with pytest.raises(OSError, match="damaged"):
        models.locate(models.YUNET)


def test_tall_frames_are_detected_within_max_side_in_every_mode(face):
    """A 320x78000 frame in video mode was detected at full size (25 Mpx, seconds of the worker):
    the copy a detector sees is at most `max_side` on its longer side in photo and video mode."""
    analyzer = Analyzer(build_detector("yunet"), default_analyzer().predictor, max_side=1024)
    seen: list[tuple[int, int]] = []
    detect_small = analyzer.detector.detect_small

    def recorded(small: np.ndarray):
        seen.append(small.shape[:2])
        return detect_small(small)

    analyzer.detector.detect_small = recorded
    tall = np.full((78_000, 320, 3), 90, np.uint8)
    assert analyzer.analyze_frames([tall, tall], video=[True, False]) == [[], []]
    assert len(seen) == 2 and all(max(s) <= 1024 for s in seen), seen
    seen.clear()
    assert len(analyzer.analyze_frames([face], video=True)[0]) == 1  # normal frames: the working width
    assert seen == [(180, 320)], seen
