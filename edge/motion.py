"""How far one view moved from another, and whether it is the same view at all, from small grey
thumbnails: phase correlation for the shift, then the correlation of the overlapping parts once the
shift is undone. Two views of one field score near 1 even while the stage moves; two different
fields score far lower (0.3-0.6 for BCCD fields, whose red cells look alike), which phase
correlation's own response alone does not tell apart at thumbnail size."""

from __future__ import annotations

import cv2
import numpy as np

from edge.preprocess_exact import halve_until

THUMB_WIDTH = 128


def thumbnail(image: np.ndarray, width: int = THUMB_WIDTH, order: str = "BGR") -> tuple[np.ndarray, float]:
    """Grey float32 thumbnail `width` wide, high-passed, and its scale (thumbnail px per image px)."""
    h, w = image.shape[:2]
    scale = width / w
    size = (width, max(8, int(round(h * scale))))
    code = cv2.COLOR_BGR2GRAY if order == "BGR" else cv2.COLOR_RGB2GRAY
    grey = cv2.cvtColor(image, code) if image.ndim == 3 else image
    # exact 2x area halvings (OpenCV's fast path), then a bilinear step of less than 2x: nearly the
    # box filter of one INTER_AREA step, at half its cost (cell mode runs this on every frame)
    grey = halve_until(grey, *size)
    small = cv2.resize(grey, size, interpolation=cv2.INTER_LINEAR)
    small = small.astype(np.float32)
    # minus its blur: the lamp's uneven light is the same in every field and would make any two alike
    return small - cv2.GaussianBlur(small, (0, 0), width / 32), scale


def match(
    prev: np.ndarray, cur: np.ndarray, window: np.ndarray | None = None
) -> tuple[tuple[float, float], float]:
    """((dx, dy) in thumbnail px that `cur` moved from `prev`, similarity in [-1, 1] of their overlap)."""
    (dx, dy), _ = cv2.phaseCorrelate(prev, cur, window)
    h, w = prev.shape
    ix, iy = int(round(dx)), int(round(dy))
    if abs(ix) >= w // 2 or abs(iy) >= h // 2:
        return (dx, dy), 0.0
    a = prev[max(0, -iy) : h - max(0, iy), max(0, -ix) : w - max(0, ix)]
    b = cur[max(0, iy) : h - max(0, -iy), max(0, ix) : w - max(0, -ix)]
    a, b = a - a.mean(), b - b.mean()
    norm = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return (dx, dy), float((a * b).sum() / norm) if norm > 0 else 0.0
