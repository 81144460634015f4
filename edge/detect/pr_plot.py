"""The precision-recall curve of a detector evaluation as a PNG, drawn with OpenCV, so
`edge eval-detector --plot` needs nothing beyond the device install."""

from __future__ import annotations

import cv2
import numpy as np

from edge.detect.evaluate import DetectionReport

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_INK, _GRID, _CURVE, _POINT = (0, 0, 0), (225, 225, 225), (200, 90, 30), (40, 40, 220)


def draw_pr(report: DetectionReport, title: str = "", size: int = 480) -> np.ndarray:
    """BGR image: precision (y) against recall (x) at IoU 0.5, the operating point marked."""
    left, top, right, bottom = 64, 44 if title else 20, 20, 100
    w = h = size
    img = np.full((top + h + bottom, left + w + right, 3), 255, np.uint8)

    def at(recall, precision):
        return int(round(left + recall * w)), int(round(top + (1 - precision) * h))

    for v in np.linspace(0, 1, 11):
        cv2.line(img, at(v, 0), at(v, 1), _GRID, 1)
        cv2.line(img, at(0, v), at(1, v), _GRID, 1)
        cv2.putText(img, f"{v:.1f}", (at(v, 0)[0] - 10, top + h + 18), _FONT, 0.4, _INK, 1, cv2.LINE_AA)
        cv2.putText(img, f"{v:.1f}", (left - 34, at(0, v)[1] + 4), _FONT, 0.4, _INK, 1, cv2.LINE_AA)
    cv2.rectangle(img, at(0, 1), at(1, 0), _INK, 1)
    recall = np.asarray(report.curve.get("recall", []), float)
    precision = np.asarray(report.curve.get("precision", []), float)
    if len(recall):
        # the curve as COCO reads it: precision made non-increasing, from recall 0
        envelope = np.maximum.accumulate(precision[::-1])[::-1]
        points = [at(0.0, envelope[0])] + [at(r, p) for r, p in zip(recall, envelope, strict=True)]
        cv2.polylines(img, [np.array(points, np.int32)], False, _CURVE, 2, cv2.LINE_AA)
    cv2.circle(img, at(report.recall, report.precision), 6, _POINT, 2, cv2.LINE_AA)
    if title:
        cv2.putText(img, title, (8, 22), _FONT, 0.5, _INK, 1, cv2.LINE_AA)
    lines = [
        f"{report.kind}: AP@0.5 {report.ap50:.3f}   AP@0.5:0.95 {report.ap50_95:.3f}   "
        f"{report.objects} cells in {report.frames} frames",
        f"o threshold {report.threshold:.3f}: precision {report.precision:.3f}, recall {report.recall:.3f}, "
        f"{report.false_positives_per_frame:.3f} false positives per frame",
    ]
    for i, line in enumerate(lines):
        cv2.putText(img, line, (8, top + h + 62 + 20 * i), _FONT, 0.42, _INK, 1, cv2.LINE_AA)
    cv2.putText(img, "recall", (left + w // 2 - 20, top + h + 34), _FONT, 0.45, _INK, 1, cv2.LINE_AA)
    cv2.putText(img, "precision", (4, top - 6), _FONT, 0.45, _INK, 1, cv2.LINE_AA)
    return img


def write_pr_png(path, report: DetectionReport, title: str = "") -> None:
    if not cv2.imwrite(str(path), draw_pr(report, title)):
        raise OSError(f"{path}: could not write the image (is the folder writable and the suffix .png?)")
