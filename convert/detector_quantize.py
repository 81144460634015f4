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
"""

from __future__ import annotations

import json
import shlex
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edge.bundle import CPU_MODEL, Bundle, Manifest, Metric, write_bundle
from edge.detect.spec import DetectorSpec
from edge.detect.voc import read_voc
from edge.errors import DataError
from edge.hashing import sha256_file
from edge.preprocess import PreprocessSpec


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


def _say(msg: str) -> None:
    print(msg, flush=True)


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
    from convert.detector_data import build_photometric, frame_boxes, make_view, plain_view
    from convert.detector_train import _load

    images = _load(frames)
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
    from edge.runtime.tflite import model_io

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
    return [Metric(name, float(v), split, r.frames, command) for name, v in values.items()]


def quantize_detector(req) -> DetectorQuantizeResult:
    """`req` is convert.quantize.QuantizeRequest; options only classifiers have are refused."""
    from convert.run_source import _load_keras
    from convert.tflite_export import INT8_SETTINGS, _spec, make_converter
    from edge.detect.detector import Detector
    from edge.detect.eval_run import run_on_frames
    from edge.detect.evaluate import operating_threshold
    from edge.runtime.tflite import model_io

    for flag, on in (
        ("--adapt-head", req.adapt_head),
        ("--bias-correction", req.bias_correction),
        ("--reject", req.reject != "none"),
        ("--debug-layers", req.debug_layers),
    ):
        if on:
            raise DataError(f"{flag} applies to classifiers; {req.source} is a detector run")
    run = Path(req.source)
    config = json.loads((run / "config.json").read_text())
    report = json.loads((run / "report.json").read_text()) if (run / "report.json").exists() else {}
    spec = PreprocessSpec.from_dict(config["preprocess"])
    detector_spec = DetectorSpec.from_dict(config["detector"])
    if req.crop_fraction:
        detector_spec = replace(
            detector_spec,
            crop=replace(
                detector_spec.crop,
                cell_fraction=float(req.crop_fraction),
                source="median white cell side / image side of pbc-8class/train and blood-5class/train, "
                "measured by scripts/measure_cell_fraction.py with this detector (docs/field.md)",
            ),
        )
    kinds = list(config["kinds"])
    split = config["split"]
    command = _command(req)
    train_frames = _frames_named(req.calib_dir[0], split["fit"]["files"] + split["tune"]["files"], "training")
    tune_frames = _frames_named(req.calib_dir[0], split["tune"]["files"], "tune")
    model_path = run / "model.keras"
    model = _load_keras(model_path)
    calib = calibration_images(train_frames, spec, max(req.calib_count, 1), req.seed)
    _say(
        f"calibration: {len(calib)} images from the run's {len(train_frames)} training frames of {req.calib_dir[0]}"
    )
    _say(f"converting to {req.precision} TFLite...")
    tflite = make_converter(model, req.precision, calib if req.precision == "int8" else None).convert()
    heat_name, boxes_name = output_names(tflite, len(kinds))
    inputs, outputs = model_io(tflite)
    by_name = {t.name: t for t in outputs}
    detector_spec = replace(detector_spec, heatmap=heat_name, boxes=boxes_name)
    manifest = Manifest(
        labels=kinds,
        input=_spec(inputs[0]),
        output=_spec(by_name[heat_name]),
        preprocess=spec,
        task="detector",
        detector=detector_spec,
        model={
            "architecture": config.get("arch", "?"),
            "weights": config.get("weights_source", "?"),
            "precision": req.precision,
            "source": str(model_path),
            "source_sha256": sha256_file(model_path),
            "head": config.get("model"),
            "outputs": {
                "heatmap": {"name": heat_name, **_spec(by_name[heat_name]).__dict__},
                "boxes": {"name": boxes_name, **_spec(by_name[boxes_name]).__dict__},
            },
            "quantization": INT8_SETTINGS if req.precision == "int8" else {"method": req.precision},
        },
        training={
            "data_fingerprint": config.get("data", {}).get("fingerprint"),
            "data": config.get("data"),
            "split": split,
            "run_dir": str(run),
            "run_config": config.get("training"),
            "float_metrics": {k: report.get(k) for k in ("tune", "val") if k in report},
        },
        calibration={
            "count": len(calib),
            "split": "the run's fit + tune frames (train), plain and augmented",
            "command": command,
        },
    )
    with tempfile.TemporaryDirectory() as tmp:
        write_bundle(tmp, {CPU_MODEL: tflite}, manifest)
        detector = Detector(Bundle.load(tmp))
        _say(f"int8 on the {len(tune_frames)} tune frames: choosing the operating threshold...")
        tune = run_on_frames(detector, tune_frames)
        target = float(config.get("training", {}).get("target_recall", 0.995))
        threshold, how = operating_threshold([(f.detections, f.truth) for f in tune.frames], target)
        detector_spec = replace(
            detector_spec,
            threshold=threshold,
            threshold_source=f"{req.precision} model: {how} ({len(tune_frames)} frames of the train split; "
            "val never used)",
        )
        tune = run_on_frames(detector, tune_frames, threshold)
    metrics = _metrics(tune, f"{Path(req.calib_dir[0]).name}/tune", command)
    lines = [_line("tune", tune)]
    if req.eval_dir:
        val_frames = _frames_named(req.eval_dir[0], split["val"]["files"], "val")
        with tempfile.TemporaryDirectory() as tmp:
            write_bundle(tmp, {CPU_MODEL: tflite}, replace(manifest, detector=detector_spec, files={}))
            val = run_on_frames(Detector(Bundle.load(tmp)), val_frames)
        metrics += _metrics(val, f"{Path(req.eval_dir[0]).name}/val", command)
        lines.append(_line("val", val))
    manifest = replace(manifest, detector=detector_spec, metrics=metrics, files={})
    write_bundle(req.out_dir, {CPU_MODEL: tflite}, manifest)
    bundle = Bundle.load(req.out_dir)  # verify what we wrote, as the device will
    lines.insert(
        0,
        f"bundle: {req.out_dir}  ({req.precision} detector, input {bundle.manifest.input.shape} "
        f"{bundle.manifest.input.dtype}; operating threshold {threshold:.3f})",
    )
    return DetectorQuantizeResult(bundle.manifest, Path(req.out_dir), lines)


def _line(name: str, run) -> str:
    r = run.report
    return (
        f"{name}: {r.frames} frames, {r.objects} white cells: AP@0.5 {r.ap50:.4f}, AP@0.5:0.95 {r.ap50_95:.4f}; "
        f"at {r.threshold:.3f} precision {r.precision:.4f}, recall {r.recall:.4f}, "
        f"{r.false_positives_per_frame:.3f} false positives/frame"
    )
