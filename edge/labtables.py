"""CLAHE on L of LAB through two lookup tables filled by OpenCV itself: the same bytes as
cvtColor(BGR -> LAB), CLAHE on L, cvtColor(LAB -> RGB), in less time (docs/bench.md).

Why: at the model's 224 x 224 the two 8-bit LAB conversions are a large part of preprocessing,
which sits on the critical path of every frame. OpenCV computes each pixel with fixed-point
arithmetic; a gather from a table is cheaper.

Exact by construction: OpenCV's 8-bit colour conversion is a pure function of a pixel's three
bytes. `forward` holds cvtColor(BGR -> LAB) of all 2**24 colours, computed once by the installed
OpenCV, so a lookup gives what that OpenCV would compute. `inverse` holds cvtColor(LAB -> RGB) of
every (L, a, b) that can occur: 8-bit sRGB reaches only ~22,700 (a, b) pairs, so instead of a second
2**24 table the forward table stores a dense code for the pair next to L, and the inverse table is
indexed by (code, L'). tests/test_preprocess.py checks the result against the two cvtColor calls.

Cost: 64 MB (forward) + 23 MB (inverse) of memory and about a second to build. So nothing builds
them but the per-frame pipelines (`edge run`, `edge bench`), once at start-up (`choose`), and they
are passed to `edge.preprocess.preprocess` as its `lab` strategy; one-shot commands keep cvtColor.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from dataclasses import dataclass

import cv2
import numpy as np

from edge.preprocess import CVTCOLOR, CvtColorLab

log = logging.getLogger(__name__)

MIN_RAM_BYTES = 1 << 30
_COLOURS = 1 << 24
_CHUNK_ROWS = 256  # converted 256 rows of 4096 colours (1M) at a time
STRATEGIES = ("auto", "tables", "cvtcolor")


@dataclass(frozen=True)
class LabTables:
    # index B | G << 8 | R << 16 -> value L | code(a, b) << 8
    forward: np.ndarray
    # index L | code(a, b) << 8 -> value R | G << 8 | B << 16
    inverse: np.ndarray
    name = "tables"
    channels = 4  # pixels are read as 32-bit BGRA words

    def clahe_on_l(self, image: np.ndarray, clahe: cv2.CLAHE, color_order: str = "RGB") -> np.ndarray:
        """uint8 H x W x 4 BGRA (alpha ignored; used as scratch space and overwritten) -> CLAHE on L of
        LAB, in `color_order`: the same bytes as CVTCOLOR's on the BGR pixels."""
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


@functools.cache
def _ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX: assume a desktop
        return 1 << 40


def not_here() -> str | None:
    """Why `choose("auto")` keeps cvtColor on this machine, or None when it builds the tables."""
    if sys.byteorder != "little":
        return "a big-endian machine"
    if _ram_bytes() < MIN_RAM_BYTES:
        return f"under {MIN_RAM_BYTES >> 30} GiB of RAM"
    return None


class UnusedLab(CvtColorLab):
    """What a run whose bundles are all preprocessing version 2 holds: their LAB round trip is
    edge.cielab's integer one, inside `preprocess`, so no strategy is built (the tables would cost
    ~90 MB of a field-mode daemon's memory and a second of its start-up for nothing)."""

    name = "none (version 2: edge.cielab)"


UNUSED = UnusedLab()


def reads_a_strategy(spec) -> bool:
    """Only version 1 with CLAHE takes its LAB round trip from the strategy passed to preprocess."""
    return spec.version == 1 and spec.contrast == "clahe"


def choose(strategy: str = "auto", specs=None):
    """The LAB strategy a per-frame pipeline uses, decided once at start-up: the tables, unless
    `strategy` is "cvtcolor", the machine has under 1 GiB of RAM or is big-endian (the packing reads
    bytes as little-endian words), or building them runs out of memory. Same bytes either way.
    `specs`: the preprocessing of the run's bundles; none of version 1 with CLAHE, none is built."""
    if strategy not in STRATEGIES:
        raise ValueError(f"LAB strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
    if specs is not None and not any(reads_a_strategy(s) for s in specs):
        return UNUSED
    if strategy == "cvtcolor":
        return CVTCOLOR
    if strategy == "auto" and not_here():
        return CVTCOLOR
    try:
        return build()
    except MemoryError:  # a busy small device: keep to cvtColor, say so once
        log.warning("not enough memory for the LAB lookup tables (~90 MB); using cvtColor")
        return CVTCOLOR
