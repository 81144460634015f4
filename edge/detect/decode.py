"""A CenterNet-style detector's outputs -> boxes in the image's own pixels, in NumPy + OpenCV.

The model outputs, on a grid of `stride` input pixels: a score map per kind (sigmoid) and, for every
grid cell, the distances from the cell's centre to the left, top, right and bottom edges of the
object centred there, in grid cells. Decoding: local maxima of the score map at or above a threshold
(`peaks`), a box from the distances at each peak, mapped from model-input pixels back to the image
(`edge.preprocess.input_geometry` undoes the letterbox), then non-maximum suppression per kind
(`nms`) for the rare cell whose centre straddles two grid cells.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge.detect.spec import DetectorSpec

# Below this the score map is noise: also the floor of the scores an AP computation ranks.
MIN_SCORE = 0.01


@dataclass
class Detection:
    box: tuple[float, float, float, float]  # x, y, w, h in the image's pixels
    score: float
    kind: str

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        x, y, w, h = self.box
        return x, y, x + w, y + h

    def int_box(self) -> tuple[int, int, int, int]:
        """The box rounded to whole pixels (what the database, the page and --json record)."""
        x0, y0, x1, y1 = (int(round(v)) for v in self.xyxy)
        return x0, y0, max(1, x1 - x0), max(1, y1 - y0)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box in `a` (N x 4, x0 y0 x1 y1) with every box in `b` (M x 4)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Indices of the boxes kept, best score first: each suppresses the later ones it overlaps by > iou."""
    order = list(np.argsort(-np.asarray(scores), kind="stable"))
    if not order:
        return []
    overlaps = iou_matrix(boxes, boxes)
    keep: list[int] = []
    for i in order:
        if all(overlaps[i, j] <= iou for j in keep):
            keep.append(int(i))
    return keep


def peaks(heat: np.ndarray, threshold: float, kernel: int = 3) -> tuple[np.ndarray, ...]:
    """(rows, cols, kinds, scores) of the local maxima of an H x W x K score map at or above `threshold`.
    Equal neighbours (common in a uint8 map) are all kept; NMS sorts them out."""
    heat = np.asarray(heat, np.float32)
    if heat.ndim == 2:
        heat = heat[..., None]
    k = max(1, int(kernel))
    local = cv2.dilate(heat, np.ones((k, k), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    local = local.reshape(heat.shape)
    rows, cols, kinds = np.nonzero((heat >= local) & (heat >= threshold))
    return rows, cols, kinds, heat[rows, cols, kinds]


def decode(
    heat: np.ndarray,
    ltrb: np.ndarray,
    spec: DetectorSpec,
    kinds: list[str],
    geometry: tuple[float, float, float, float],
    image_shape: tuple[int, ...],
    threshold: float | None = None,
) -> list[Detection]:
    """One image's outputs (H x W x K scores, H x W x 4 distances; a leading batch of 1 is dropped)
    -> detections in the image's pixels, best first, at most spec.max_detections.

    `geometry` is `input_geometry(image.shape, preprocess_spec)`; `threshold` defaults to the
    bundle's operating point (evaluation passes a low one to rank every candidate)."""
    heat = np.asarray(heat)[0] if np.ndim(heat) == 4 else np.asarray(heat)
    ltrb = np.asarray(ltrb)[0] if np.ndim(ltrb) == 4 else np.asarray(ltrb)
    if heat.ndim == 2:
        heat = heat[..., None]
    if heat.shape[:2] != ltrb.shape[:2] or ltrb.shape[-1] != 4:
        raise ValueError(f"score map {heat.shape} and box distances {ltrb.shape} do not fit together")
    thr = spec.threshold if threshold is None else threshold
    rows, cols, ks, scores = peaks(heat, max(float(thr), MIN_SCORE), spec.peak_kernel)
    if not len(rows):
        return []
    stride = float(spec.stride)
    d = np.maximum(ltrb[rows, cols].astype(np.float64), 0.0) * stride
    cx, cy = (cols + 0.5) * stride, (rows + 0.5) * stride
    sx, sy, left, top = geometry
    h, w = image_shape[:2]
    boxes = np.stack(
        [
            np.clip((cx - d[:, 0]) * sx + left, 0, w),
            np.clip((cy - d[:, 1]) * sy + top, 0, h),
            np.clip((cx + d[:, 2]) * sx + left, 0, w),
            np.clip((cy + d[:, 3]) * sy + top, 0, h),
        ],
        axis=1,
    )
    valid = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
    out: list[Detection] = []
    for k in np.unique(ks[valid]):
        idx = np.nonzero(valid & (ks == k))[0]
        for i in nms(boxes[idx], scores[idx], spec.nms_iou):
            x0, y0, x1, y1 = boxes[idx[i]]
            out.append(
                Detection(
                    (float(x0), float(y0), float(x1 - x0), float(y1 - y0)), float(scores[idx[i]]), kinds[k]
                )
            )
    out.sort(key=lambda det: -det.score)
    return out[: spec.max_detections]
