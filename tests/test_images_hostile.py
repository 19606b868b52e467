"""Hostile or unusual encoded images: every one is decoded correctly or refused with `ImageError`."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from ferjax import images

# A minimal Encapsulated PostScript file: Pillow's EPS plugin would hand it to Ghostscript.
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nshowpage\n%%EOF\n"


def test_eps_is_refused_from_its_header_without_starting_ghostscript(monkeypatch):
    calls = []
    monkeypatch.setattr(shutil, "which", lambda *a, **k: calls.append(a) or "/usr/bin/gs")
    import subprocess

    def no_process(*a, **k):
        raise AssertionError(f"a process was started while decoding an upload: {a[0]!r}")

    monkeypatch.setattr(subprocess, "Popen", no_process)
    monkeypatch.setattr(subprocess, "check_call", no_process)
    with pytest.raises(images.ImageError, match="not a decodable image .expected JPEG, PNG, WebP"):
        images.load_image(EPS)
    assert calls == []  # Pillow never even looked for Ghostscript


@pytest.mark.parametrize("fmt", ["EPS", "ICO", "TGA", "PCX", "SGI"])
def test_formats_outside_the_documented_list_are_refused(fmt):
    import io

    from PIL import Image

    if fmt == "EPS":
        data = EPS
    else:
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (200, 10, 10)).save(buf, format=fmt)
        data = buf.getvalue()
        with Image.open(io.BytesIO(data)) as im:  # Pillow itself would open it
            assert im.format == fmt
    with pytest.raises(images.ImageError, match="not a decodable image"):
        images.load_image(data)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "PPM"])
def test_documented_formats_decode(fmt):
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (20, 12), (30, 120, 200)).save(buf, format=fmt)
    out = images.load_image(buf.getvalue())
    assert out.shape == (12, 20, 3) and out.dtype == np.uint8
    assert images.header(buf.getvalue()).format == fmt


# ---------------------------------------------------------------- EXIF orientation (item 10)
def _upright() -> "np.ndarray":
    """RGB 24x16 blocks that no flip or rotation maps onto themselves."""
    import numpy as np

    a = np.zeros((16, 24, 3), np.uint8)
    a[:8, :8], a[:8, 8:16], a[:8, 16:] = (240, 16, 16), (16, 240, 16), (16, 16, 240)
    a[8:, :16], a[8:, 16:] = (240, 240, 16), (16, 240, 240)
    return a


def _stored(upright, orientation: int):
    """The pixels a camera stores for `upright` under an EXIF orientation (TIFF 6.0 / EXIF 2.3:
    the orientation says where row 0 and column 0 of the stored pixels are in the upright view)."""
    import numpy as np

    return {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
            5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, 1),
            7: lambda a: a[::-1, ::-1].transpose(1, 0, 2), 8: lambda a: np.rot90(a, -1)}[orientation](upright)


def _encode(rgb, fmt: str, mode: str, orientation: int, **save) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(rgb))
    if mode == "L":
        im = im.convert("L")
    elif mode == "I;16":
        im = Image.fromarray(np.asarray(im.convert("L")).astype(np.uint16) * 257)
    exif = Image.Exif()
    exif[0x0112] = orientation  # EXIF Orientation
    buf = io.BytesIO()
    im.save(buf, format=fmt, exif=exif.tobytes(), **save)
    return buf.getvalue()


@pytest.mark.parametrize("fmt,mode,save", [
    ("JPEG", "RGB", {"quality": 95, "subsampling": 0}), ("JPEG", "L", {"quality": 95}),
    ("PNG", "RGB", {}), ("PNG", "L", {}), ("PNG", "I;16", {}),
    ("WEBP", "RGB", {"lossless": True}), ("WEBP", "L", {"lossless": True}),
    ("TIFF", "RGB", {}), ("TIFF", "L", {}), ("TIFF", "I;16", {}), ("TIFF", "RGB", {"compression": "tiff_deflate"}),
    ("TIFF", "RGB", {"compression": "jpeg", "quality": 95}),
])
def test_every_exif_orientation_decodes_upright(fmt, mode, save):
    import numpy as np
    from PIL import Image

    up = _upright()
    expected = up if mode == "RGB" else np.asarray(Image.fromarray(up).convert("L"))[..., None].repeat(3, 2)
    tolerance = 24 if "quality" in save else 0
    wrong = []
    for orientation in range(1, 9):
        data = _encode(_stored(up, orientation), fmt, mode, orientation, **save)
        assert images.header(data).orientation == orientation
        out = images.load_image(data, channels="bgr")[..., ::-1]  # compared as RGB
        if out.shape != expected.shape or np.abs(out.astype(int) - expected).max() > tolerance:
            wrong.append(orientation)
    assert wrong == [], f"{fmt} {mode}: orientations {wrong} not upright"


@pytest.mark.parametrize("orientation", [3, 6])
def test_orientation_of_a_tiff_too_tall_for_opencv_is_applied_once(orientation):
    """A side over OpenCV's 2^20 limit is decoded by Pillow, whose own TIFF handling may already
    turn it upright; the result must be upright either way."""
    import numpy as np

    h = (1 << 20) + 8
    up = np.zeros((h, 8, 3), np.uint8)
    up[:4, :4] = (250, 10, 10)   # top-left marker
    up[-4:, 4:] = (10, 10, 250)  # bottom-right marker, a different colour
    data = _encode(_stored(up, orientation), "TIFF", "RGB", orientation, compression="tiff_deflate")
    out = images.load_image(data)[..., ::-1]
    assert out.shape == up.shape
    assert (out[:4, :4] == (250, 10, 10)).all() and (out[-4:, 4:] == (10, 10, 250)).all()


# ---------------------------------------------------------------- decoder errors (items 6 and 11)
@pytest.mark.parametrize("fmt", ["TIFF", "BMP"])
def test_valid_image_opencv_refuses_is_decoded_by_pillow(fmt):
    """16 x 1,100,000 is within the pixel limit but over OpenCV's 2^20 side: cv2.imdecode raised
    cv2.error (an HTTP 500, a CLI traceback). It is a valid image: Pillow decodes it."""
    import io

    import numpy as np
    from PIL import Image

    stored = np.full((1_100_000, 16), 90, np.uint8)
    stored[:8] = 200
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, format=fmt, **({"compression": "tiff_deflate"} if fmt == "TIFF" else {}))
    out = images.load_image(buf.getvalue())
    assert out.shape == (1_100_000, 16, 3) and out.dtype == np.uint8
    assert (out[:8] == 200).all() and (out[8:] == 90).all()


@pytest.mark.parametrize("fmt", ["TIFF", "BMP"])
def test_every_decoder_error_is_an_image_error_in_one_clean_line(fmt):
    """Both decoders fail (OpenCV on the size, Pillow on the missing data): an ImageError naming
    the input, one short line without OpenCV's source paths or memory addresses."""
    import io

    import cv2
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (16, 1_100_000), 90).save(buf, format=fmt)
    data = buf.getvalue()[:200_000]  # a valid header, then most of the pixels missing
    with pytest.raises(cv2.error):  # what made the request fail with a 500
        cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    with pytest.raises(images.ImageError) as err:
        images.load_image(data)
    msg = str(err.value)
    assert msg.startswith("<200000 bytes>: ") and "\n" not in msg and len(msg) < 220, msg
    for leak in ("OpenCV(", "/opencv/", ".cpp", " at 0x", "Traceback"):
        assert leak not in msg, msg


