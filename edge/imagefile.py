"""Image files and frames as 8-bit BGR: decoding with limits, and any camera's format normalised.

Every image the project reads goes through `load_image` / `decode_image` (files, hot folder, replay)
or `to_bgr8` (camera frames), so a hostile file is refused in one place (docs/design.md, "Fail loudly").
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from edge.errors import ImageLoadError
from edge.image_header import HeaderError, read_header

# OpenCV's decoders are not always loud about short files; these are the end markers we check.
_JPEG_SOI, _JPEG_EOI = b"\xff\xd8", b"\xff\xd9"
_PNG_MAGIC, _PNG_IEND = b"\x89PNG\r\n\x1a\n", b"IEND"


# Decoding a file allocates width x height x channels bytes before anyone can look at it: a 3 KB
# PNG may declare 100000 x 100000 pixels. Files are refused from their header above this many pixels:
# 32 MP is 6500 x 4900, well above microscope cameras (a Raspberry Pi HQ camera gives 12.3 MP).
DEFAULT_MAX_PIXELS = 32_000_000
_max_pixels = DEFAULT_MAX_PIXELS
# What decoding an 8-bit colour image takes per pixel: the decoder's image and the copy OpenCV's
# Python binding makes of it. Images that take more per pixel (16-bit, alpha, float, a progressive
# JPEG's coefficients; edge/image_header.py) may have proportionally fewer pixels, so that no file
# takes more than 6 x max_pixels bytes to decode: 192 MB at the default (issue 24, item 6).
BYTES_PER_PIXEL = 6


def max_decode_bytes() -> int:
    """The memory decoding one file may take (BYTES_PER_PIXEL x the pixel limit)."""
    return BYTES_PER_PIXEL * _max_pixels


def set_max_pixels(pixels: int) -> None:
    """The pixel limit for this process, set once at start-up (`source.max_pixels`, `--max-pixels`)."""
    global _max_pixels
    if int(pixels) < 1:
        raise ValueError(f"the pixel limit must be at least 1, not {pixels}")
    _max_pixels = int(pixels)


def load_image(path: str | os.PathLike, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """Decode an image file as OpenCV does (BGR / BGRA / gray, 8 or 16 bit), unchanged.

    Raises ImageLoadError naming the file for a missing, unreadable, truncated, oversized or
    non-image file, and for any format but JPEG, PNG, BMP, TIFF and WebP (edge/image_header.py).
    """
    path = Path(path)
    if not path.exists():
        raise ImageLoadError(path, "file not found")
    if path.is_dir():
        raise ImageLoadError(path, "is a directory, not an image")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageLoadError(path, f"cannot read ({exc.strerror or exc})") from None
    return decode_image(data, path, flags)


def decode_image(
    data: bytes, name: str | os.PathLike = "<bytes>", flags: int = cv2.IMREAD_UNCHANGED
) -> np.ndarray:
    """Decode encoded image bytes; see `load_image`. `flags`: OpenCV's (IMREAD_COLOR for a thumbnail)."""
    if not data:
        raise ImageLoadError(name, "empty file")
    if data.startswith(_JPEG_SOI) and _JPEG_EOI not in data[-4096:]:
        raise ImageLoadError(name, "truncated JPEG (no end-of-image marker)")
    if data.startswith(_PNG_MAGIC) and _PNG_IEND not in data[-64:]:
        raise ImageLoadError(name, "truncated PNG (no IEND chunk)")
    try:  # the format from the content, and what decoding it costs, from the header alone
        header = read_header(data)
    except HeaderError as exc:
        raise ImageLoadError(name, str(exc)) from None
    if header.pixels > _max_pixels:
        raise ImageLoadError(
            name,
            f"declares {header.width} x {header.height} pixels, over the limit of {_max_pixels:,} (max_pixels)",
        )
    if header.decode_bytes > max_decode_bytes():
        raise ImageLoadError(
            name,
            f"declares {header.width} x {header.height} pixels ({header.describe()}): "
            f"{header.decode_bytes / 1e6:,.0f} MB to decode, over the limit of "
            f"{max_decode_bytes() / 1e6:,.0f} MB ({BYTES_PER_PIXEL} bytes x max_pixels)",
        )
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as exc:  # OpenCV's own limits (CV_IO_MAX_IMAGE_PIXELS) and decoder failures
        raise ImageLoadError(name, f"cannot decode ({str(exc).strip().splitlines()[-1][:120]})") from None
    except MemoryError:
        raise ImageLoadError(name, "too large to decode in the memory available") from None
    if image is None or image.size == 0:
        raise ImageLoadError(name, f"not a decodable image ({header.format} by its header)")
    if image.shape[0] * image.shape[1] > _max_pixels or 2 * image.nbytes > max_decode_bytes():
        # a header that lied about the image
        raise ImageLoadError(
            name, f"{image.shape[1]} x {image.shape[0]} pixels, over the limit of {_max_pixels:,}"
        )
    return image


def to_bgr8(image: np.ndarray, order: str = "BGR") -> np.ndarray:
    """Normalise any decoded frame to 8-bit 3-channel BGR.

    Accepts uint8/uint16 (and float in [0, 1]) grayscale, 3-channel and 4-channel images;
    `order` says whether a colour input is BGR(A) (OpenCV, picamera2 "RGB888") or RGB(A).
    """
    if image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and order == "BGR":
        return image  # the camera's and OpenCV's own format: nothing to check or convert
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise ValueError(f"expected an H x W, H x W x 1, x3 or x4 image, got shape {image.shape}")
    if image.dtype != np.uint8:
        image = _to_uint8(image)
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR if order == "BGR" else cv2.COLOR_RGBA2BGR)
    return image if order == "BGR" else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)


_ROWS = 256  # converted a band of rows at a time: no wide temporary the size of the whole image


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """16-bit (0..65535 onto 0..255, rounding: x / 257 is exact for 8-bit data) or float in [0, 1]
    to uint8, the same bytes as converting it whole."""
    if image.dtype == np.uint16:

        def convert(band):
            return ((band.astype(np.uint32) + 128) // 257).astype(np.uint8)

    elif image.dtype in (np.float32, np.float64):

        def convert(band):
            return np.clip(np.rint(band * 255.0), 0, 255).astype(np.uint8)

    else:
        raise ValueError(f"unsupported image dtype {image.dtype}")
    out = np.empty(image.shape, np.uint8)
    for top in range(0, image.shape[0], _ROWS):
        out[top : top + _ROWS] = convert(image[top : top + _ROWS])
    return out
