"""CIE LAB in integers: the colour conversion of preprocessing version 2, the same bytes on every machine.

Why: CLAHE evens out contrast on the L channel of LAB. OpenCV's conversions and its INTER_LINEAR
resize are not bit-exact across CPU architectures (an arm64 Raspberry Pi and an x86 host gave
different bytes for the same image, docs/device.md), so a model quantized and checked on the host
would not see on the Pi what it was checked on. Here every step is integer NumPy, and the few
transcendental numbers (the sRGB curve at 256 codes and 255 midpoints) come from Python's `decimal`,
which rounds correctly in software on every machine.

The encoding is OpenCV's 8-bit LAB (L * 255 / 100, a + 128, b + 128; D65 white, the sRGB curve),
within one or two steps of cv2.cvtColor, so a model trained on version 1 keeps its decisions.

Per pixel the conversion costs ~40 NumPy passes, so preprocessing uses it through two lookup tables,
`Tables`, filled by these same functions (tests/test_preprocess_exact.py checks both ways agree):
`forward` maps each of the 2**24 BGR colours to L and a dense code of its (a, b) pair, `inverse` maps
(code, L) back to RGB. They are built once per machine (~2 s here) and kept in the user's cache
folder, checked by their sha256 when read.
"""

from __future__ import annotations

import decimal
import functools
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

Q = 15  # fixed point: 1.0 is 2**15
ONE = 1 << Q

# sRGB primaries -> XYZ (D65), with X and Z divided by the white point as OpenCV does; rounded to
# fixed point once, here: from now on only integers.
_M = np.array(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
) / np.array([[0.950456], [1.0], [1.088754]])
M = np.rint(_M * ONE).astype(np.int64)
MI = np.rint(np.linalg.inv(_M) * ONE).astype(np.int64)


def _srgb_to_linear(x: decimal.Decimal) -> decimal.Decimal:
    if x <= decimal.Decimal("0.04045"):
        return x / decimal.Decimal("12.92")
    return ((x + decimal.Decimal("0.055")) / decimal.Decimal("1.055")) ** decimal.Decimal("2.4")


@functools.cache
def _srgb_curve() -> tuple[np.ndarray, np.ndarray]:
    """(linear value of each 8-bit code, linear value at which the code steps up), fixed point."""
    with decimal.localcontext(decimal.Context(prec=30)):
        codes = [_srgb_to_linear(decimal.Decimal(i) / 255) * ONE for i in range(256)]
        steps = [_srgb_to_linear(decimal.Decimal(2 * i + 1) / 510) * ONE for i in range(255)]
        linear = [int(v.to_integral_value(decimal.ROUND_HALF_EVEN)) for v in codes]
        up = [int(v.to_integral_value(decimal.ROUND_CEILING)) for v in steps]
    return np.array(linear, np.int64), np.array(up, np.int64)


