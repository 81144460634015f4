"""`edge quantize RUN` for a detector run (`edge train-detector`): the int8 detector bundle.

calibration  the run's training frames (fit + tune, never val) from --calib, as the device
             preprocesses them, plus augmented views of them up to --calib-count, so the int8
             ranges also cover cells framed as single-cell images frame them
conversion   full-integer int8, uint8 in and out (convert.tflite_export, as for classifiers)
outputs      which output is the score map and which the box distances, by their channels,
             recorded by tensor name in the manifest's detector section
threshold    the operating point chosen again on the int8 model's tune frames (scores move a
             little in int8), with the rule training used
metrics      AP@0.5, AP@0.5:0.95, precision, recall and false positives per frame on the tune and
             val frames (--eval), measured by edge.detect.eval_run through the device's own
             runtime layer and decoding
bundle       model.tflite + manifest (task "detector"), loaded back as the device will

As convert/quantize.py does for classifiers, each stage is a step that returns a record (run_step,
frames_step, conversion_step, threshold_step, evaluation_step) and one builder makes the manifest
from them (build_manifest); quantize_detector only runs them in order.
"""

from __future__ import annotations

import json
import logging
import shlex
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from convert.detector_data import build_photometric, frame_boxes, make_view, plain_view
from convert.detector_splits import load_frames
from convert.run_source import _load_keras
from convert.tflite_export import INT8_SETTINGS, _spec, convert_model, make_converter
from edge import golden
from edge.bundle import CPU_MODEL, Bundle, Manifest, Metric, TensorSpec, write_bundle
from edge.detect.detector import Detector
from edge.detect.eval_run import run_on_frames
from edge.detect.evaluate import operating_threshold
from edge.detect.spec import DetectorSpec
from edge.detect.voc import read_voc
from edge.errors import DataError
from edge.hashing import sha256_file
from edge.preprocess import PreprocessSpec
from edge.runtime.tflite import model_io

log = logging.getLogger(__name__)


def is_detector_run(path: Path) -> bool:
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("task") == "detector"
    except (OSError, json.JSONDecodeError):
        return False


@dataclass
class DetectorQuantizeResult:
    manifest: Manifest
    out_dir: Path
    lines: list[str] = field(default_factory=list)


def _command(req) -> str:
    args = ["edge", "quantize", str(req.source), "--calib", str(req.calib_dir[0])]
    if req.eval_dir:
        args += ["--eval", str(req.eval_dir[0])]
    args += ["--out", str(req.out_dir)]
    if req.precision != "int8":
        args += ["--precision", req.precision]
    if req.calib_count != 300:
        args += ["--calib-count", str(req.calib_count)]
    if req.seed:
        args += ["--seed", str(req.seed)]
    if req.crop_fraction:
        args += ["--crop-fraction", f"{req.crop_fraction:g}"]
    return shlex.join(args)


def _frames_named(voc: Path, names: list[str], what: str):
    by_name = {f.image.name: f for f in read_voc(voc)}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise DataError(f"{voc}: {len(missing)} {what} frames of the run are not there (first: {missing[0]})")
    return [by_name[n] for n in names]


def calibration_images(frames, spec: PreprocessSpec, count: int, seed: int) -> np.ndarray:
    """The frames as the device sees them, then augmented views of them up to `count`."""
    images = load_frames(frames)
    out = [plain_view(i, f, spec).image for i, f in zip(images, frames, strict=True)][:count]
    rng = np.random.default_rng(seed)
    photometric = build_photometric(spec.size, seed)
    while len(out) < count:
        k = int(rng.integers(len(frames)))
        boxes, ignore = frame_boxes(frames[k])
        out.append(make_view(images[k], boxes, ignore, spec, rng, photometric).image)
    return np.stack(out)


def output_names(tflite: bytes, n_kinds: int) -> tuple[str, str]:
    """(score map, box distances) tensor names: the outputs with `n_kinds` and 4 channels."""
    _, outputs = model_io(tflite)
    if n_kinds == 4 or len(outputs) != 2:
        raise DataError(
            f"expected 2 outputs (scores for {n_kinds} kinds, 4 box distances), got {len(outputs)}"
        )
    heat = next(t for t in outputs if t.shape[-1] == n_kinds)
    boxes = next(t for t in outputs if t.shape[-1] == 4)
    return heat.name, boxes.name


def _metrics(run, split: str, command: str) -> list[Metric]:
    r = run.report
    values = {
        "ap50": r.ap50,
        "ap50_95": r.ap50_95,
        "precision": r.precision,
        "recall": r.recall,
        "false_positives_per_frame": r.false_positives_per_frame,
    }
    return [
        Metric(name=k, value=float(v), split=split, n=r.frames, command=command) for k, v in values.items()
    ]


