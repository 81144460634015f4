"""Scoring detections against annotated boxes, as COCO does: AP@0.5, AP@0.5:0.95, and precision,
recall and false positives per frame at one operating threshold.

Matching, per frame and IoU threshold: detections best score first, each takes the unmatched true
box it overlaps most (IoU >= the threshold): a hit. A detection on a box marked `ignore` (see
edge/detect/voc.py) counts neither way; any other is a false positive. AP is the area under the
precision-recall curve with COCO's 101-point interpolation (precision made non-increasing, read at
recall 0, 0.01, ..., 1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from edge.detect.decode import Detection, iou_matrix

IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


@dataclass
class FrameTruth:
    boxes: np.ndarray  # G x 4, x0 y0 x1 y1: the objects to find
    ignore: np.ndarray  # I x 4: boxes a detection may land on without counting


def match(dets: list[Detection], truth: FrameTruth, iou: float) -> list[bool | None]:
    """Per detection (in the order given, which must be best score first): hit, false positive, or
    None (on an ignored box)."""
    out: list[bool | None] = []
    gt = truth.boxes.reshape(-1, 4)
    overlaps = (
        iou_matrix([d.xyxy for d in dets], gt) if len(dets) and len(gt) else np.zeros((len(dets), len(gt)))
    )
    on_ignored = (
        iou_matrix([d.xyxy for d in dets], truth.ignore).max(axis=1) >= iou
        if len(dets) and len(truth.ignore)
        else np.zeros(len(dets), bool)
    )
    taken = np.zeros(len(gt), bool)
    for i in range(len(dets)):
        row = np.where(taken, -1.0, overlaps[i]) if len(gt) else np.zeros(0)
        j = int(np.argmax(row)) if len(row) else -1
        if j >= 0 and row[j] >= iou:
            taken[j] = True
            out.append(True)
        else:
            out.append(None if on_ignored[i] else False)
    return out


def _ranked(frames: list[tuple[list[Detection], FrameTruth]], iou: float) -> tuple[np.ndarray, np.ndarray]:
    scores, hits = [], []
    for dets, truth in frames:
        dets = sorted(dets, key=lambda d: -d.score)
        for d, m in zip(dets, match(dets, truth, iou), strict=True):
            if m is not None:
                scores.append(d.score)
                hits.append(m)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    return np.asarray(scores, np.float64)[order], np.asarray(hits, bool)[order]


def pr_curve(scores: np.ndarray, hits: np.ndarray, n_true: int) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision after each ranked detection."""
    tp = np.cumsum(hits)
    fp = np.cumsum(~hits)
    recall = tp / max(n_true, 1)
    precision = tp / np.maximum(tp + fp, 1)
    return recall, precision


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """COCO's 101-point interpolated AP."""
    if not len(recall):
        return 0.0
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    points = np.linspace(0, 1, 101)
    idx = np.searchsorted(recall, points, side="left")
    return float(np.mean([envelope[i] if i < len(envelope) else 0.0 for i in idx]))


@dataclass
class DetectionReport:
    kind: str
    frames: int
    objects: int  # true boxes to find (ignored ones not counted)
    ignored: int
    ap50: float
    ap50_95: float
    ap_by_iou: dict[str, float]
    threshold: float
    precision: float
    recall: float
    hits: int
    false_positives: int
    misses: int
    false_positives_per_frame: float
    frames_with_false_positive: int
    curve: dict[str, list[float]] = field(default_factory=dict)  # IoU 0.5: recall, precision, score

    def to_dict(self, curve: bool = False) -> dict:
        data = asdict(self)
        if not curve:
            data.pop("curve")
        return data


def evaluate(
    frames: list[tuple[list[Detection], FrameTruth]], threshold: float, kind: str = "wbc"
) -> DetectionReport:
    """`frames`: each frame's detections of `kind` (every candidate, down to a low score) and its truth."""
    n_true = int(sum(len(t.boxes) for _, t in frames))
    aps = {}
    for iou in IOU_THRESHOLDS:
        scores, hits = _ranked(frames, iou)
        recall, precision = pr_curve(scores, hits, n_true)
        aps[f"{iou:.2f}"] = average_precision(recall, precision)
        if iou == 0.5:
            curve = {"recall": recall.tolist(), "precision": precision.tolist(), "score": scores.tolist()}
    hits = fps = fp_frames = 0
    for dets, truth in frames:
        kept = sorted((d for d in dets if d.score >= threshold), key=lambda d: -d.score)
        m = match(kept, truth, 0.5)
        hits += sum(1 for v in m if v is True)
        frame_fp = sum(1 for v in m if v is False)
        fps += frame_fp
        fp_frames += frame_fp > 0
    return DetectionReport(
        kind=kind,
        frames=len(frames),
        objects=n_true,
        ignored=int(sum(len(t.ignore) for _, t in frames)),
        ap50=round(aps["0.50"], 4),
        ap50_95=round(float(np.mean(list(aps.values()))), 4),
        ap_by_iou={k: round(v, 4) for k, v in aps.items()},
        threshold=float(threshold),
        precision=round(hits / max(hits + fps, 1), 4) if hits + fps else 1.0,
        recall=round(hits / n_true, 4) if n_true else 1.0,
        hits=hits,
        false_positives=fps,
        misses=n_true - hits,
        false_positives_per_frame=round(fps / max(len(frames), 1), 4),
        frames_with_false_positive=fp_frames,
        curve=curve,
    )


def threshold_for_recall(frames: list[tuple[list[Detection], FrameTruth]], recall: float) -> float:
    """The highest score threshold that keeps at least `recall` of the true boxes found (IoU 0.5);
    what training chooses the operating point with, on frames it did not fit."""
    n_true = int(sum(len(t.boxes) for _, t in frames))
    scores, hits = _ranked(frames, 0.5)
    if not n_true or not hits.any():
        return 0.5
    tp = np.cumsum(hits)
    need = int(np.ceil(recall * n_true))
    reached = np.nonzero(tp >= need)[0]
    i = reached[0] if len(reached) else int(np.nonzero(hits)[0][-1])
    return float(scores[i])


def operating_threshold(frames: list[tuple[list[Detection], FrameTruth]], recall: float) -> tuple[float, str]:
    """The operating point, chosen on frames the model did not fit, and how.

    Where every white cell there scores above every false positive, halfway between the two in
    log-odds (the widest margin either way, for cells and clutter the tune frames did not show);
    where they overlap, the highest score that still finds `recall` of the cells."""
    scores, hits = _ranked(frames, 0.5)
    n_true = int(sum(len(t.boxes) for _, t in frames))
    if n_true and hits.sum() == n_true and (~hits).any() and scores[hits].min() > scores[~hits].max():
        lo, hi = float(scores[~hits].max()), float(scores[hits].min())

        def logit(p):
            p = min(max(p, 1e-4), 1 - 1e-4)
            return float(np.log(p / (1 - p)))

        mid = 1.0 / (1.0 + np.exp(-(logit(lo) + logit(hi)) / 2))
        return floor4(mid), (
            f"halfway in log-odds between the best-scored false positive ({lo:.3f}) and the worst-scored white "
            f"cell ({hi:.3f}) of the tune frames"
        )
    return floor4(
        threshold_for_recall(frames, recall)
    ), f"the highest score that finds {recall:g} of the tune frames' white cells"


def floor4(threshold: float) -> float:
    """A threshold written with 4 decimals, rounded down: rounding up would drop the detections
    that scored exactly it (uint8 scores tie often)."""
    return float(np.floor(float(threshold) * 1e4) / 1e4)
