"""A microscope's scale, measured from its red cells.

Cell size is part of what tells a small lymphocyte from a blast, but every microscope and camera
puts a different number of pixels on a micrometre. A normal red cell is about 7.5 um across in
every smear, so the median diameter of the red cells in a microscope's images says how many pixels
it puts on a micrometre. The bundle records the scale of its training sources, a calibrated site
records its own, and preprocessing cuts every cell at one physical size (edge.preprocess).

How: circles in the green channel (haemoglobin and the stains absorb green) by OpenCV's Hough
transform on a copy at most WORK_SIDE pixels wide, kept when they look like a red cell: a filled
disc darker than the slide (the pale centre of a red cell is allowed), no purple (a white cell's
nucleus), and an edge (not a circle drawn inside a larger cell). One image gives a few circles; a
microscope's scale is the median over many images (`measure`), which a stray circle cannot move.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np

from edge.progress import progress

RBC_UM = 7.5  # the diameter of a normal red cell, in micrometres
WORK_SIDE = 320  # circles are looked for on a copy this wide: enough for red cells of >= 8 px
# A scale needs this many red cells, from at least this many images, before it is trusted.
MIN_CELLS = 20
MIN_IMAGES = 3
# Scales are rounded to this many pixels, so that a measurement repeated on another machine (Hough
# uses floating point) gives the same preprocessing.
ROUND_PX = 0.5


@dataclass(frozen=True)
class Scale:
    """A microscope's scale: the median red-cell diameter in pixels of its images."""

    rbc_px: float
    cells: int  # red cells measured
    images: int  # images they came from

    @property
    def px_per_um(self) -> float:
        return self.rbc_px / RBC_UM

    def to_dict(self) -> dict:
        return {
            "rbc_px": self.rbc_px,
            "px_per_um": round(self.px_per_um, 3),
            "red_cells": self.cells,
            "images": self.images,
        }


def _circles(green: np.ndarray) -> np.ndarray:
    side = min(green.shape)
    found = cv2.HoughCircles(
        cv2.GaussianBlur(green, (0, 0), 1.5),
        cv2.HOUGH_GRADIENT_ALT,
        dp=1.5,
        minDist=side * 0.05,
        param1=150,
        param2=0.7,
        minRadius=max(4, int(side * 0.03)),
        maxRadius=int(side * 0.3),
    )
    return np.zeros((0, 3), np.float32) if found is None else found[0]


def _looks_like_a_red_cell(cell: np.ndarray, purple: np.ndarray, x: float, y: float, r: float) -> bool:
    """The ring between 0.55 and 0.9 of the radius is mostly cell, the disc holds little purple, and
    the band just outside is not all cell (the circle has an edge)."""
    h, w = cell.shape
    reach = int(math.ceil(1.35 * r)) + 1
    x0, y0, x1, y1 = (
        max(0, int(x) - reach),
        max(0, int(y) - reach),
        min(w, int(x) + reach),
        min(h, int(y) + reach),
    )
    yy, xx = np.ogrid[y0:y1, x0:x1]
    d2 = (xx - x) ** 2 + (yy - y) ** 2
    patch, violet = cell[y0:y1, x0:x1], purple[y0:y1, x0:x1]
    ring = (d2 >= (0.55 * r) ** 2) & (d2 <= (0.9 * r) ** 2)
    if ring.sum() < 10 or patch[ring].mean() < 0.75:
        return False
    if violet[d2 <= (0.9 * r) ** 2].mean() > 0.15:
        return False
    outside = (d2 >= (1.15 * r) ** 2) & (d2 <= (1.35 * r) ** 2)
    return not (outside.any() and patch[outside].mean() > 0.85)


def _on_a_white_cell(x: float, y: float, r: float, boxes) -> bool:
    return any(bx - r <= x <= bx + bw + r and by - r <= y <= by + bh + r for bx, by, bw, bh in boxes)


