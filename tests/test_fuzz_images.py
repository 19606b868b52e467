"""Fuzzing `ferjax.images`: encoded bytes from real video frames and small files of every accepted
format, mutated; arbitrary NumPy arrays; pixel bombs in small files.

The only acceptable outcomes are a contiguous HxWx3 uint8 BGR array or `ImageError`; anything else
(another exception, a wrong shape or dtype, a crash, resident memory over the harness's cap) is a bug
in `ferjax/images.py`. `max_pixels` stays at its default throughout.
"""
from __future__ import annotations

import io
import re
import struct
import time
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from conftest import MEDIA
from fuzzing import MODES, MemoryWatch, fuzz, mutated
from ferjax import images

VIDEOS = ("one_face_short.mp4", "no_face_cartoon.mp4", "many_faces_1080p.mp4")


def _check(out: object) -> None:
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8, type(out)
    assert out.ndim == 3 and out.shape[2] == 3 and out.shape[0] >= 8 and out.shape[1] >= 8, out.shape
    assert out.flags.c_contiguous


def _check_message(error: images.ImageError) -> None:
    """An error a service returns: one short line naming the input, no heap addresses, no library
    source paths."""
    text = str(error)
    assert "\n" not in text and len(text) < 300 and text.startswith("<"), text
    assert not re.search(r"\b0x[0-9a-fA-F]{6,}", text) and "OpenCV(" not in text and ".cpp" not in text, text


def _decode(data: bytes) -> None:
    try:
        out = images.load_image(data)
    except images.ImageError as e:
        _check_message(e)
        raise
    _check(out)


def _pil_bytes(im, fmt: str, orientation: int = 0, **save) -> bytes:
    from PIL import Image

    if orientation:
        exif = Image.Exif()
        exif[0x0112] = orientation
        save["exif"] = exif.tobytes()
    buf = io.BytesIO()
    im.save(buf, format=fmt, **save)
    return buf.getvalue()


def _made_seeds() -> list[bytes]:
    """Small files of every accepted format and the variants the decoder converts: EXIF
    orientation, palette (with transparency), 16-bit, grey + alpha, RGBA, grey."""
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))
    grey16 = Image.fromarray(rng.integers(0, 65535, (12, 16), dtype=np.uint16))
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    la, rgba = rgb.convert("LA"), rgb.convert("RGBA")
    return [
        _pil_bytes(rgb, "PNG", 6), _pil_bytes(pal, "PNG", transparency=0), _pil_bytes(grey16, "PNG"),
        _pil_bytes(la, "PNG"), _pil_bytes(rgba, "PNG", 3),
        _pil_bytes(rgb, "WEBP", 8, quality=80), _pil_bytes(rgba, "WEBP", lossless=True),
        _pil_bytes(rgb, "BMP"), _pil_bytes(pal, "BMP"),
        _pil_bytes(rgb, "TIFF", 6), _pil_bytes(grey16, "TIFF", 5), _pil_bytes(rgb, "TIFF", compression="tiff_lzw"),
        _pil_bytes(la, "TIFF"), _pil_bytes(pal, "GIF", transparency=1), _pil_bytes(rgb.convert("L"), "GIF"),
        _pil_bytes(rgb, "PPM"), _pil_bytes(rgb.convert("L"), "PPM"), _pil_bytes(rgb.convert("1"), "PPM"),
        _pil_bytes(rgb, "JPEG", 6, quality=90), _pil_bytes(rgb.convert("L"), "JPEG", progressive=True),
    ]


def _video_seeds() -> list[bytes]:
    """JPEGs of real frames of the shared videos, made small, one with EXIF orientation."""
    from PIL import Image

    seeds = []
    for name in VIDEOS:
        cap = cv2.VideoCapture(str(MEDIA / name))
        ok, frame = cap.read()
        cap.release()
        if not ok:
            continue
        small = cv2.resize(frame, (48, 27), interpolation=cv2.INTER_AREA)
        seeds.append(cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes())
        seeds.append(_pil_bytes(Image.fromarray(small[..., ::-1]), "JPEG", 8, quality=70, progressive=True))
    return seeds


