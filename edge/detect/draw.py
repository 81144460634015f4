"""An image with its detected cells drawn on it (`edge detect --plot`)."""

from __future__ import annotations

import cv2
import numpy as np

from edge.catalogue import caption

_FONT = cv2.FONT_HERSHEY_SIMPLEX
OK, UNCERTAIN, OTHER = (60, 170, 40), (0, 140, 255), (160, 160, 160)


def draw_cells(image: np.ndarray, cells: list[dict]) -> np.ndarray:
    """A copy of `image` (BGR) with each cell's box and its label, confidence and detector score.
    `cells` are `edge detect --json` records: box, score, kind, and for white cells label, confidence,
    uncertain."""
    out = image.copy()
    scale = max(0.45, min(out.shape[:2]) / 800)
    thick = max(1, int(round(scale * 2)))
    for cell in cells:
        x, y, w, h = (int(v) for v in cell["box"])
        if cell.get("kind", "wbc") != "wbc":
            colour, text = OTHER, f"{cell['kind']} {cell['score']:.2f}"
        else:
            colour = UNCERTAIN if cell.get("uncertain") else OK
            text = caption(cell["label"], cell["confidence"]) + (" ?" if cell.get("uncertain") else "")
            text += f"  (cell {cell['score']:.2f})"
        cv2.rectangle(out, (x, y), (x + w, y + h), colour, thick)
        (tw, th), _ = cv2.getTextSize(text, _FONT, scale, thick)
        ty = max(th + 6, y - 6)
        cv2.rectangle(out, (x, ty - th - 6), (x + tw + 8, ty + 4), colour, -1)
        cv2.putText(out, text, (x + 4, ty), _FONT, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return out
