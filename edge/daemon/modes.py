"""What to classify in a frame. `cell`: the centred region where the technician puts a cell.
`field`: every white cell the detector finds, cropped by the crop rule, tracked across frames.

A mode returns a list of crops (`crops`), and once they are classified says which are new
(`settle`): the stage-motion check behind that runs beside the classification (edge.daemon.fields
MotionCheck). The pipeline, the database (one row per counted crop) and the archive take them as they
come. Each mode also builds itself from the [pipeline] config (`bundles`, then
`from_config`: the bundles it needs are loaded first, so they are verified before any interpreter
starts), and says what it is (`describe`) and how far it has got (`status`), so the daemon never asks
which mode it runs.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edge import preprocess_exact
from edge.bundle import Bundle
from edge.daemon.config import CellOptions
from edge.daemon.differential import DifferentialCount
from edge.daemon.fields import FieldWatch, MotionCheck
from edge.daemon.tracker import IoUTracker
from edge.detect.crop import crop_cell
from edge.detect.detector import Detector
from edge.detect.spec import WBC, CropRule
from edge.preprocess import PreprocessSpec, View
from edge.runtime.tflite import usable_cores
from edge.scale import ScaleKeeper

if TYPE_CHECKING:
    from edge.daemon.config import FieldOptions, PipelineConfig


@dataclass
class Crop:
    image: np.ndarray
    box: tuple[int, int, int, int]  # x, y, w, h in the inference image
    # field mode: the detector's score, the tracked cell and whether this is its first sighting (only
    # then is it counted, stored and archived), and the square the crop rule cut (may leave the frame)
    score: float | None = None
    track_id: int | None = None
    new: bool = True
    square: tuple[int, int, int, int] | None = None
    # preprocessing version 2 at a known scale: `image` is the whole frame and the preprocessing cuts
    # `view` (the cell's centre, the microscope's scale, the frame's slide colour) out of it
    view: View | None = None


@dataclass(frozen=True)
class Detected:
    """The detector's work on one frame: its white cells, the time of each stage (ms), and the frame
    as the detector saw it (letterbox cut off), on which the stage motion is measured."""

    cells: list
    stages: dict[str, float]
    view: np.ndarray
    background: tuple[int, int, int] | None = None  # the slide's colour, when cells are cut physically


class PhysicalCut:
    """Version 2 with field_rbc: cells are cut at `field_rbc` red-cell diameters of the microscope
    (edge/preprocess_exact.py) once the session knows its scale (edge.scale.ScaleKeeper); until then
    the mode cuts as version 1 did (the centred region, the detector's crop rule)."""

    def __init__(self, spec: PreprocessSpec, keeper: ScaleKeeper):
        self.spec, self.keeper = spec, keeper

    @classmethod
    def of(cls, spec: PreprocessSpec, keeper: ScaleKeeper) -> PhysicalCut | None:
        return cls(spec, keeper) if spec.version == 2 and spec.field_rbc else None

    def ready(self) -> bool:
        return self.keeper.known

    def crop(self, image: np.ndarray, centre, background=None, **fields) -> Crop:
        """The window around `centre` (image pixels): its box (clipped to the frame, for drawing) and
        its square (which may leave the frame; the archive fills that part with the slide's colour)."""
        view = View(centre=centre, rbc_px=self.keeper.rbc_px, background=background)
        side = view.side(self.spec, image.shape)
        s = max(1, int(round(side)))
        x, y = int(round(centre[0] - s / 2)), int(round(centre[1] - s / 2))
        h, w = image.shape[:2]
        x0, y0 = max(0, x), max(0, y)
        box = (x0, y0, max(1, min(w, x + s) - x0), max(1, min(h, y + s) - y0))
        return Crop(image, fields.pop("box", box), square=(x, y, s, s), view=view, **fields)


def center_box(shape: tuple[int, ...], fraction: float) -> tuple[int, int, int, int]:
    """The box of edge.preprocess.center_region: the centred square of `fraction` of the shorter side."""
    return center_box_px(shape, int(round(min(shape[:2]) * float(fraction))))


def center_box_px(shape: tuple[int, ...], side: int) -> tuple[int, int, int, int]:
    """The centred square of `side` pixels (clipped to the frame)."""
    h, w = shape[:2]
    side = max(1, min(int(side), h, w))
    return (w - side) // 2, (h - side) // 2, side, side


@dataclass(frozen=True)
class FieldStatus:
    """Cells per frame, fields seen, and how far the differential is towards its target."""

    frames: int
    fields_seen: int
    cells_last_frame: int
    cells_per_frame: float  # over the recent frames
    cells_detected: int  # white-cell detections, every frame
    cells_counted: int  # tracks started: once per cell
    tracks_in_view: int
    target_cells: int
    threshold: float
    detector: str
    detector_sha256: str
    crop_cell_fraction: float
    differential_cells: int
    differential_confident: int
    differential_progress: float  # differential_cells / target_cells, at most 1


class CellMode:
    """The centred cell of each frame, counted once: the technician holds a cell in the centred region
    and moves the stage to the next. The view is compared with the previous frame's (edge/motion.py,
    through FieldWatch, as field mode does): a view unlike it (another image, a jump of the stage), or
    one that has drifted from where the cell was counted by half the region (the cell left the
    centre), shows another cell, which is counted. Frames of the same cell are classified and shown
    on the page, but not counted, stored or archived (Crop.new, as a field mode track's later
    sightings)."""

    name = "cell"

    def __init__(self, region: float, region_px: int = 0, min_similarity: float | None = None):
        # region_px equal to the model input (e.g. 224) skips the resize (docs/daemon.md).
        self.region = region
        self.region_px = region_px
        self.physical: PhysicalCut | None = None  # set by the processor for version-2 bundles
        default = CellOptions.model_fields["min_similarity"].default
        self.watch = FieldWatch(default if min_similarity is None else min_similarity)
        self.motion = MotionCheck(self.watch)
        self.frames = 0
        self.counted = 0

    @classmethod
    def bundles(cls, pipeline: PipelineConfig) -> tuple[Bundle, ...]:
        return ()

    @staticmethod
    def interpreter_threads(configured: int = 0) -> int | None:
        """Threads of each interpreter: `pipeline.threads`, or (0) every usable core for the one model."""
        return configured or None

    @classmethod
    def from_config(cls, pipeline: PipelineConfig, bundles: tuple[Bundle, ...], lab=None) -> CellMode:
        return cls(pipeline.region, pipeline.region_px, pipeline.cell.min_similarity)

    def describe(self) -> dict:
        return {"name": self.name, "region": self.region, "region_px": self.region_px}

    def status(self, differential: DifferentialCount) -> None:
        return None  # the differential says it all

    def close(self) -> None:
        self.motion.close()

    def crops(self, image: np.ndarray, timestamp: float | None = None, ahead=None) -> list[Crop]:
        crop = self.cut(image)
        # the cell leaves the centred square once the view moved by half its side
        side = (crop.square or crop.box)[2]
        self.motion.start(image, "BGR", new_field_shift=side / 2 / min(image.shape[:2]))
        return [crop]

    def settle(self, crops: list[Crop]) -> None:
        """Whether the frame's cell is another cell, from the motion check `crops` started."""
        step, _ = self.motion.result()
        for crop in crops:
            crop.new = step.new_field
        self.frames += 1
        self.counted += step.new_field

    def cut(self, image: np.ndarray) -> Crop:
        """The frame's centred cell, as crops() cuts it, without the motion check (benchmarks)."""
        if self.physical is not None and self.physical.ready():
            h, w = image.shape[:2]
            return self.physical.crop(image, (w / 2, h / 2))
        if self.region_px:
            x, y, w, h = center_box_px(image.shape, self.region_px)
        else:
            x, y, w, h = center_box(image.shape, self.region)
        return Crop(image[y : y + h, x : x + w], (x, y, w, h))


def scale_box(box, src_shape, dst_shape) -> tuple[int, int, int, int]:
    """A box in one image mapped onto another of a different size (lores -> main stream)."""
    sy, sx = dst_shape[0] / src_shape[0], dst_shape[1] / src_shape[1]
    x, y, w, h = box
    return int(round(x * sx)), int(round(y * sy)), max(1, int(round(w * sx))), max(1, int(round(h * sy)))


class FieldMode:
    """Every white cell in the frame (docs/field.md): detect, crop each as the classifier's training
    cells were framed (edge/detect/crop.py), and tell new cells from ones already counted
    (edge/daemon/tracker.py), the tracker forgetting everything when the stage jumps to another field
    (edge/daemon/fields.py)."""

    name = "field"

    def __init__(self, detector, tracker, watch, threshold: float | None = None, target_cells: int = 100):
        self.detector = detector
        self.tracker = tracker
        self.watch = watch
        self.motion = MotionCheck(watch)
        self._to_track: tuple[list, float] = ([], 0.0)  # the frame's boxes and time, for settle()
        self.threshold = detector.threshold if threshold is None else float(threshold)
        self.crop_rule: CropRule = detector.spec.crop
        self.target_cells = int(target_cells)
        self.last_timings: dict[str, float] = {}
        self.frames = 0
        self.cells_seen = 0  # detections of white cells, every frame
        self.last_cells = 0
        self.recent_cells: deque[int] = deque(maxlen=300)
        self.physical: PhysicalCut | None = None  # set by the processor for version-2 bundles
        self.last_cells_boxes: list[tuple[int, int, int, int]] = []
        # one interpreter, two threads that may call it: the capture thread's look_ahead, and crops()
        # for a frame whose look-ahead failed or came before the threaded layout started
        self._detecting = threading.Lock()

    def detect(self, image: np.ndarray) -> Detected:
        with self._detecting:
            detections, stages = self.detector.detect(image, threshold=self.threshold)
            view = self.detector.last_view
        cells = [d for d in detections if d.kind == WBC]
        # the slide's colour once per frame, not once per cell (white balance of every crop)
        t0 = time.perf_counter()
        physical = self.physical is not None and self.physical.ready()
        background = preprocess_exact.background_bgr(image) if physical and cells else None
        stages["background"] = (time.perf_counter() - t0) * 1000
        return Detected(cells, stages, view, background)

    def look_ahead(self, image: np.ndarray) -> Detected:
        """The threaded layout's capture thread detects the frame it has just read (and measures its
        slide colour), so that the detector works on frame N+1 while this thread classifies frame N's
        cells: on 2 cores the pipeline then takes about the longer of the two stages, not their sum
        (docs/bench.md). What depends on the order of frames (motion, tracking, counting) stays in
        the pipeline thread's crops() and settle()."""
        return self.detect(image)

    def crops(
        self, image: np.ndarray, timestamp: float | None = None, ahead: Detected | None = None
    ) -> list[Crop]:
        t0 = time.perf_counter()
        found = ahead if ahead is not None else self.detect(image)
        cells, stages = found.cells, found.stages
        t1 = time.perf_counter()
        # the stage motion, on the detector's own small copy of the frame (RGB, letterbox cut off);
        # settle() tracks the cells with it once they are classified. Beside the classification only
        # when no look-ahead keeps the other core busy: three threads on 2 cores ran slower.
        self.motion.start(found.view, "RGB", image.shape[1], beside=ahead is None)
        self._to_track = [d.xyxy for d in cells], time.monotonic() if timestamp is None else timestamp
        t_cut = time.perf_counter()  # after the motion check, when it ran here
        out = []
        physical = self.physical if self.physical is not None and self.physical.ready() else None
        background = found.background
        if physical and cells and background is None:  # the scale became known after the look-ahead
            background = preprocess_exact.background_bgr(image)
        for det in cells:
            fields = dict(box=det.int_box(), score=round(det.score, 4))
            if physical is not None:
                x, y, w, h = det.box
                out.append(physical.crop(image, (x + w / 2, y + h / 2), background, **fields))
            else:
                image_crop, square = crop_cell(image, det.box, self.crop_rule)
                out.append(Crop(image_crop, square=square, **fields))
        self.last_cells_boxes = [d.int_box() for d in cells]
        t2 = time.perf_counter()
        self.frames += 1
        self.last_cells = len(cells)
        self.cells_seen += len(cells)
        self.recent_cells.append(len(cells))
        self.last_timings = {
            "detect_preprocess": stages["preprocess"],
            "detect_invoke": stages["invoke"],
            "detect_decode": stages["decode"],
            "background": stages["background"],
            # the capture thread ran the detector and measured the slide's colour (look_ahead)
            "detected_ahead": float(ahead is not None),
            "detect": (t1 - t0) * 1000 if ahead is None else sum(stages.values()),
            "crop": (t2 - t_cut) * 1000,
        }
        return out

    def settle(self, crops: list[Crop]) -> None:
        """Track the frame's cells (in the order `crops` gave them) with its stage motion: which are
        new, and their track ids. A jump to another field forgets every track first."""
        step, motion_ms = self.motion.result()
        t0 = time.perf_counter()
        if step.jumped:
            self.tracker.reset()
        boxes, timestamp = self._to_track
        for crop, a in zip(crops, self.tracker.update(boxes, timestamp, step.shift), strict=True):
            crop.track_id, crop.new = a.track_id, a.new
        # the motion check's own time: it ran beside the classification, off the frame's path
        self.last_timings.update(motion=motion_ms, track=(time.perf_counter() - t0) * 1000)

    @staticmethod
    def interpreter_threads(configured: int = 0) -> int | None:
        """Threads of each interpreter: `pipeline.threads`, or (0) half the usable cores each, since the
        threaded layout runs the detector (look_ahead) and the classifier side by side. On 2 cores,
        1 thread each ran BCCD fields at 135 frames/s, 2 threads each at 127 (docs/bench.md)."""
        return configured or max(1, usable_cores() // 2)

    @classmethod
    def bundles(cls, pipeline: PipelineConfig) -> tuple[Bundle, ...]:
        """The detector bundle, loaded (and so verified) before any interpreter starts."""
        return (Bundle.load(pipeline.field.detector_path()),)

    @classmethod
    def from_config(cls, pipeline: PipelineConfig, bundles: tuple[Bundle, ...], lab=None) -> FieldMode:
        (detector,) = bundles
        return open_field_mode(
            detector, pipeline.field, pipeline.backend, lab, threads=cls.interpreter_threads(pipeline.threads)
        )

    def describe(self) -> dict:
        return {"name": self.name}

    def status(self, differential: DifferentialCount) -> FieldStatus:
        """What the page, /api/status, /metrics and the summary say about the fields."""
        recent = list(self.recent_cells)
        counted = differential.total
        return FieldStatus(
            frames=self.frames,
            fields_seen=self.watch.fields,
            cells_last_frame=self.last_cells,
            cells_per_frame=round(sum(recent) / len(recent), 3) if recent else 0.0,
            cells_detected=self.cells_seen,
            cells_counted=self.tracker.started,
            tracks_in_view=len(self.tracker.tracks),
            target_cells=self.target_cells,
            threshold=self.threshold,
            detector=str(self.detector.bundle.path),
            detector_sha256=self.detector.bundle.sha256,
            crop_cell_fraction=self.crop_rule.cell_fraction,
            differential_cells=counted,
            differential_confident=differential.confident_total,
            differential_progress=round(min(1.0, counted / self.target_cells), 4),
        )

    def close(self) -> None:
        self.motion.close()
        self.detector.backend.close()


def open_field_mode(
    detector_bundle: Bundle, options: FieldOptions, backend: str = "cpu", lab=None, **backend_options
) -> FieldMode:
    """Field mode put together: the detector on `backend`, its tracker, the field watch and the
    detector's crop rule. The one place it is built, for `edge run` and `edge bench --mode field`."""
    detector = Detector.open(detector_bundle, backend, lab=lab, **backend_options)
    return FieldMode(
        detector,
        IoUTracker(options.track_iou, options.max_age_frames, options.max_age_s),
        FieldWatch(options.min_similarity, options.new_field_shift),
        threshold=options.threshold or None,  # 0: the bundle's operating threshold
        target_cells=options.target_cells,
    )


MODES = {"cell": CellMode, "field": FieldMode}