def _div_round(a, b: int):
    """round(a / b), halves away from zero, for integer arrays and a positive integer b."""
    return np.where(a >= 0, (a + b // 2) // b, -((-a + b // 2) // b))


def _icbrt(n: np.ndarray) -> np.ndarray:
    """floor(cbrt(n)) of non-negative int64, by integer Newton steps from above."""
    bits = np.zeros_like(n)
    rest = n.copy()
    for shift in (32, 16, 8, 4, 2, 1):
        big = rest >= (1 << shift)
        bits += np.where(big, shift, 0)
        rest = np.where(big, rest >> shift, rest)
    x = np.left_shift(np.int64(1), (bits + 3) // 3)
    while True:
        y = (2 * x + n // np.maximum(x * x, 1)) // 3
        if (y >= x).all():
            return x
        x = np.minimum(x, y)


@functools.cache
def _f_table() -> np.ndarray:
    """LAB's f(t) for t = 0 .. 1.25 (index t * 2**15), value * 2**15, rounded to nearest."""
    t = np.arange(int(1.25 * ONE) + 1, dtype=np.int64)
    n = t << (2 * Q)
    root = _icbrt(n)
    root = np.where((2 * root + 1) ** 3 <= 8 * n, root + 1, root)
    linear = _div_round(7787 * 116 * t + 16 * 1000 * ONE, 1000 * 116)  # 7.787 t + 16/116, as OpenCV
    return np.where(t > int(0.008856 * ONE), root, linear)


@functools.cache
def _channel_terms() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For R, G and B: (256, 3) of each 8-bit code's share of X, Y, Z (fixed point 2**30)."""
    linear, _ = _srgb_curve()
    return tuple(np.outer(linear, M[:, k]) for k in range(3))


def _lab_from_xyz(x, y, z):
    f = _f_table()
    top = len(f) - 1
    fx, fy, fz = (f[np.clip((v + (ONE >> 1)) >> Q, 0, top)] for v in (x, y, z))
    lightness = _div_round((116 * fy - 16 * ONE) * 255, 100 * ONE)
    a = _div_round(500 * (fx - fy), ONE) + 128
    b = _div_round(200 * (fy - fz), ONE) + 128
    return tuple(np.clip(v, 0, 255) for v in (lightness, a, b))


def bgr_to_lab(bgr: np.ndarray) -> np.ndarray:
    """uint8 ... x 3 BGR -> uint8 ... x 3 LAB in OpenCV's 8-bit encoding."""
    red, green, blue = _channel_terms()
    b, g, r = (np.asarray(bgr)[..., i].astype(np.intp) for i in range(3))
    x, y, z = (red[r, k] + green[g, k] + blue[b, k] for k in range(3))
    return np.stack(_lab_from_xyz(x, y, z), -1).astype(np.uint8)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """uint8 ... x 3 LAB (OpenCV's 8-bit encoding) -> uint8 ... x 3 RGB."""
    _, steps = _srgb_curve()
    lab = np.asarray(lab).astype(np.int64)
    lightness, a, b = lab[..., 0], lab[..., 1] - 128, lab[..., 2] - 128
    fy = _div_round(lightness * 100 * ONE + 16 * 255 * ONE, 116 * 255)
    f = np.stack([fy + _div_round(a * ONE, 500), fy, fy - _div_round(b * ONE, 200)], -1)
    cube = _div_round(np.maximum(f, 0) ** 3, ONE * ONE)
    linear = _div_round((f - _div_round(16 * ONE, 116)) * 1000, 7787)
    xyz = np.where(f > int(6 * ONE / 29), cube, linear)
    rgb_linear = np.clip((xyz @ MI.T + (ONE >> 1)) >> Q, 0, ONE)
    return np.searchsorted(steps, rgb_linear, side="right").astype(np.uint8)


@dataclass(frozen=True)
class Tables:
    """bgr_to_lab and lab_to_rgb as lookups. forward: B | G << 8 | R << 16 -> L | code(a, b) << 8;
    inverse: L | code << 8 -> R | G << 8 | B << 16."""

    forward: np.ndarray  # uint32, 2**24
    inverse: np.ndarray  # uint32, codes * 256

    @classmethod
    def build(cls) -> Tables:
        red, green, blue = _channel_terms()
        lab = np.empty((256, 256, 256, 3), np.uint8)  # [R, G, B]
        for r in range(0, 256, 16):  # 16 red codes at a time: ~100 MB of int64 temporaries
            x, y, z = (
                red[r : r + 16, k][:, None, None] + green[:, k][None, :, None] + blue[:, k][None, None, :]
                for k in range(3)
            )
            for i, v in enumerate(_lab_from_xyz(x, y, z)):
                lab[r : r + 16, ..., i] = v
        ab = lab[..., 1].astype(np.uint32) << 8 | lab[..., 2]
        present = np.zeros(1 << 16, bool)
        present[ab.reshape(-1)] = True
        code_of = (np.cumsum(present, dtype=np.uint32) - 1).astype(np.uint32)
        # [R, G, B] in C order is the index B | G << 8 | R << 16
        forward = (code_of[ab] << 8 | lab[..., 0]).reshape(-1)
        pairs = np.flatnonzero(present).astype(np.int64)
        grid = np.empty((len(pairs), 256, 3), np.uint8)
        grid[..., 0] = np.arange(256, dtype=np.uint8)
        grid[..., 1] = (pairs >> 8)[:, None]
        grid[..., 2] = (pairs & 0xFF)[:, None]
        rgb = lab_to_rgb(grid).astype(np.uint32)
        inverse = (rgb[..., 0] | rgb[..., 1] << 8 | rgb[..., 2] << 16).reshape(-1)
        return cls(forward.astype(np.uint32), inverse.astype(np.uint32))


# The tables' sha256, as built here from the functions above (x86-64 and arm64 alike, docs/device.md):
# a machine that builds other tables must not preprocess, and the disk cache is checked against them.
FORWARD_SHA256 = "0c7d6a800234a89b"
INVERSE_SHA256 = "177188eac5d0182d"
_CACHE_ENV = "EDGE_CACHE_DIR"


def _cache_dir() -> Path:
    base = os.environ.get(_CACHE_ENV) or os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edge-hemato"


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(array.tobytes()).hexdigest()


class TablesError(RuntimeError):
    """The LAB tables built or read here are not the ones every other machine has."""


def _checked(built: Tables, where: str) -> Tables:
    got = (_digest(built.forward), _digest(built.inverse))
    if not (got[0].startswith(FORWARD_SHA256) and got[1].startswith(INVERSE_SHA256)):
        raise TablesError(
            f"{where}: LAB tables with sha256 {got[0][:16]}/{got[1][:16]}, expected "
            f"{FORWARD_SHA256}/{INVERSE_SHA256}: this machine's NumPy computes integers differently"
        )
    return built


@functools.cache
def tables() -> Tables:
    """The process's LAB tables: read from the cache folder (mapped, not copied) when there and
    intact, else built (~2 s on a desktop, about a minute on a Raspberry Pi 4) and saved there."""
    folder = _cache_dir()
    paths = folder / f"cielab-forward-{FORWARD_SHA256}.npy", folder / f"cielab-inverse-{INVERSE_SHA256}.npy"
    try:
        return _checked(Tables(*(np.load(p, mmap_mode="r") for p in paths)), str(folder))
    except (OSError, ValueError, TablesError):
        pass  # absent or damaged: build them
    log.info("building the LAB lookup tables (once per machine)")
    built = _checked(Tables.build(), "built")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for path, array in zip(paths, (built.forward, built.inverse), strict=True):
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as fh:
                np.save(fh, array)
            os.replace(tmp, path)
    except OSError as exc:  # a read-only home: keep them in memory only
        log.info("LAB tables not cached (%s)", exc)
    return built
