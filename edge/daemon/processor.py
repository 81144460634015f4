"""One frame through the model: mode -> crops -> classifier -> results, with the time of each stage.

`edge run` hands each FrameResult to its sinks (edge/daemon/sinks.py); `edge bench` times the same
processor and pipeline with one sink that only keeps the timings, so the two measure the same code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from edge.daemon.modes import scale_box
from edge.daemon.sources import Frame
from edge.detect.crop import crop_region
from edge.predict import Classifier, Prediction


@dataclass
class CellResult:
    """One classified crop: its index in the frame, its box in the inference image and in the
    display image (the main stream of a two-stream camera), and the prediction."""

    index: int
    box: tuple[int, int, int, int]
    view_box: tuple[int, int, int, int]
    prediction: Prediction
    # field mode (edge/daemon/modes.py FieldMode): detector score, tracked cell, first sighting, the
    # crop rule's square in the display image
    score: float | None = None
    track_id: int | None = None
    new: bool = True
    view_square: tuple[int, int, int, int] | None = None


@dataclass
class FrameResult:
    frame: Frame
    cells: list[CellResult]
    # capture, queue, mode, preprocess, invoke, postprocess, result (frame start -> results), ms;
    # sinks add their own (store) and the latency to the commit.
    timings: dict[str, float] = field(default_factory=dict)

    crop_rule: object | None = None  # field mode: archive crops are cut as the classifier saw them

    def view_crop(self, cell: CellResult) -> np.ndarray:
        if cell.view_square is not None and self.crop_rule is not None:
            return crop_region(self.frame.view, cell.view_square, self.crop_rule)
        x, y, w, h = cell.view_box
        return self.frame.view[y : y + h, x : x + w]


class FrameProcessor:
    def __init__(self, mode, classifier: Classifier):
        self.mode = mode
        self.classifier = classifier

    def warm_up(self) -> None:
        """One throw-away inference: the first invoke() and the first CLAHE cost 10-100x a normal one,
        and would otherwise land on the first real frame's latency. (A detector warms up when opened.)"""
        self.classifier.classify_images([np.zeros((64, 64, 3), np.uint8)])

    def process(self, frame: Frame, t_dequeued: float | None = None) -> FrameResult:
        t0 = time.perf_counter()
        t_dequeued = t0 if t_dequeued is None else t_dequeued
        crops = self.mode.crops(frame.image, frame.timestamp)
        t1 = time.perf_counter()
        preds, stages = self.classifier.classify_images([c.image for c in crops]) if crops else ([], {})
        t_result = time.perf_counter()
        shape, view = frame.image.shape, frame.view.shape
        cells = [
            CellResult(
                i,
                c.box,
                scale_box(c.box, shape, view),
                p,
                c.score,
                c.track_id,
                c.new,
                None if c.square is None else scale_box(c.square, shape, view),
            )
            for i, (c, p) in enumerate(zip(crops, preds, strict=True))
        ]
        timings = {
            "capture": (frame.t_captured - frame.t_capture_start) * 1000,
            "queue": (t_dequeued - frame.t_captured) * 1000,
            "mode": (t1 - t0) * 1000,
            "preprocess": stages.get("preprocess", 0.0),
            "invoke": stages.get("invoke", 0.0),
            "postprocess": stages.get("postprocess", 0.0),
            "result": (t_result - frame.t_capture_start) * 1000,
            **getattr(self.mode, "last_timings", {}),
        }
        return FrameResult(frame, cells, timings, getattr(self.mode, "crop_rule", None))