@pytest.fixture(scope="module")
def seeds() -> list[bytes]:
    made = _made_seeds()
    for data in made:  # every seed decodes, so mutations start from valid files
        _decode(data)
    real = _video_seeds()
    if not real:
        pytest.skip(f"no frame could be read from the shared videos in {MEDIA} (real JPEG seeds)")
    return made + real


def _png_crcs_fixed(data: bytes) -> bytes:
    """A mutated PNG with every chunk's CRC made right again, so that the change reaches the
    decoders instead of being refused as a broken chunk."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data
    out, at = bytearray(data), 8
    while at + 12 <= len(out):
        (n,) = struct.unpack_from(">I", out, at)
        if at + 12 + n > len(out):
            break
        struct.pack_into(">I", out, at + 8 + n, zlib.crc32(bytes(out[at + 4:at + 8 + n])))
        at += 12 + n
    return bytes(out)


# Declared sides around the limits of the decoders: OpenCV refuses a side over 2^20, JPEG and GIF
# store 16 bits, BMP a signed 32-bit height (negative: top-down).
SIDES = st.one_of(st.sampled_from([0, 1, 7, 8, 9, 16, 255, 4096, 65535, 65536, 2**20, 2**20 + 1, 1_100_000,
                                   2**24, 2**31 - 1, 2**31, 2**32 - 1]), st.integers(0, 2**32 - 1))
FORMATS = ("PNG", "BMP", "GIF", "JPEG", "TIFF", "WEBP", "PPM")


@st.composite
def _redeclared(draw: st.DrawFn) -> bytes:
    """A small valid file whose header declares other dimensions than its data holds."""
    fmt = draw(st.sampled_from(FORMATS))
    return _declaring(_small(fmt), fmt, draw(SIDES), draw(SIDES))


@pytest.mark.parametrize("mode", MODES)
def test_fuzz_decode_bytes(seeds, mode):
    inputs = st.one_of(mutated(seeds).map(_png_crcs_fixed), _redeclared())
    fuzz(_decode, inputs, (images.ImageError,), mode, examples=600)


_DTYPES = st.sampled_from([np.uint8, np.uint16, ">u2", np.float16, np.float32, np.float64, np.int8, np.int16,
                           np.int32, np.int64, np.uint32, np.bool_, np.complex64, "<U1", "M8[s]", object])


@st.composite
def _arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = draw(_DTYPES)
    shape = draw(st.one_of(
        hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=12),
        st.tuples(st.integers(0, 40), st.integers(0, 40), st.integers(0, 6))))
    if np.dtype(dtype) == np.dtype(object):
        return np.full(shape, draw(st.sampled_from([None, 1, "x", 1.5])), dtype=object)
    arr = draw(hnp.arrays(dtype, shape))
    if draw(st.booleans()) and arr.ndim >= 2:  # views as callers hand them: flipped, strided
        arr = arr[::-1, ::2] if draw(st.booleans()) else np.swapaxes(arr, 0, 1)
    return arr


@pytest.mark.parametrize("mode", MODES)
def test_fuzz_from_array(mode):
    def one(args: tuple[np.ndarray, str]) -> None:
        array, channels = args
        _check(images.from_array(array, channels=channels))
        _check(images.load_image(array, channels=channels))

    fuzz(one, st.tuples(_arrays(), st.sampled_from(["bgr", "rgb"])), (images.ImageError,), mode, examples=200)


# ---------------------------------------------------------------- pixel bombs in small files
W, H = 8000, 6000  # 48 Mpx: over the 40 Mpx default, under Pillow's own 89 Mpx warning


def _png(width: int, height: int, color_type: int = 0, depth: int = 8, level: int = 9) -> bytes:
    """A real PNG of zeros (grey: colour type 0, RGBA: 6), compressed to almost nothing."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    comp, row = zlib.compressobj(level), b"\0" * (1 + width * channels * depth // 8)  # filter byte + one row
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _png_bomb() -> bytes:
    """~50 KB that decode to 48 MB of grey."""
    return _png(W, H)