def red_cell_diameters(image_bgr: np.ndarray, white_cells=None) -> list[float]:
    """Diameters, in the image's own pixels, of the red cells found in one 8-bit BGR image.

    `white_cells`: boxes (x, y, w, h) of the white cells, whose nucleus lobes and outline must not be
    taken for red cells; None for a single-cell image, whose white cell is the one in the middle
    (circles that hold the image's centre are skipped)."""
    h, w = image_bgr.shape[:2]
    factor = min(WORK_SIDE / max(h, w), 1.0)
    small = (
        cv2.resize(
            image_bgr, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA
        )
        if factor < 1
        else image_bgr
    )
    green = np.ascontiguousarray(small[..., 1])
    blurred = cv2.GaussianBlur(green, (0, 0), 1.0)
    otsu, _ = cv2.threshold(blurred, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    cell = blurred < (otsu + np.percentile(blurred, 90)) / 2  # clearly darker than the slide
    blue, red = small[..., 0].astype(np.int16), small[..., 2].astype(np.int16)
    purple = (blue - red) > 10
    if white_cells is None:
        centre = (small.shape[1] / 2, small.shape[0] / 2)
        boxes = [(centre[0], centre[1], 0.0, 0.0)]
    else:
        boxes = [tuple(v * factor for v in box) for box in white_cells]
    return [
        float(2 * r / factor)
        for x, y, r in _circles(green)
        if not _on_a_white_cell(x, y, 1.1 * r, boxes) and _looks_like_a_red_cell(cell, purple, x, y, r)
    ]


def measure(
    images: Iterable[np.ndarray | tuple[np.ndarray, list]],
    min_cells: int = MIN_CELLS,
    min_images: int = MIN_IMAGES,
) -> Scale | None:
    """The scale of the microscope that took `images` (8-bit BGR single-cell images, or (frame, white
    cell boxes) pairs), or None when they hold too few red cells to say (fewer than `min_cells` from
    `min_images` images)."""
    diameters, images_with_cells = [], 0
    for item in images:
        image, boxes = item if isinstance(item, tuple) else (item, None)
        found = red_cell_diameters(image, boxes)
        diameters += found
        images_with_cells += bool(found)
    if len(diameters) < min_cells or images_with_cells < min_images:
        return None
    rbc_px = round(float(np.median(diameters)) / ROUND_PX) * ROUND_PX
    return Scale(rbc_px=rbc_px, cells=len(diameters), images=images_with_cells)


def measure_files(files, sample: int = 150, seed: int = 0) -> Scale | None:
    """`measure` on up to `sample` of `files` (single-cell images), chosen at random; unreadable files
    are passed over (the caller names them where it reads them for good)."""
    from edge.errors import ImageLoadError
    from edge.imagefile import load_image, to_bgr8

    files = list(files)
    order = np.random.default_rng(seed).permutation(len(files))[:sample]

    def images():
        for i in progress(order, desc="measuring the scale (red cells)", note=False, leave=False):
            try:
                yield to_bgr8(load_image(files[i]))
            except (ImageLoadError, ValueError):
                continue

    return measure(images())


class ScaleKeeper:
    """A session's (or a folder's) microscope scale: the calibrated site's, or measured from its first
    images until MIN_CELLS red cells from MIN_IMAGES images are in, then fixed for the rest of the
    session (a scale that changed mid-slide would change what a cell looks like to the model)."""

    def __init__(self, site_rbc_px: float | None = None):
        self.rbc_px = site_rbc_px
        self.source = "site" if site_rbc_px else None
        self._diameters: list[float] = []
        self._images = 0
        self.looked_at = 0  # images observed

    @property
    def known(self) -> bool:
        return self.rbc_px is not None

    def observe(self, image_bgr: np.ndarray, white_cells=None) -> bool:
        """Measure one more image while the scale is unknown; True when this made it known."""
        if self.known:
            return False
        self.looked_at += 1
        found = red_cell_diameters(image_bgr, white_cells)
        self._diameters += found
        self._images += bool(found)
        if len(self._diameters) >= MIN_CELLS and self._images >= MIN_IMAGES:
            self.rbc_px = round(float(np.median(self._diameters)) / ROUND_PX) * ROUND_PX
            self.source = "measured"
            return True
        return False

    def to_dict(self) -> dict:
        return {
            "rbc_px": self.rbc_px,
            "source": self.source,
            "red_cells": len(self._diameters) if self.source != "site" else None,
            "images_looked_at": self.looked_at,
        }
