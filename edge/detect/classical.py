"""The classical baseline: nucleus colour threshold + connected components (OpenCV).

White-cell nuclei are the only strongly blue-violet things in a Romanowsky-stained field: on LAB's
b axis (blue-yellow) they sit far below red cells, platelets' faint granules and the background
(measured on the BCCD training frames: nucleus pixels b 72-105, everything else >= 122 for 95 %).
So: threshold b, close the gaps between a neutrophil's lobes, drop components smaller than a white
cell's nucleus (platelets), and grow each nucleus box by the cell/nucleus size ratio of the
training frames. The score grows with the nucleus area, so AP can rank the candidates.

It has no model and runs anywhere; `edge eval-detector classical VOC_DIR` measures it with the same
code as the learned detector. Its parameters were fitted on the training split of bccd-frames only
(scripts/fit_classical.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np

from edge.detect.decode import Detection, nms
from edge.detect.spec import WBC


@dataclass(frozen=True)
class ClassicalParams:
    b_max: int = 113  # LAB b (OpenCV's 0-255 scale, 128 neutral) at or below which a pixel is nucleus
    close: float = 0.03  # closing kernel, fraction of the frame's shorter side: joins a neutrophil's lobes
    min_area: float = 0.002  # smallest nucleus, fraction of the frame's area (platelets are below)
    grow: float = 1.2  # cell side / nucleus side
    area_scale: float = 0.03  # score = 1 - exp(-area / (area_scale * frame area))
    merge_iou: float = 0.3


class ClassicalDetector:
    """Same `detect` as edge.detect.detector.Detector, without a model."""

    name = "classical"
    kinds = [WBC]
    # the operating point, chosen on the training split like the learned detector's (scripts/fit_classical.py)
    threshold = 0.47

    def __init__(self, params: ClassicalParams | None = None, threshold: float | None = None):
        self.params = params or ClassicalParams()
        if threshold is not None:
            self.threshold = threshold

    def detect(
        self, image: np.ndarray, threshold: float | None = None
    ) -> tuple[list[Detection], dict[str, float]]:
        t0 = time.perf_counter()
        p = self.params
        h, w = image.shape[:2]
        b = cv2.cvtColor(image, cv2.COLOR_BGR2LAB)[..., 2]
        mask = (b <= p.b_max).astype(np.uint8)
        k = max(3, int(round(p.close * min(h, w))) | 1)
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        frame_area = float(h * w)
        boxes, scores = [], []
        for x, y, bw, bh, area in stats[1:n]:
            if area < p.min_area * frame_area:
                continue
            side_w, side_h = bw * p.grow, bh * p.grow
            cx, cy = x + bw / 2, y + bh / 2
            boxes.append(
                [
                    max(0.0, cx - side_w / 2),
                    max(0.0, cy - side_h / 2),
                    min(w, cx + side_w / 2),
                    min(h, cy + side_h / 2),
                ]
            )
            scores.append(1.0 - float(np.exp(-area / (p.area_scale * frame_area))))
        t1 = time.perf_counter()
        keep = nms(np.array(boxes).reshape(-1, 4), np.array(scores), p.merge_iou) if boxes else []
        thr = self.threshold if threshold is None else threshold
        dets = [
            Detection(
                (boxes[i][0], boxes[i][1], boxes[i][2] - boxes[i][0], boxes[i][3] - boxes[i][1]),
                scores[i],
                WBC,
            )
            for i in keep
            if scores[i] >= thr
        ]
        t2 = time.perf_counter()
        return dets, {"preprocess": 0.0, "invoke": (t1 - t0) * 1000, "decode": (t2 - t1) * 1000}
