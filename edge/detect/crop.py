"""The crop rule: a detected box -> the square crop the classifier sees (docs/field.md, "The crop rule").

The classifier was trained on single-cell images: one cell in the centre, filling a fraction of the
image's side that `scripts/measure_cell_fraction.py` measured on its training sets. A detected cell
is cropped the same way: a square centred on the box, of side max(w, h) / cell_fraction, filled by
reflection where it leaves the frame. `edge detect`, `edge run --mode field` and training on detected
crops all call `crop_cell`, so they crop alike.
"""

from __future__ import annotations

import cv2
import numpy as np

from edge.detect.spec import CropRule

_BORDERS = {"reflect": cv2.BORDER_REFLECT_101, "constant": cv2.BORDER_CONSTANT}


def crop_box(box, rule: CropRule) -> tuple[int, int, int, int]:
    """(x, y, w, h) of a detected cell -> the (x, y, side, side) square of its crop, in the same pixels.
    It may reach beyond the frame; `crop_cell` fills that part."""
    x, y, w, h = (float(v) for v in box)
    side = max(1, int(round(max(w, h) / float(rule.cell_fraction))))
    left = int(round(x + w / 2 - side / 2))
    top = int(round(y + h / 2 - side / 2))
    return left, top, side, side


def crop_region(image: np.ndarray, region, rule: CropRule | None, fill: tuple | None = None) -> np.ndarray:
    """The pixels of `region` (x, y, w, h), the parts outside `image` filled with the colour `fill`
    (the slide's: a reflection would show mirrored cells a technician might count), or as `rule` says."""
    x, y, w, h = (int(v) for v in region)
    H, W = image.shape[:2]
    x0, y0, x1, y1 = max(0, x), max(0, y), min(W, x + w), min(H, y + h)
    if x1 <= x0 or y1 <= y0:  # entirely outside: nothing to reflect
        if fill is not None:
            return np.full((h, w, *image.shape[2:]), fill, image.dtype)
        return np.full((h, w, *image.shape[2:]), rule.border_value, image.dtype)
    inside = image[y0:y1, x0:x1]
    pads = (y0 - y, y + h - y1, x0 - x, x + w - x1)
    if not any(pads):
        return inside
    if fill is not None:
        return cv2.copyMakeBorder(inside, *pads, cv2.BORDER_CONSTANT, value=tuple(float(v) for v in fill))
    # OpenCV reflects again and again where the padding is wider than the visible part
    value = (rule.border_value,) * (image.shape[2] if image.ndim == 3 else 1)
    return cv2.copyMakeBorder(inside, *pads, _BORDERS[rule.border], value=value)


def crop_cell(image: np.ndarray, box, rule: CropRule) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A detected cell's crop (square, as the classifier's training images framed their cell) and
    where it lies in `image`."""
    square = crop_box(box, rule)
    return crop_region(image, square, rule), square