def refuse_classifier_options(req) -> None:
    for flag, on in (
        ("--adapt-head", req.adapt_head),
        ("--bias-correction", req.bias_correction),
        ("--reject", req.reject != "none"),
        ("--debug-layers", req.debug_layers),
    ):
        if on:
            raise DataError(f"{flag} applies to classifiers; {req.source} is a detector run")


@dataclass
class DetectorRun:
    """What `edge train-detector` left in RUN, with --crop-fraction applied to its crop rule."""

    path: Path
    config: dict  # config.json
    report: dict  # report.json: the float model's tune and val figures (absent: {})
    spec: PreprocessSpec
    detector: DetectorSpec
    kinds: list[str]
    split: dict  # fit / tune / val file names

    @property
    def model_path(self) -> Path:
        return self.path / "model.keras"


def run_step(req) -> DetectorRun:
    run = Path(req.source)
    config = json.loads((run / "config.json").read_text())
    report = json.loads((run / "report.json").read_text()) if (run / "report.json").exists() else {}
    detector_spec = DetectorSpec.model_validate(config["detector"])
    if req.crop_fraction:
        detector_spec = detector_spec.replace(
            crop=detector_spec.crop.replace(
                cell_fraction=float(req.crop_fraction),
                source="median white cell side / image side of pbc-8class/train and blood-5class/train, "
                "measured by scripts/measure_cell_fraction.py with this detector (docs/field.md)",
            ),
        )
    return DetectorRun(
        run,
        config,
        report,
        PreprocessSpec.model_validate(config["preprocess"]),
        detector_spec,
        list(config["kinds"]),
        config["split"],
    )


@dataclass
class DetectorFrames:
    """The run's frames found again in --calib: fit + tune calibrate, tune sets the threshold."""

    train: list
    tune: list


def frames_step(req, run: DetectorRun) -> DetectorFrames:
    """Before the model is loaded, so a frame missing from --calib fails fast."""
    fit, tune = run.split["fit"]["files"], run.split["tune"]["files"]
    return DetectorFrames(
        _frames_named(req.calib_dir[0], fit + tune, "training"), _frames_named(req.calib_dir[0], tune, "tune")
    )


@dataclass
class DetectorConversion:
    tflite: bytes
    input: TensorSpec
    heatmap: TensorSpec
    boxes: TensorSpec
    calibration_count: int


def conversion_step(req, run: DetectorRun, frames: DetectorFrames) -> DetectorConversion:
    """The calibration images, then the TFLite model; which output is which, by channels."""
    model = _load_keras(run.model_path)
    calib = calibration_images(frames.train, run.spec, max(req.calib_count, 1), req.seed)
    log.info(
        f"calibration: {len(calib)} images from the run's {len(frames.train)} training frames of {req.calib_dir[0]}"
    )
    log.info(f"converting to {req.precision} TFLite...")
    tflite = convert_model(make_converter(model, req.precision, calib if req.precision == "int8" else None))
    heat_name, boxes_name = output_names(tflite, len(run.kinds))
    inputs, outputs = model_io(tflite)
    by_name = {t.name: _spec(t) for t in outputs}
    return DetectorConversion(tflite, _spec(inputs[0]), by_name[heat_name], by_name[boxes_name], len(calib))


def build_manifest(
    req,
    run: DetectorRun,
    conversion: DetectorConversion,
    detector: DetectorSpec,
    metrics: list[Metric],
    command: str,
) -> Manifest:
    """The detector bundle's manifest; `detector` is the run's spec with the model's output names
    (and, once chosen, the int8 operating threshold)."""
    config, heat, boxes = run.config, conversion.heatmap, conversion.boxes
    return Manifest(
        labels=run.kinds,
        input=conversion.input.model_copy(),  # copies: write_bundle fills in a manifest, never the records
        output=heat.model_copy(),
        preprocess=run.spec,
        task="detector",
        detector=detector,
        metrics=metrics,
        model={
            "architecture": config.get("arch", "?"),
            "weights": config.get("weights_source", "?"),
            "precision": req.precision,
            "source": str(run.model_path),
            "source_sha256": sha256_file(run.model_path),
            "head": config.get("model"),
            "outputs": {
                "heatmap": {"name": heat.name, **heat.to_dict()},
                "boxes": {"name": boxes.name, **boxes.to_dict()},
            },
            "quantization": INT8_SETTINGS if req.precision == "int8" else {"method": req.precision},
        },
        training={
            "data_fingerprint": config.get("data", {}).get("fingerprint"),
            "data": config.get("data"),
            "split": run.split,
            "run_dir": str(run.path),
            "run_config": config.get("training"),
            "float_metrics": {k: run.report.get(k) for k in ("tune", "val") if k in run.report},
        },
        calibration={
            "count": conversion.calibration_count,
            "split": "the run's fit + tune frames (train), plain and augmented",
            "command": command,
        },
    )


