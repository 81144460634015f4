"""A detector over annotated frames, timed: what `edge eval-detector` and `edge quantize` (for a detector
run) both call, so a bundle's manifest and the command report the same numbers from the same code."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.detect.decode import MIN_SCORE, Detection
from edge.detect.evaluate import DetectionReport, FrameTruth, evaluate
from edge.detect.spec import WBC
from edge.detect.voc import VocFrame, assign_splits, read_voc, split_frames, truth
from edge.errors import ImageLoadError
from edge.preprocess import load_image, to_bgr8


@dataclass
class FrameRun:
    frame: VocFrame
    detections: list[Detection]  # every candidate down to MIN_SCORE
    truth: FrameTruth
    ms: dict[str, float]


@dataclass
class EvalRun:
    report: DetectionReport
    frames: list[FrameRun]
    errors: list[str] = field(default_factory=list)  # one line per frame that could not be read

    def time_per_frame(self) -> dict[str, float]:
        """p50 of each stage and of their sum (ms per frame), decoding of the JPEG not included."""
        if not self.frames:
            return {}
        stages = list(self.frames[0].ms)
        out = {name: float(np.median([f.ms[name] for f in self.frames])) for name in stages}
        out["total"] = float(np.median([sum(f.ms.values()) for f in self.frames]))
        return {k: round(v, 3) for k, v in out.items()}


def run_on_frames(
    detector, frames: list[VocFrame], threshold: float | None = None, tick=lambda: None
) -> EvalRun:
    """Detect every frame (kind wbc), score against its boxes at `threshold` (default: the detector's
    operating point). A frame whose image cannot be read is named in `errors` and left out."""
    runs, errors = [], []
    for frame in frames:
        try:
            image = to_bgr8(load_image(frame.image))
        except ImageLoadError as exc:
            errors.append(str(exc))
            tick()
            continue
        if image.shape[:2] != (frame.height, frame.width):
            errors.append(
                f"{frame.annotation}: annotated as {frame.width}x{frame.height}, the image is "
                f"{image.shape[1]}x{image.shape[0]}: left out"
            )
            tick()
            continue
        dets, ms = detector.detect(image, threshold=MIN_SCORE)
        runs.append(FrameRun(frame, [d for d in dets if d.kind == WBC], truth(frame), dict(ms)))
        tick()
    thr = detector.threshold if threshold is None else threshold
    report = evaluate([(r.detections, r.truth) for r in runs], thr)
    return EvalRun(report, runs, errors)


def frames_to_score(detector, voc: Path, split: str) -> tuple[list[VocFrame], str]:
    """The frames to score and what they are: the detector's own val frames when it records a split
    for these frames (auto / val), the hash split of edge.detect.voc otherwise."""
    frames = read_voc(voc)
    bundle = getattr(detector, "bundle", None)
    training = bundle.manifest.training if bundle is not None else None
    recorded = training.get("split") if isinstance(training, dict) else None
    names = {f.image.name for f in frames}
    if recorded and split in ("auto", "val", "train"):
        wanted = (
            set(recorded["val"]["files"])
            if split in ("auto", "val")
            else set(recorded["fit"]["files"] + recorded["tune"]["files"])
        )
        if wanted & names:
            chosen = [f for f in frames if f.image.name in wanted]
            return (
                chosen,
                f"{voc.name}/{'val' if split == 'auto' else split} (the split the detector recorded)",
            )
    if split == "auto":
        return frames, f"{voc.name} (all {len(frames)} frames: the detector records no split of them)"
    return split_frames(frames, split, assign_splits(frames)), f"{voc.name}/{split} (edge.detect.voc's split)"
