"""A confusion-matrix picture drawn with OpenCV, so `edge eval --plot` needs nothing beyond the device install."""

from __future__ import annotations

import cv2
import numpy as np

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _text_size(text: str, scale: float, thickness: int = 1) -> tuple[int, int]:
    (w, h), _ = cv2.getTextSize(text, _FONT, scale, thickness)
    return w, h


def draw_confusion(confusion, labels: list[str], title: str = "", cell: int = 72) -> np.ndarray:
    """BGR image of the matrix: rows true, columns predicted, cells shaded by the row fraction, with counts."""
    cm = np.asarray(confusion, dtype=np.int64)
    n = len(labels)
    row_sums = cm.sum(1, keepdims=True)
    frac = np.divide(cm, row_sums, out=np.zeros(cm.shape, float), where=row_sums > 0)
    scale = 0.45
    label_w = max(_text_size(x, scale)[0] for x in labels) + 16
    top = label_w + (28 if title else 8)  # column labels are drawn vertically
    left = label_w + 24
    width, height = left + n * cell + 16, top + n * cell + 40
    img = np.full((height, width, 3), 255, np.uint8)
    if title:
        cv2.putText(img, title, (8, 20), _FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    # Column labels: draw on a strip, rotate it 90 degrees, paste above the grid.
    strip = np.full((cell * n, label_w, 3), 255, np.uint8)
    for j, name in enumerate(labels):
        w, h = _text_size(name, scale)
        cv2.putText(strip, name, (6, j * cell + (cell + h) // 2), _FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    img[top - label_w : top, left : left + n * cell] = cv2.rotate(strip, cv2.ROTATE_90_COUNTERCLOCKWISE)
    for i, name in enumerate(labels):
        w, h = _text_size(name, scale)
        cv2.putText(
            img,
            name,
            (left - w - 8, top + i * cell + (cell + h) // 2),
            _FONT,
            scale,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
        for j in range(n):
            x0, y0 = left + j * cell, top + i * cell
            shade = int(round(255 * (1 - frac[i, j])))  # white (0) to deep blue (all of the row)
            colour = (255, shade, shade) if i == j else (shade, shade, 255)
            cv2.rectangle(img, (x0, y0), (x0 + cell, y0 + cell), colour, -1)
            cv2.rectangle(img, (x0, y0), (x0 + cell, y0 + cell), (160, 160, 160), 1)
            text = str(int(cm[i, j]))
            tw, th = _text_size(text, 0.5)
            ink = (255, 255, 255) if frac[i, j] > 0.55 else (0, 0, 0)
            cv2.putText(
                img, text, (x0 + (cell - tw) // 2, y0 + (cell + th) // 2), _FONT, 0.5, ink, 1, cv2.LINE_AA
            )
    cv2.putText(
        img,
        "rows: true class, columns: predicted",
        (left, height - 14),
        _FONT,
        0.42,
        (60, 60, 60),
        1,
        cv2.LINE_AA,
    )
    return img


def write_confusion_png(path, confusion, labels: list[str], title: str = "") -> None:
    if not cv2.imwrite(str(path), draw_confusion(confusion, labels, title)):
        raise OSError(f"{path}: could not write the image (is the folder writable and the suffix .png?)")