@contextmanager
def _detector(tflite: bytes, manifest: Manifest):
    """The converted model as the device will run it: a bundle written and loaded back."""
    with tempfile.TemporaryDirectory() as tmp:
        write_bundle(tmp, {CPU_MODEL: tflite}, manifest)
        yield Detector(Bundle.load(tmp))


@dataclass
class OperatingPoint:
    detector: DetectorSpec  # with the threshold chosen on the quantized model
    tune: object  # edge.detect.eval_run.EvalRun of the tune frames at that threshold


def threshold_step(
    req, run: DetectorRun, frames: DetectorFrames, conversion: DetectorConversion, command: str
) -> OperatingPoint:
    """The operating threshold chosen again on the quantized model's tune frames, by training's rule."""
    detector_spec = run.detector.replace(heatmap=conversion.heatmap.name, boxes=conversion.boxes.name)
    with _detector(
        conversion.tflite, build_manifest(req, run, conversion, detector_spec, [], command)
    ) as det:
        log.info(f"int8 on the {len(frames.tune)} tune frames: choosing the operating threshold...")
        tune = run_on_frames(det, frames.tune)
        target = float(run.config.get("training", {}).get("target_recall", 0.995))
        threshold, how = operating_threshold([(f.detections, f.truth) for f in tune.frames], target)
        detector_spec = detector_spec.replace(
            threshold=threshold,
            threshold_source=f"{req.precision} model: {how} ({len(frames.tune)} frames of the train split; "
            "val never used)",
        )
        tune = run_on_frames(det, frames.tune, threshold)
    return OperatingPoint(detector_spec, tune)


@dataclass
class DetectorEvaluation:
    metrics: list[Metric]
    lines: list[str]  # one summary line per split


def evaluation_step(
    req, run: DetectorRun, conversion: DetectorConversion, point: OperatingPoint, command: str
) -> DetectorEvaluation:
    """The tune figures at the operating point, and the val frames of --eval through the final bundle."""
    metrics = _metrics(point.tune, f"{Path(req.calib_dir[0]).name}/tune", command)
    lines = [_line("tune", point.tune)]
    if req.eval_dir:
        val_frames = _frames_named(req.eval_dir[0], run.split["val"]["files"], "val")
        manifest = build_manifest(req, run, conversion, point.detector, [], command)
        with _detector(conversion.tflite, manifest) as det:
            val = run_on_frames(det, val_frames)
        metrics += _metrics(val, f"{Path(req.eval_dir[0]).name}/val", command)
        lines.append(_line("val", val))
    return DetectorEvaluation(metrics, lines)


def quantize_detector(req) -> DetectorQuantizeResult:
    """`req` is convert.quantize.QuantizeRequest; options only classifiers have are refused."""
    refuse_classifier_options(req)
    run = run_step(req)
    command = _command(req)
    frames = frames_step(req, run)
    conversion = conversion_step(req, run, frames)
    point = threshold_step(req, run, frames, conversion, command)
    evaluation = evaluation_step(req, run, conversion, point, command)
    manifest = build_manifest(req, run, conversion, point.detector, evaluation.metrics, command)
    manifest.golden, golden_file = golden.make(conversion.tflite, manifest)  # what the device checks
    write_bundle(req.out_dir, {CPU_MODEL: conversion.tflite, golden.GOLDEN_FILE: golden_file}, manifest)
    bundle = Bundle.load(req.out_dir)  # verify what we wrote, as the device will
    head = (
        f"bundle: {req.out_dir}  ({req.precision} detector, input {bundle.manifest.input.shape} "
        f"{bundle.manifest.input.dtype}; operating threshold {point.detector.threshold:.3f})"
    )
    return DetectorQuantizeResult(bundle.manifest, Path(req.out_dir), [head, *evaluation.lines])


def _line(name: str, run) -> str:
    r = run.report
    return (
        f"{name}: {r.frames} frames, {r.objects} white cells: AP@0.5 {r.ap50:.4f}, AP@0.5:0.95 {r.ap50_95:.4f}; "
        f"at {r.threshold:.3f} precision {r.precision:.4f}, recall {r.recall:.4f}, "
        f"{r.false_positives_per_frame:.3f} false positives/frame"
    )
