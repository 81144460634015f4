"""Image files that cost far more to decode than their size, written without holding the image: for
the decoder's limits (tests/test_image_limits.py). Each returns the file's bytes."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np


def radiance_hdr(width: int, height: int) -> bytes:
    """A Radiance RGBE image of one grey, run-length encoded: decoded as 32-bit float RGB."""
    runs = bytearray()
    left = width
    while left:
        n = min(127, left)
        runs += bytes([128 + n, 128])
        left -= n
    line = bytes([2, 2, width >> 8, width & 255]) + bytes(runs) * 4
    return f"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y {height} +X {width}\n".encode() + line * height


def sun_raster(width: int, height: int) -> bytes:
    """An 8-bit Sun raster image, byte-run encoded (256 pixels in 3 bytes)."""
    full, rest = divmod(width * height, 256)
    body = b"\x80\xff\x40" * full + (bytes([0x80, rest - 1, 0x40]) if rest else b"")
    return struct.pack(">8I", 0x59A66A95, width, height, 8, len(body), 2, 0, 0) + body


def pfm(width: int, height: int) -> bytes:
    """A colour PFM (32-bit float) header, and the first megabyte of its pixels."""
    return f"PF\n{width} {height}\n-1.0\n".encode() + bytes(1 << 20)


def pbm(width: int, height: int) -> bytes:
    """A 1-bit PBM: decoded as one byte a pixel, eight times its size."""
    return f"P4\n{width} {height}\n".encode() + bytes((width + 7) // 8 * height)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(side: int, depth: int = 16, colour: int = 6) -> bytes:
    """A black side x side PNG (colour type 6: RGBA, 2: RGB) compressed row by row."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    row = bytes(side * channels * depth // 8 + 1)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def blocks(height: int, width: int, channels: int, dtype=np.uint8) -> np.ndarray:
    """A picture of coarse random blocks (cheap to compress, not trivial to decode)."""
    small = np.random.default_rng(0).integers(0, 255, (48, 48, channels)).astype(dtype)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST).reshape(
        height, width, channels
    )
