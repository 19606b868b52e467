"""Hostile or unusual encoded images: every one is decoded correctly or refused with `ImageError`."""
from __future__ import annotations

import shutil

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
