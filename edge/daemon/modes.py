"""What to classify in a frame. `cell`: the centred region where the technician puts a cell.

A mode returns a list of crops, so field mode (every white cell in a frame, a later issue) slots
in without touching the pipeline, the database (one row per crop) or the archive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Crop:
    image: np.ndarray
    box: tuple[int, int, int, int]  # x, y, w, h in the inference image


def center_box(shape: tuple[int, ...], fraction: float) -> tuple[int, int, int, int]:
    """The box of edge.preprocess.center_region: the centred square of `fraction` of the shorter side."""
    return center_box_px(shape, int(round(min(shape[:2]) * float(fraction))))


def center_box_px(shape: tuple[int, ...], side: int) -> tuple[int, int, int, int]:
    """The centred square of `side` pixels (clipped to the frame)."""
    h, w = shape[:2]
    side = max(1, min(int(side), h, w))
    return (w - side) // 2, (h - side) // 2, side, side


class CellMode:
    name = "cell"

    def __init__(self, region: float, region_px: int = 0):
        # region_px equal to the model input (e.g. 224) skips the resize (docs/daemon.md).
        self.region = region
        self.region_px = region_px

    def crops(self, image: np.ndarray) -> list[Crop]:
        if self.region_px:
            x, y, w, h = center_box_px(image.shape, self.region_px)
        else:
            x, y, w, h = center_box(image.shape, self.region)
        return [Crop(image[y : y + h, x : x + w], (x, y, w, h))]


def scale_box(box, src_shape, dst_shape) -> tuple[int, int, int, int]:
    """A box in one image mapped onto another of a different size (lores -> main stream)."""
    sy, sx = dst_shape[0] / src_shape[0], dst_shape[1] / src_shape[1]
    x, y, w, h = box
    return int(round(x * sx)), int(round(y * sy)), max(1, int(round(w * sx))), max(1, int(round(h * sy)))
