"""One frame through the model: mode -> crops -> classifier -> results, with the time of each stage.

`edge run` hands each FrameResult to its sinks (edge/daemon/sinks.py); `edge bench` times the same
processor and pipeline with one sink that only keeps the timings, so the two measure the same code.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from edge.daemon.modes import PhysicalCut, scale_box
from edge.daemon.sources import Frame
from edge.detect.crop import crop_region
from edge.predict import Classifier, Prediction
from edge.preprocess import WHOLE_IMAGE
from edge.preprocess_exact import background_bgr
from edge.scale import ScaleKeeper
from edge.site import UNCALIBRATED_REASON, GateWatch, gate_score


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
    # version 2: the slide's colour beyond the frame (B, G, R, or a function that measures it)
    fill: tuple[int, int, int] | Callable | None = None


@dataclass
class FrameResult:
    frame: Frame
    cells: list[CellResult]
    # capture, queue, mode, preprocess, invoke, postprocess, result (frame start -> results), ms;
    # sinks add their own (store) and the latency to the commit.
    timings: dict[str, float] = field(default_factory=dict)

    crop_rule: object | None = None  # field mode: archive crops are cut as the classifier saw them

    def view_crop(self, cell: CellResult) -> np.ndarray:
        """What the technician reviews: the square the model saw, from the display image."""
        if cell.view_square is not None and (cell.fill is not None or self.crop_rule is not None):
            fill = cell.fill() if callable(cell.fill) else cell.fill
            return crop_region(self.frame.view, cell.view_square, self.crop_rule, fill=fill)
        x, y, w, h = cell.view_box
        return self.frame.view[y : y + h, x : x + w]


class FrameProcessor:
    """Also keeps the session's microscope: its scale (measured from the first frames unless the
    bundle is calibrated: edge.scale.ScaleKeeper) and the gate's running decision (edge.site), which
    flags every cell once the microscope is found to differ from the bundle's."""

    def __init__(self, mode, classifier: Classifier, keeper: ScaleKeeper | None = None):
        self.mode = mode
        self.classifier = classifier
        manifest = classifier.bundle.manifest
        site_scale = manifest.site.scale.rbc_px if manifest.site and manifest.site.scale else None
        self.keeper = keeper or ScaleKeeper(site_scale)
        self.mode.physical = PhysicalCut.of(classifier.spec, self.keeper)
        self.gate = GateWatch(manifest.gate)

    def warm_up(self) -> None:
        """One throw-away inference: the first invoke() and the first CLAHE cost 10-100x a normal one,
        and would otherwise land on the first real frame's latency. (A detector warms up when opened.)"""
        self.classifier.classify_images([np.zeros((64, 64, 3), np.uint8)])

    def process(self, frame: Frame, t_dequeued: float | None = None) -> FrameResult:
        t0 = time.perf_counter()
        t_dequeued = t0 if t_dequeued is None else t_dequeued
        crops = self.mode.crops(frame.image, frame.timestamp, ahead=frame.ahead)
        t1 = time.perf_counter()
        preds, stages = (
            self.classifier.classify_images(
                [c.image for c in crops], views=[c.view or WHOLE_IMAGE for c in crops]
            )
            if crops
            else ([], {})
        )
        self.mode.settle(crops)  # which cells are new: the motion check ran beside the classification
        self._check_site(frame, crops, preds)
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
                None if c.view is None else (c.view.background or partial(background_bgr, frame.image)),
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

    def _check_site(self, frame: Frame, crops, preds: list[Prediction]) -> None:
        """Measure the scale while it is unknown; give the gate each counted cell's score; once the
        microscope differs, every cell needs a human look."""
        if self.mode.physical is not None and not self.keeper.known:
            self.keeper.observe(frame.image, getattr(self.mode, "last_cells_boxes", None))
        for c, p in zip(crops, preds, strict=True):
            if c.new:
                self.gate.add(gate_score(p.label, p.rejection_score))
        if self.gate.differs:
            for p in preds:
                p.flag_uncalibrated(UNCALIBRATED_REASON)
