"""Still images from anything a user holds: a path, encoded bytes, a PIL image or a NumPy array.

Every input becomes a contiguous HxWx3 uint8 BGR array (OpenCV's order, what detectors take).
Encoded images are checked against a pixel limit from their header before any pixel is decoded,
EXIF orientation is applied, and grey, grey+alpha, RGBA, palette and 16-bit images are converted.
Anything unusable raises `ImageError` naming the input and the reason: every failure of a
decoder (OpenCV, Pillow) on the bytes it was given is reported as one, never as the library's own
exception, and messages carry neither memory addresses nor library source paths.
"""
from __future__ import annotations

import dataclasses
import io
import os
import re
import struct
from pathlib import Path
from typing import Any, Union

import cv2
import numpy as np


DEFAULT_MAX_PIXELS = 40_000_000  # ~ 8000 x 5000; a decompression bomb declares far more
ACCEPTED_FORMATS = ("JPEG", "PNG", "WebP", "BMP", "TIFF", "GIF", "PNM")
PIL_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "PPM")  # the same, as Pillow names them
ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, np.ndarray, Any]  # Any: PIL.Image.Image
ORIENTATION_TAG = 0x0112  # EXIF / TIFF tag 274
# OpenCV decodes straight to 8-bit BGR (grey expanded, alpha dropped, 16 bits cut to their high
# byte), so a 16-bit RGBA image never exists in memory at full depth (a 40 Mpx one took 750 MB);
# EXIF orientation is left to `decode`, which knows which decoders apply it themselves.
_OPENCV_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
# EXIF orientation tag (0x0112) -> how to turn the stored pixels upright.
_EXIF_FIX = {
    2: lambda a: cv2.flip(a, 1), 3: lambda a: cv2.rotate(a, cv2.ROTATE_180), 4: lambda a: cv2.flip(a, 0),
    5: cv2.transpose, 6: lambda a: cv2.rotate(a, cv2.ROTATE_90_CLOCKWISE),
    7: lambda a: cv2.flip(cv2.transpose(a), -1), 8: lambda a: cv2.rotate(a, cv2.ROTATE_90_COUNTERCLOCKWISE),
}


class ImageError(ValueError):
    """An input that is not a usable image (unreadable, undecodable, too large, wrong shape)."""


def describe(image: object) -> str:
    """A short name for an input, for messages: the path, or the type and size."""
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return f"<{memoryview(image).nbytes} bytes>"
    if isinstance(image, np.ndarray):
        return f"<array {image.shape} {image.dtype}>"
    return f"<{type(image).__name__}>"


def load_image(image: ImageInput, *, channels: str = "bgr", max_pixels: int = DEFAULT_MAX_PIXELS,
               max_bytes: int | None = None) -> np.ndarray:
    """HxWx3 uint8 BGR pixels of `image`.

    NumPy arrays are read in `channels` order ("bgr", as OpenCV gives, or "rgb", as PIL and
    matplotlib give); grey [H,W] or [H,W,1] and 4-channel (alpha dropped) arrays are accepted,
    uint16 is scaled to 8 bits and floats in [0, 1] to 0..255.
    """
    name = describe(image)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():  # a folder, a device or a pipe would never end or never be an image
            raise ImageError(f"{name}: {'not a regular file' if path.exists() else 'no such file'}")
        try:
            size = path.stat().st_size
            if max_bytes is not None and size > max_bytes:
                raise ImageError(f"{name}: file of {size} bytes exceeds the limit of {max_bytes}")
            data = path.read_bytes()
        except OSError as e:  # permissions, a file removed meanwhile, an I/O error
            raise ImageError(f"{name}: cannot read ({e.strerror or type(e).__name__})") from None
        return decode(data, name=name, max_pixels=max_pixels)
    if isinstance(image, (bytes, bytearray, memoryview)):
        if max_bytes is not None and memoryview(image).nbytes > max_bytes:
            raise ImageError(f"{name}: exceeds the limit of {max_bytes} bytes")
        return decode(bytes(image), name=name, max_pixels=max_pixels)
    if isinstance(image, np.ndarray):
        return from_array(image, channels=channels, name=name, max_pixels=max_pixels)
    if hasattr(image, "getexif") and hasattr(image, "mode"):
        return _from_pil(image, name, max_pixels)
    raise ImageError(f"{name}: expected a path, encoded image bytes, a PIL image or a NumPy array")


@dataclasses.dataclass(frozen=True)
class Header:
    """What an encoded image declares before any pixel is decoded."""

    format: str        # PIL's name: one of PIL_FORMATS (or MPO, Pillow's name for a multi-picture JPEG)
    width: int
    height: int
    orientation: int   # EXIF orientation tag (or XMP tiff:Orientation), 1 (upright) when absent
    # True when `orientation` is the TIFF's own tag 274, which OpenCV's TIFF decoder applies itself
    # (grfmt_tiff.cpp, whatever the imdecode flags); JPEG, PNG and WebP EXIF is left to the caller
    # under IMREAD_IGNORE_ORIENTATION (or IMREAD_UNCHANGED), and BMP, GIF and PNM carry none.
    decoder_orients: bool = False

    @property
    def pixels(self) -> int:
        return self.width * self.height