def _declaring(data: bytes, fmt: str, width: int, height: int) -> bytes:
    """`data` (a file of `fmt` as Pillow writes it) with its header changed to declare width x height;
    the pixel data stays as it was."""
    data = bytearray(data)
    if fmt == "PNG":  # IHDR, with its CRC recomputed so that the change is read, not refused
        struct.pack_into(">II", data, 16, width % 2**32, height % 2**32)
        struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    elif fmt == "BMP":
        struct.pack_into("<ii", data, 18, width % 2**31, height % 2**31)
    elif fmt == "GIF":  # logical screen and the first image descriptor
        struct.pack_into("<HH", data, 6, width % 2**16, height % 2**16)
        at = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)  # past the global colour table
        while data[at] == 0x21:  # extension blocks: label, then sub-blocks up to an empty one
            at += 2
            while data[at]:
                at += data[at] + 1
            at += 1
        assert data[at] == 0x2C  # the image descriptor
        struct.pack_into("<HH", data, at + 5, width % 2**16, height % 2**16)
    elif fmt == "JPEG":  # the frame header (SOF0, SOF1 or SOF2): height, width
        at = min(i for i in (data.find(b"\xff\xc0"), data.find(b"\xff\xc1"), data.find(b"\xff\xc2")) if i >= 0)
        struct.pack_into(">HH", data, at + 5, height % 2**16, width % 2**16)
    elif fmt == "TIFF":  # ImageWidth, ImageLength in the first IFD (Pillow writes little-endian)
        (ifd,) = struct.unpack_from("<I", data, 4)
        (count,) = struct.unpack_from("<H", data, ifd)
        for i in range(count):
            (tag,) = struct.unpack_from("<H", data, ifd + 2 + 12 * i)
            if tag in (256, 257):
                value = (width if tag == 256 else height) % 2**32
                struct.pack_into("<HHII", data, ifd + 2 + 12 * i, tag, 4, 1, value)
    elif fmt == "WEBP":  # lossless bitstream header: 14 bits width-1, 14 bits height-1
        at = data.index(b"VP8L") + 9
        (bits,) = struct.unpack_from("<I", data, at)
        size = ((width - 1) % 2**14) | (((height - 1) % 2**14) << 14)
        struct.pack_into("<I", data, at, (bits & ~(2**28 - 1)) | size)
    elif fmt == "PPM":
        body = bytes(data).split(b"\n", 3)[-1] if data[:2] in (b"P5", b"P6") else b""
        data = bytearray(f"P6\n{width} {height}\n255\n".encode() + body)
    return bytes(data)


def _small(fmt: str) -> bytes:
    from PIL import Image

    return _pil_bytes(Image.new("RGB", (16, 16), (10, 200, 30)), fmt, **({"lossless": True} if fmt == "WEBP" else {}))


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "GIF", "JPEG", "TIFF", "WEBP", "PPM"])
def test_pixel_bomb_in_a_small_file_is_refused_from_its_header(fmt):
    data = _png_bomb() if fmt == "PNG" else _declaring(_small(fmt), fmt, W, H)
    assert len(data) < 100_000
    head = images.header(data)
    assert (head.width, head.height) == (W, H)
    with MemoryWatch() as watch:
        t = time.perf_counter()
        with pytest.raises(images.ImageError, match=f"{W}x{H} = {W * H} pixels exceeds the limit"):
            images.load_image(data)
        images.header(data)
        seconds = time.perf_counter() - t
    # Decoding even the grey PNG would take 48 MB and a good fraction of a second.
    assert watch.grown_mb < 16 and seconds < 0.25, (fmt, watch.grown_mb, seconds)


def test_largest_accepted_16_bit_rgba_png_decodes_in_one_output_of_memory():
    """6300 x 6300 (39.7 Mpx, under the default limit) 16-bit RGBA in 1.4 MB: decoded at full depth
    and then converted it took 757 MB; straight to 8-bit BGR it takes about its output, 119 MB."""
    data = _png(6300, 6300, color_type=6, depth=16, level=1)
    with MemoryWatch() as watch:
        out = images.load_image(data)
    assert out.shape == (6300, 6300, 3) and out.dtype == np.uint8
    del out
    assert watch.grown_mb < 250, f"decoding took {watch.grown_mb:.0f} MB for a 119 MB result"
