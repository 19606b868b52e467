"""Still images from anything a user holds: a path, encoded bytes, a PIL image or a NumPy array.

Every input becomes a contiguous HxWx3 uint8 BGR array (OpenCV's order, what detectors take).
Encoded images are checked against a pixel limit from their header before any pixel is decoded,
EXIF orientation is applied, and grey, grey+alpha, RGBA, palette and 16-bit images are converted.
Anything unusable raises `ImageError` naming the input and the reason.
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

from ferjax.realtime.capture import as_bgr

DEFAULT_MAX_PIXELS = 40_000_000  # ~ 8000 x 5000; a decompression bomb declares far more
ACCEPTED_FORMATS = ("JPEG", "PNG", "WebP", "BMP", "TIFF", "GIF", "PNM")
PIL_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "PPM")  # the same, as Pillow names them
ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, np.ndarray, Any]  # Any: PIL.Image.Image
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
        return f"<{len(image)} bytes>"
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
        if not path.is_file():
            raise ImageError(f"{name}: no such file")
        size = path.stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise ImageError(f"{name}: file of {size} bytes exceeds the limit of {max_bytes}")
        return decode(path.read_bytes(), name=name, max_pixels=max_pixels)
    if isinstance(image, (bytes, bytearray, memoryview)):
        if max_bytes is not None and len(image) > max_bytes:
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

    format: str        # PIL's name: one of PIL_FORMATS
    width: int
    height: int
    orientation: int   # EXIF orientation tag, 1 (upright) when absent

    @property
    def pixels(self) -> int:
        return self.width * self.height


def header(data: bytes, *, name: str = "<bytes>") -> Header:
    """Format, size and EXIF orientation of encoded image bytes, read from the header only.

    Only `PIL_FORMATS` are identified: anything else (EPS, which would start Ghostscript, and every
    other Pillow plugin) is refused as not an image.
    """
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415

    try:
        with Image.open(io.BytesIO(data), formats=PIL_FORMATS) as im:  # reads the header only
            return Header(str(im.format), int(im.size[0]), int(im.size[1]),
                          int(im.getexif().get(0x0112, 1) or 1))
    except Image.DecompressionBombError as e:  # PIL's own, higher limit, also from the header
        raise ImageError(f"{name}: exceeds PIL's pixel limit ({e})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not a decodable image (expected {', '.join(ACCEPTED_FORMATS)})") from None
    except (OSError, ValueError, SyntaxError, TypeError, struct.error) as e:
        raise ImageError(f"{name}: not a decodable image ({type(e).__name__}: {_clean(e)})") from None


def decode(data: bytes, *, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decodes an encoded image (JPEG, PNG, WebP, BMP, TIFF, GIF, PNM) to upright BGR uint8."""
    from PIL import Image  # noqa: PLC0415

    head = header(data, name=name)
    width, height, orientation = head.width, head.height, head.orientation
    if width * height > max_pixels:
        raise ImageError(f"{name}: {width}x{height} = {width * height} pixels exceeds the limit of "
                         f"{max_pixels} (raise max_pixels to accept it)")
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:  # a format OpenCV lacks (e.g. some GIFs): let PIL decode it
        try:
            with Image.open(io.BytesIO(data), formats=PIL_FORMATS) as im:
                return _from_pil(im, name, max_pixels)
        except (OSError, ValueError, SyntaxError) as e:
            raise ImageError(f"{name}: truncated or corrupt image data ({_clean(e)})") from None
    out = from_array(pixels, channels="bgr", name=name, max_pixels=max_pixels)
    fix = _EXIF_FIX.get(orientation)
    return np.ascontiguousarray(fix(out)) if fix else out


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
    if a.dtype.kind == "f":
        a = np.clip(np.nan_to_num(a) * (255.0 if a.max(initial=0) <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    elif a.dtype == np.uint16:
        a = (a >> 8).astype(np.uint8)
    elif a.dtype != np.uint8:
        raise ImageError(f"{name}: expected uint8, uint16 or float pixels, got {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 2:  # grey + alpha
        a = a[..., 0]
    if channels == "rgb" and a.ndim == 3 and a.shape[2] in (3, 4):
        a = a[..., [2, 1, 0]]  # alpha, if any, is dropped below
    out = as_bgr(a)
    if out is None:
        raise ImageError(f"{name}: image of shape {a.shape} is too small (at least 8x8 pixels)")
    return out


def _from_pil(im: Any, name: str, max_pixels: int) -> np.ndarray:
    """An upright BGR copy of a PIL image (EXIF orientation applied)."""
    from PIL import ImageOps  # noqa: PLC0415

    w, h = im.size
    if w * h > max_pixels:
        raise ImageError(f"{name}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")
    im = ImageOps.exif_transpose(im)
    if im.mode.startswith("I;16"):
        return from_array(np.asarray(im).astype(np.uint16), name=name, max_pixels=max_pixels)
    if im.mode not in ("L", "RGB", "RGBA"):
        im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
    return from_array(np.asarray(im), channels="rgb", name=name, max_pixels=max_pixels)


def _clean(error: BaseException) -> str:
    """A library's message, short and without memory addresses (`<... object at 0x...>`)."""
    return re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "<input>", str(error))[:120]