def header(data: bytes, *, name: str = "<bytes>") -> Header:
    """Format, size and EXIF orientation of encoded image bytes, read from the header only.

    Only `PIL_FORMATS` are identified: anything else (EPS, which would start Ghostscript, and every
    other Pillow plugin) is refused as not an image. No pixel is decoded, also for a PNG whose EXIF
    would follow its pixel data (that EXIF is not read).
    """
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415

    try:
        with Image.open(io.BytesIO(data), formats=PIL_FORMATS) as im:
            exif = Image.Image.getexif(im)  # the base method: PNG's own would decode the pixels
            orientation = exif.get(ORIENTATION_TAG, 1)
            tiff_tag = getattr(im, "tag_v2", {}).get(ORIENTATION_TAG) if im.format == "TIFF" else None
            return Header(str(im.format), int(im.size[0]), int(im.size[1]),
                          orientation if isinstance(orientation, int) and orientation in _EXIF_FIX else 1,
                          decoder_orients=tiff_tag is not None)
    except Image.DecompressionBombError as e:  # Pillow's own, higher limit, also from the header
        raise ImageError(f"{name}: exceeds the limit of {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels that Pillow "
                         f"opens ({_clean(e)})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not a decodable image (expected {', '.join(ACCEPTED_FORMATS)})") from None
    except Exception as e:  # noqa: BLE001 - any failure of a header parser on these bytes is a bad image
        raise ImageError(f"{name}: not a decodable image ({_clean(e)})") from None


def decode(data: bytes, *, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decodes an encoded image (JPEG, PNG, WebP, BMP, TIFF, GIF, PNM) to upright BGR uint8.

    OpenCV decodes first; what it cannot (a format it lacks, a side over its 2^20 limit) or fails
    on, Pillow decodes; when both fail the error is an `ImageError` naming the input.
    """
    head = header(data, name=name)
    width, height = head.width, head.height
    if width * height > max_pixels:
        raise ImageError(f"{name}: {width}x{height} = {width * height} pixels exceeds the limit of "
                         f"{max_pixels} (raise max_pixels to accept it)")
    pixels = None
    if head.format != "PNG" or _png_chunks_fit(data):
        try:
            pixels = cv2.imdecode(np.frombuffer(data, np.uint8), _OPENCV_FLAGS)
        except Exception:  # noqa: BLE001 - cv2.error (a side over 2^20, a corrupt stream), MemoryError: try Pillow
            pixels = None
    if pixels is None:
        return _decode_pil(data, name, max_pixels, head.orientation)
    out = from_array(pixels, channels="bgr", name=name, max_pixels=max_pixels)
    return out if head.decoder_orients else _orient(out, head.orientation)


def _decode_pil(data: bytes, name: str, max_pixels: int, orientation: int) -> np.ndarray:
    """Upright BGR pixels of encoded bytes decoded by Pillow. The header's `orientation` is applied
    unless Pillow's decoder already did (Pillow 13 turns TIFFs upright and drops the tag on load)."""
    from PIL import Image  # noqa: PLC0415

    try:
        with Image.open(io.BytesIO(data), formats=PIL_FORMATS) as im:
            im.load()
            if ORIENTATION_TAG not in im.getexif():
                orientation = 1
            pixels = _pil_pixels(im, name, max_pixels)
    except ImageError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated data, a bad stream, a decoder's MemoryError ...
        raise ImageError(f"{name}: truncated or corrupt image data ({_clean(e)})") from None
    return _orient(pixels, orientation)


def _png_chunks_fit(data: bytes) -> bool:
    """Whether every chunk of a PNG fits in the bytes there are. OpenCV's PNG reader (4.12 and
    later) allocates each chunk's declared length before reading it: a 100-byte file declaring a
    4 GB chunk took 4 GB. Pillow reads only what is there, so such a file goes to Pillow."""
    at = 8
    while at + 4 <= len(data):  # OpenCV reads a length wherever 4 bytes remain
        (length,) = struct.unpack_from(">I", data, at)
        if at + 12 + length > len(data):
            return False
        if data[at + 4:at + 8] == b"IEND":
            break
        at += 12 + length
    return True


def _orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Stored pixels turned upright according to an EXIF orientation (1..8; others: unchanged)."""
    fix = _EXIF_FIX.get(orientation)
    return np.ascontiguousarray(fix(pixels)) if fix else pixels


def from_array(array: np.ndarray, *, channels: str = "bgr", name: str = "<array>",
               max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A BGR uint8 copy of a grey, 3- or 4-channel array (uint8, uint16 or float in [0, 1])."""
    if channels not in ("bgr", "rgb"):
        raise ValueError(f"channels must be 'bgr' or 'rgb', got {channels!r}")
    a = np.asarray(array)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 2, 3, 4)):
        raise ImageError(f"{name}: expected [H,W], [H,W,1], [H,W,3] or [H,W,4] pixels, got shape {a.shape}")
    if a.shape[0] * a.shape[1] > max_pixels:
        raise ImageError(f"{name}: {a.shape[1]}x{a.shape[0]} pixels exceeds the limit of {max_pixels}")
    if a.shape[0] < 8 or a.shape[1] < 8:
        raise ImageError(f"{name}: image of shape {a.shape} is too small (at least 8x8 pixels)")
    if a.dtype.kind == "f":
        f = np.clip(np.nan_to_num(a, nan=0.0, posinf=255.0, neginf=0.0), 0, 255)
        a = (f * 255.0 if f.max(initial=0) <= 1.0 else f).astype(np.uint8)
    elif a.dtype.kind == "u" and a.dtype.itemsize == 2:  # either byte order; the high byte, no 16-bit copy
        a = np.right_shift(a, 8, out=np.empty(a.shape, np.uint8), casting="unsafe")
    elif a.dtype.kind == "u" and a.dtype.itemsize == 1:
        a = a.astype(np.uint8, copy=False)
    else:
        raise ImageError(f"{name}: expected uint8, uint16 or float pixels, got {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 2:  # grey + alpha
        a = a[..., 0]
    if channels == "rgb" and a.ndim == 3 and a.shape[2] in (3, 4):  # alpha, if any, dropped
        a = cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGB2BGR if a.shape[2] == 3 else cv2.COLOR_RGBA2BGR)
    out = as_bgr(a)
    if out is None:
        raise ImageError(f"{name}: image of shape {a.shape} is not usable")
    return out