def test_clean_strips_opencv_prefix_and_addresses():
    import io

    import cv2
    import numpy as np

    for call in (lambda: cv2.imdecode(np.zeros(0, np.uint8), cv2.IMREAD_UNCHANGED),
                 lambda: cv2.cvtColor(np.zeros((8, 8, 5), np.uint8), cv2.COLOR_BGR2GRAY)):
        with pytest.raises(cv2.error) as err:
            call()
        text = images._clean(err.value)
        assert text.startswith("error: ") and "OpenCV(" not in text and ".cpp" not in text, text
        assert "\n" not in text and len(text) < 140, text
    text = images._clean(OSError(f"cannot identify image file {io.BytesIO()!r} (0x7f3a12345678)"))
    assert "0x" not in text and text.startswith("OSError: cannot identify image file <input>")


def test_path_that_is_not_a_regular_file_is_an_image_error(tmp_path):
    with pytest.raises(images.ImageError, match="not a regular file"):
        images.load_image(tmp_path)
    with pytest.raises(images.ImageError, match="/dev/null: not a regular file"):
        images.load_image("/dev/null")
    with pytest.raises(images.ImageError, match="no such file"):
        images.load_image(tmp_path / "missing.jpg")


def test_unreadable_file_is_an_image_error(tmp_path):
    import os

    p = tmp_path / "locked.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n")
    p.chmod(0)
    try:
        if os.access(p, os.R_OK):
            pytest.skip("running as a user who can read a mode-000 file (root)")
        with pytest.raises(images.ImageError, match="locked.png: cannot read"):
            images.load_image(p)
    finally:
        p.chmod(0o600)


def test_png_chunk_declaring_gigabytes_is_never_allocated():
    """OpenCV's PNG reader sizes a buffer by each chunk's declared length before reading it: a
    PNG of 500 bytes whose IDAT chunk declared 2 GB took 2 GB of memory (found by the fuzzer)."""
    import io
    import struct

    from PIL import Image

    from fuzzing import MemoryWatch

    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, format="PNG")
    good = buf.getvalue()
    idat = good.index(b"IDAT") - 4
    data = good[:idat] + struct.pack(">I", 0xFFFFFFF0) + good[idat + 4:]  # the IDAT's length
    assert images.header(data).pixels == 256  # the header alone is fine
    with MemoryWatch() as watch:
        try:
            out = images.load_image(data)  # Pillow reads what is there: the 16x16 pixels
            assert out.shape == (16, 16, 3)
        except images.ImageError as e:
            assert str(e).startswith(f"<{len(data)} bytes>: ")
    assert watch.grown_mb < 64, f"decoding a {len(data)}-byte PNG took {watch.grown_mb:.0f} MB"


def test_face_batch_takes_the_classifiers_layout_and_refuses_other_shapes():
    """`images.face_batch`, the input check of both predictors (JAX and ONNX Runtime)."""
    got = images.face_batch(np.zeros((2, 48, 48), np.uint8))
    assert got.shape == (2, 48, 48, 1) and got.dtype == np.float32
    for bad in ((2, 32, 32), (48, 48), (1, 48, 48, 3)):
        with pytest.raises(ValueError, match=r"expected faces of shape \[N,48,48\] or \[N,48,48,1\]"):
            images.face_batch(np.zeros(bad, np.float32))
