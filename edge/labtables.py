"""CLAHE on L of LAB through two lookup tables filled by OpenCV itself: the same bytes as
cvtColor(BGR -> LAB), CLAHE on L, cvtColor(LAB -> RGB), in about half the time.

Why: at the model's 224 x 224, the two 8-bit LAB conversions cost ~1 ms of a ~5.5 ms invoke() on
this machine (OpenCV computes each pixel with fixed-point arithmetic and table lookups, ~10 ns a
pixel), and preprocessing sits on the critical path of every frame. A gather from a table costs
~2 ns a pixel.

Exact by construction: OpenCV's 8-bit colour conversion is a pure function of a pixel's three
bytes. `forward` holds cvtColor(BGR -> LAB) of all 2**24 colours, computed once by the installed
OpenCV, so a lookup gives what that OpenCV would compute. `inverse` holds cvtColor(LAB -> RGB) of
every (L, a, b) that can occur: 8-bit sRGB reaches only ~22,700 (a, b) pairs, so instead of a second
2**24 table the forward table stores a dense code for the pair next to L, and the inverse table is
indexed by (code, L'). tests/test_preprocess.py checks the result against the two cvtColor calls.

The two passes over the tables run as one C loop each (edge/_lab_kernels.c) where setup.py could
compile it, and as a few NumPy calls each otherwise; `edge doctor` says which.

Cost: 64 MB (forward) + 23 MB (inverse) of memory and ~1 s to build (in chunks, so the peak while
building stays near the tables' own size). So they are built only by `prepare()`, which the
per-frame pipelines call at start-up (`edge run`, `edge bench`); until then, and with
`EDGE_LAB_TABLES=0`, on machines with under 1 GiB of RAM, or big-endian ones (the packing reads
bytes as little-endian uint32), preprocessing takes the cvtColor path, with the same bytes.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
from dataclasses import dataclass

import cv2
import numpy as np

try:
    from edge import _lab_kernels as _compiled
except ImportError:  # no compiler at install time: NumPy does the same passes
    _compiled = None

log = logging.getLogger(__name__)

MIN_RAM_BYTES = 1 << 30
_COLOURS = 1 << 24
_CHUNK_ROWS = 256  # converted 256 rows of 4096 colours (1M) at a time


@dataclass(frozen=True)
class LabTables:
    # index B | G << 8 | R << 16 -> value L | code(a, b) << 8
    forward: np.ndarray
    # index L | code(a, b) << 8 -> value R | G << 8 | B << 16
    inverse: np.ndarray

    def clahe_on_l(self, image: np.ndarray, clahe: cv2.CLAHE, color_order: str = "RGB") -> np.ndarray:
        """uint8 H x W x 3 BGR -> CLAHE on L of LAB, in `color_order`. A 4-channel BGRA `image`
        (alpha ignored) is used as scratch space and overwritten: preprocess hands over its own.

        Same bytes as `edge.preprocess`'s cvtColor path. One thread: splitting the gathers into two
        row bands (edge.rowbands) measured slower right after invoke() (preprocess p50 1.86 vs
        1.53 ms, frames interleaved in one process)."""
        kernels = compiled_kernels()
        if kernels is not None:  # the same passes as below, one C loop each, on BGR or BGRA
            h, w = image.shape[:2]
            lab, lightness = np.empty((h, w), np.uint32), np.empty((h, w), np.uint8)
            kernels.to_lab(np.ascontiguousarray(image), self.forward, lab, lightness)
            out = np.empty((h, w, 3), np.uint8)
            kernels.to_rgb(lab, clahe.apply(lightness), self.inverse, out, color_order != "RGB")
            return out
        if image.shape[2] == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2BGRA)
        # B | G<<8 | R<<16 | alpha<<24 as one little-endian word; the mask drops alpha.
        packed = np.ascontiguousarray(image).view(np.uint32)
        np.bitwise_and(packed, _COLOURS - 1, out=packed)  # in place: the freshly written pixels are in cache
        # mode="clip" skips the bounds check; every index is in range by construction.
        lab = self.forward.take(packed, mode="clip").view(np.uint8)  # H x W x 4: L, then the (a, b) code
        cv2.insertChannel(clahe.apply(cv2.extractChannel(lab, 0)), lab, 0)
        rgbx = self.inverse.take(lab.view(np.uint32), mode="clip").view(np.uint8)  # R, G, B, 0
        # BGRA2BGR only drops the 4th byte (R, G, B stay in place); BGRA2RGB also swaps to B, G, R.
        return cv2.cvtColor(rgbx, cv2.COLOR_BGRA2BGR if color_order == "RGB" else cv2.COLOR_BGRA2RGB)


def build() -> LabTables:
    """Fill both tables from this process's OpenCV (~1 s; chunked, so building needs little more
    memory than the 87 MB of tables)."""
    forward = np.empty((4096, 4096), np.uint32)  # the 2**24 colours as a 4096 x 4096 image
    present = np.zeros(1 << 16, bool)
    for top in range(0, 4096, _CHUNK_ROWS):
        colours = np.arange(top * 4096, (top + _CHUNK_ROWS) * 4096, dtype=np.uint32)
        bgr = np.ascontiguousarray(colours.view(np.uint8).reshape(_CHUNK_ROWS, 4096, 4)[..., :3])
        lab = cv2.cvtColor(bgr, cv2.COLOR_BGR2LAB).astype(np.uint32)
        ab = lab[..., 1] << 8 | lab[..., 2]
        present[ab] = True
        forward[top : top + _CHUNK_ROWS] = ab << 8 | lab[..., 0]  # raw (a, b) for now; its dense code below
    code_of = (np.cumsum(present, dtype=np.uint32) - 1) << 8
    for top in range(0, 4096, _CHUNK_ROWS):
        chunk = forward[top : top + _CHUNK_ROWS]
        chunk[...] = code_of[chunk >> 8] | (chunk & 0xFF)

    pairs = np.flatnonzero(present).astype(np.uint32)  # the (a, b) of code 0, 1, 2, ...
    inverse = np.zeros((len(pairs), 256, 4), np.uint8)  # row = code, column = L
    for first in range(0, len(pairs), _CHUNK_ROWS * 16):
        ab = pairs[first : first + _CHUNK_ROWS * 16]
        lab = np.empty((len(ab), 256, 3), np.uint8)
        lab[..., 0] = np.arange(256, dtype=np.uint8)
        lab[..., 1] = (ab >> 8)[:, None]
        lab[..., 2] = (ab & 0xFF)[:, None]
        inverse[first : first + len(ab), :, :3] = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    return LabTables(forward=forward.reshape(-1), inverse=inverse.view(np.uint32).reshape(-1))


def enabled() -> bool:
    """Tables unless EDGE_LAB_TABLES=0, the machine is big-endian, or it has under 1 GiB of RAM."""
    return os.environ.get("EDGE_LAB_TABLES", "1") != "0" and sys.byteorder == "little" and _ram_bytes() >= MIN_RAM_BYTES


@functools.cache
def _ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX: assume a desktop
        return 1 << 40


def compiled_kernels():
    """edge._lab_kernels (setup.py builds it where a C compiler is at hand), unless
    EDGE_LAB_KERNELS=0; None otherwise, and the NumPy passes run instead."""
    if _compiled is None or os.environ.get("EDGE_LAB_KERNELS", "1") == "0":
        return None
    return _compiled

_lock = threading.Lock()
_tables: LabTables | None = None
_failed = False


def prepare() -> LabTables | None:
    """Build the tables now, once per process, unless `enabled()` says no. Per-frame pipelines
    (`edge run`, `edge bench`) call this at start-up; one-shot commands do not, because the ~1 s
    build would cost more than the lookups save on a few images. Thread-safe."""
    global _tables, _failed
    if not enabled() or _failed:
        return None
    with _lock:
        if _tables is None and not _failed:
            try:
                _tables = build()
            except MemoryError:  # a busy small device: keep to the cvtColor path, say so once
                _failed = True
                log.warning("not enough memory for the LAB lookup tables (~90 MB); using cvtColor")
    return current()


def current() -> LabTables | None:
    """The tables, if `prepare()` built them and EDGE_LAB_TABLES is not 0 (checked on every call,
    so an A/B run can switch them off)."""
    return _tables if _tables is not None and enabled() else None