def as_bgr(frame: object) -> np.ndarray | None:
    """A contiguous uint8 HxWx3 BGR copy of a frame, or None when it is not a usable image."""
    if not isinstance(frame, np.ndarray) or frame.size == 0 or frame.ndim not in (2, 3):
        return None
    if frame.shape[0] < 8 or frame.shape[1] < 8:
        return None
    if frame.dtype == np.uint16:
        frame = (frame >> 8).astype(np.uint8)
    elif frame.dtype != np.uint8:
        return None
    if frame.ndim == 2 or frame.shape[2] == 1:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(frame) if frame.shape[2] == 3 else None


def _from_pil(im: Any, name: str, max_pixels: int) -> np.ndarray:
    """An upright BGR copy of a PIL image (EXIF orientation applied, unless its loading did)."""
    w, h = im.size
    if w * h > max_pixels:
        raise ImageError(f"{name}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")
    try:
        im.load()  # first: loading may turn it upright itself (Pillow 13 does for TIFF)
        pixels = _pil_pixels(im, name, max_pixels)
    except ImageError:
        raise
    except Exception as e:  # noqa: BLE001 - a lazily opened image whose data is bad
        raise ImageError(f"{name}: truncated or corrupt image data ({_clean(e)})") from None
    try:
        orientation = int(im.getexif().get(ORIENTATION_TAG, 1) or 1)
    except Exception:  # noqa: BLE001 - unreadable EXIF: the pixels as stored
        orientation = 1
    return _orient(pixels, orientation)


def _pil_pixels(im: Any, name: str, max_pixels: int) -> np.ndarray:
    """A BGR copy of a PIL image's stored pixels, any mode converted, with one full-size copy at a
    time beside Pillow's own."""
    w, h = im.size
    if w * h > max_pixels:
        raise ImageError(f"{name}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")
    if im.mode.startswith("I;16"):
        return from_array(np.asarray(im), name=name, max_pixels=max_pixels)  # uint16, either byte order
    if im.mode not in ("L", "RGB", "RGBA"):
        im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
    return from_array(np.asarray(im), channels="rgb", name=name, max_pixels=max_pixels)


def _clean(error: BaseException) -> str:
    """A library's error as one short line: its type, its message without memory addresses
    (`<... object at 0x...>`) and without OpenCV's version and source-file prefix."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    text = re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "<input>", text)
    text = re.sub(r"\b0x[0-9a-fA-F]{8,}\b", "<address>", text)
    text = re.sub(r"^OpenCV\([^)]*\)\s*\S*?:-?\d+:\s*error:\s*", "", text)  # version, source file
    text = re.sub(r"^\(-?\d+:([^)]*)\)\s*", r"\1: ", text)  # "(-215:Assertion failed) x" -> "Assertion failed: x"
    text = re.sub(r"\s*in function '.*$", "", text)
    text = " ".join(text.split()).rstrip(": ")
    return f"{type(error).__name__}: {text[:120]}" if text else type(error).__name__


def face_batch(faces: np.ndarray) -> np.ndarray:
    """Faces as float32 [N,48,48,1] (a [N,48,48] batch gains its channel); any other shape is refused."""
    faces = np.asarray(faces, np.float32)
    if faces.ndim == 3:
        faces = faces[..., None]
    if faces.ndim != 4 or faces.shape[1:] != (48, 48, 1):
        raise ValueError(f"expected faces of shape [N,48,48] or [N,48,48,1], got {faces.shape}")
    return faces
