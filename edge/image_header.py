"""What an image file's first bytes say, before anything is decoded: its format (from its content,
never its name), its size, and the memory decoding it takes.

Only the formats the project reads are decoded (the suffixes of edge.image_files: JPEG, PNG, BMP,
TIFF, WebP). OpenCV decodes many more by content whatever the suffix (Radiance HDR, PFM, Sun raster,
PNM, GIF, ...), and some of those declare no size that imagesize can read: a 5 MB HDR file named a.jpg
decoded to 2 GB before any limit was checked. So the format is identified here, anything else is
refused, and the header gives what the decoder will allocate: the image as OpenCV returns it
(IMREAD_UNCHANGED: channels and 8/16/32/64-bit samples) plus what its library holds beside it (a
progressive or multi-scan JPEG's coefficients, a TIFF strip or tile).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

SUPPORTED = "JPEG, PNG, BMP, TIFF or WebP"

# Formats OpenCV (or a user) might meet that are not decoded here, named in the refusal.
_OTHERS = (
    (re.compile(rb"#\?(RADIANCE|RGBE)"), "Radiance HDR"),
    (re.compile(rb"P[Ff]\s"), "PFM"),
    (re.compile(rb"\x59\xa6\x6a\x95"), "Sun raster"),
    (re.compile(rb"P[1-7]\s"), "PNM (PBM, PGM, PPM or PAM)"),
    (re.compile(rb"GIF8[79]a"), "GIF"),
    (re.compile(rb"\x76\x2f\x31\x01"), "OpenEXR"),
    (re.compile(rb"\x00\x00\x00\x0cjP  |\xff\x4f\xff\x51"), "JPEG 2000"),
    (re.compile(rb"8BPS"), "Photoshop"),
    (re.compile(rb"....ftyp(heic|heix|mif1|avif)", re.S), "HEIF/AVIF"),
    (re.compile(rb"(II\+\x00|MM\x00\+)"), "BigTIFF"),
    (re.compile(rb"%PDF"), "PDF"),
)


class HeaderError(ValueError):
    """Not a supported image, or a header that cannot be trusted; the message is the reason."""


@dataclass(frozen=True)
class Header:
    format: str
    width: int
    height: int
    channels: int  # as OpenCV returns the image, unchanged (at most)
    sample_bytes: int  # 1 (8-bit), 2 (16-bit), 4 or 8 (float)
    extra_bytes: int = 0  # what the decoding library holds beside the image

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def image_bytes(self) -> int:
        return self.pixels * self.channels * self.sample_bytes

    @property
    def decode_bytes(self) -> int:
        """The most memory a file takes on its way to 8-bit BGR: the decoder's image beside its
        library's buffers, then beside the copy OpenCV's Python binding makes of it; then, unless it
        is 8-bit BGR already, beside its 8-bit BGR conversion (edge.imagefile.to_bgr8)."""
        decoded = self.image_bytes + max(self.image_bytes, self.extra_bytes)
        bgr8 = self.channels == 3 and self.sample_bytes == 1
        return max(decoded, 0 if bgr8 else self.image_bytes + 3 * self.pixels)

    def describe(self) -> str:
        depth = {1: "8-bit", 2: "16-bit", 4: "32-bit", 8: "64-bit"}.get(self.sample_bytes, "?")
        return f"{self.format}, {self.channels} channel(s) of {depth}"


def read_header(data: bytes) -> Header:
    """The header of a supported image; HeaderError naming the format or the fault otherwise."""
    for magic, parse in _PARSERS:
        if data.startswith(magic):
            try:
                header = parse(data)
            except HeaderError:
                raise
            except (struct.error, IndexError, ValueError):  # ValueError: no segment marker found
                raise HeaderError("truncated or malformed header") from None
            if header.width < 1 or header.height < 1:
                raise HeaderError(f"declares {header.width} x {header.height} pixels")
            return header
    head = data[:64]
    found = next((name for pattern, name in _OTHERS if pattern.match(head)), None)
    raise HeaderError(f"not a decodable image: its content is {f'{found}, ' if found else ''}not {SUPPORTED}")


def _png(data: bytes) -> Header:
    if data[12:16] != b"IHDR":
        raise HeaderError("PNG without IHDR as its first chunk")
    width, height, depth, colour = struct.unpack_from(">IIBB", data, 16)
    channels = {0: 1, 2: 3, 3: 4, 4: 4, 6: 4}.get(colour)  # a palette or grey + alpha may come back as BGRA
    if channels is None or depth not in (1, 2, 4, 8, 16):
        raise HeaderError(f"PNG with colour type {colour} and bit depth {depth}")
    return Header("PNG", width, height, channels, 2 if depth == 16 else 1)


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PROGRESSIVE = {0xC2, 0xC6, 0xCA, 0xCE}


def _jpeg(data: bytes) -> Header:
    i = 2
    while True:
        i = data.index(b"\xff", i)  # garbage between segments: libjpeg skips it too
        while data[i] == 0xFF:
            i += 1
        marker = data[i]
        i += 1
        if marker in (0x01, *range(0xD0, 0xD8)):  # no length
            continue
        if marker in (0xD9, 0xDA):
            raise HeaderError("JPEG without a frame header before its image data")
        (length,) = struct.unpack_from(">H", data, i)
        if marker in _SOF:
            return _jpeg_frame(data, i, marker)
        i += length


def _jpeg_frame(data: bytes, i: int, marker: int) -> Header:
    precision, height, width, n = struct.unpack_from(">BHHB", data, i + 2)
    factors = [data[i + 8 + 3 * k + 1] for k in range(n)]
    h = [f >> 4 for f in factors]
    v = [f & 15 for f in factors]
    if not n or min(h + v) < 1:
        raise HeaderError("JPEG frame header with no or bad components")
    sample = 1 if precision <= 8 else 2
    extra = 0
    # A progressive or multi-scan JPEG is decoded from a buffer of every coefficient (16 bits each).
    # Outside the entropy-coded data 0xFF is followed by 0x00 or a restart: FF DA is a real scan.
    if marker in _PROGRESSIVE or data.count(b"\xff\xda") > 1:
        extra = sum(2 * width * height * hk * vk // (max(h) * max(v)) for hk, vk in zip(h, v, strict=True))
    return Header("JPEG", width, height, 1 if n == 1 else 3, sample, extra)


def _bmp(data: bytes) -> Header:
    (size,) = struct.unpack_from("<I", data, 14)
    if size == 12:  # OS/2 BITMAPCOREHEADER
        width, height, _, bits = struct.unpack_from("<HHHH", data, 18)
    else:
        width, height, _, bits = struct.unpack_from("<iiHH", data, 18)
    return Header("BMP", width, abs(height), 4 if bits == 32 else 3, 1)


def _webp(data: bytes) -> Header:
    if data[8:12] != b"WEBP":
        raise HeaderError("a RIFF file that is not WebP")
    chunk = data[12:16]
    if chunk == b"VP8 ":
        width, height = (v & 0x3FFF for v in struct.unpack_from("<HH", data, 26))
    elif chunk == b"VP8L":
        (bits,) = struct.unpack_from("<I", data, 21)
        width, height = 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    elif chunk == b"VP8X":
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
    else:
        raise HeaderError(f"WebP with an unknown first chunk {chunk!r}")
    return Header("WebP", width, height, 4, 1)


_TIFF_TYPES = {3: ("H", 2), 4: ("I", 4)}  # SHORT, LONG: what the tags read here use


def _tiff(data: bytes) -> Header:
    order = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(order + "I", data, 4)
    (count,) = struct.unpack_from(order + "H", data, ifd)
    tags: dict[int, int] = {}
    for k in range(count):
        tag, kind, n, raw = struct.unpack_from(order + "HHI4s", data, ifd + 2 + 12 * k)
        if kind not in _TIFF_TYPES or not n:
            continue
        code, size = _TIFF_TYPES[kind]
        buffer, at = (raw, 0) if n * size <= 4 else (data, struct.unpack(order + "I", raw)[0])
        values = struct.unpack_from(order + code * min(n, 16), buffer, at)
        tags[tag] = max(values)  # BitsPerSample lists one per sample: the deepest decides
    width, height = tags.get(256, 0), tags.get(257, 0)
    samples, bits = max(1, tags.get(277, 1)), max(1, tags.get(258, 1))
    sample = max(1, (bits + 7) // 8)
    if tags.get(322) and tags.get(323):
        block = tags[322] * tags[323]
    else:
        block = width * min(height, tags.get(278) or height)
    # libtiff reads a strip or tile at a time (8-bit images through an RGBA buffer)
    return Header("TIFF", width, height, samples, sample, block * max(samples, 4) * sample)


_PARSERS = (
    (b"\xff\xd8\xff", _jpeg),
    (b"\x89PNG\r\n\x1a\n", _png),
    (b"BM", _bmp),
    (b"II*\x00", _tiff),
    (b"MM\x00*", _tiff),
    (b"RIFF", _webp),
)
