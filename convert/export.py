"""`edge export BUNDLE --format onnx` and `edge quantize ... --format onnx`: model.onnx into a bundle,
with a fidelity report (convert/onnx_export.py says how the file is made).

    no run directory   the bundle's own int8 model.tflite, through tf2onnx's TFLite front end
    --run RUN_DIR      the run's float Keras model, quantized by onnxruntime on the same calibration
                       images as the TFLite model (rebuilt from the manifest's calibration record and
                       checked against its fingerprint)

With --eval, model.onnx is compared with the TFLite int8 model (and with the float model on the Keras
route) image by image: top-1 agreement and per-class accuracy.
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from calibration.fidelity import keras_probs, tflite_probs
from calibration.onnx_fidelity import agreement, format_agreement, onnx_probs
from calibration.representative import DEFAULT_COUNT, build_calibration_set
from convert.onnx_export import OnnxExport, add_to_bundle, from_keras, from_tflite
from convert.run_source import load_source
from convert.tflite_export import with_embedding
from edge.bundle import Bundle
from edge.dataset import load_labelled, parse_class_map, scan_labelled
from edge.errors import DataError

log = logging.getLogger(__name__)

FORMATS = ("onnx",)


@dataclass
class ExportRequest:
    bundle: Path
    format: str = "onnx"
    run: Path | None = None
    calib_dir: Path | None = None
    eval_dir: Path | None = None
    calib_count: int | None = None
    seed: int | None = None

    def command_line(self) -> str:
        args = ["edge", "export", str(self.bundle), "--format", self.format]
        for flag, value in (
            ("--run", self.run),
            ("--calib", self.calib_dir),
            ("--eval", self.eval_dir),
            ("--calib-count", self.calib_count),
            ("--seed", self.seed),
        ):
            if value is not None:
                args += [flag, str(value)]
        return shlex.join(args)


@dataclass
class ExportResult:
    bundle: Bundle
    fidelity: list[dict] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


def eval_images(bundle: Bundle, eval_dirs, class_map=None):
    """The labelled evaluation images (ImageSet) of one or more folders, with the class map the
    bundle was calibrated with; None without folders."""
    roots = [Path(d) for d in ([eval_dirs] if isinstance(eval_dirs, (str, Path)) else eval_dirs or [])]
    if not roots:
        return None
    aliases = class_map if class_map is not None else bundle.manifest.calibration.get("class_map") or []
    return scan_labelled(roots, bundle.labels, parse_class_map(aliases), dedupe=True)


def _fidelity(bundle: Bundle, export: OnnxExport, images, float_model=None) -> list[dict]:
    """model.onnx against the bundle's TFLite int8 model (and the float model when there is one), on
    `images` (an ImageSet from eval_images, or None)."""
    if images is None:
        return []
    # version 2: each root cut at the scale quantization measured (training.scales), as the TFLite fidelity was
    ev = load_labelled(images, bundle.preprocess_spec, scales=bundle.manifest.training.get("scales"))
    onnx_p = onnx_probs(export.data, ev.images, desc=f"onnx on {ev.split}")
    tflite_p = tflite_probs(
        bundle.model_bytes(),
        ev.images,
        desc=f"tflite on {ev.split}",
        n_classes=len(bundle.labels),
    )
    reports = [agreement(tflite_p, onnx_p, ev.y, bundle.labels, ev.split, "tflite-int8")]
    if float_model is not None:
        float_p = keras_probs(float_model, ev.images, desc=f"float on {ev.split}")
        reports.insert(0, agreement(float_p, onnx_p, ev.y, bundle.labels, ev.split, "float"))
    return reports


def export_keras(
    bundle_dir: Path,
    model,
    calib,
    images,
    made_from: str,
    made_from_sha256: str | None,
    command: str,
) -> ExportResult:
    """`model` (float Keras) -> model.onnx in `bundle_dir`, quantized on `calib` (a CalibrationSet) and
    compared on `images` (eval_images). A rejecting bundle's model.onnx carries the embedding output too,
    from the layer its model.tflite was given."""
    bundle = Bundle.load(bundle_dir)
    layer = (bundle.manifest.calibration.get("rejection") or {}).get("layer")
    exported = model
    if bundle.manifest.rejection is not None:
        exported = with_embedding(model, layer or "head_dense")
    recorded = bundle.manifest.calibration.get("fingerprint")
    calibration = {
        **{k: calib.description[k] for k in ("split", "source", "count", "seed", "fingerprint")},
        "same_images_as_tflite": recorded == calib.fingerprint if recorded else None,
    }
    log.info(
        f"exporting the float Keras model to ONNX and quantizing it on {calib.description['count']} calibration images..."
    )
    export = from_keras(exported, calib.images, calibration, made_from, made_from_sha256)
    export.record["command"] = command
    fidelity = _fidelity(bundle, export, images, model)
    result = ExportResult(add_to_bundle(bundle.path, export, fidelity), fidelity)
    if recorded and recorded != calib.fingerprint:
        result.messages.append(
            "the calibration images differ from the ones model.tflite was calibrated on (fingerprint mismatch)"
        )
    if bundle.manifest.model.get("quantization", {}).get("head_adaptation") and made_from.endswith(
        "model.keras"
    ):
        result.messages.append(
            "model.tflite was made with --adapt-head; model.onnx comes from the run's model as trained "
            "(run `edge quantize ... --adapt-head --format onnx` to export the adapted one)"
        )
    return result


def _calibration_for(req: ExportRequest, bundle: Bundle):
    """The calibration set of the TFLite conversion, rebuilt from the manifest unless told otherwise."""
    record = bundle.manifest.calibration
    recorded = record.get("source")
    recorded = [recorded] if isinstance(recorded, str) else list(recorded or [])
    calib_dirs = [req.calib_dir] if req.calib_dir else [Path(p) for p in recorded]
    missing = [p for p in calib_dirs if not p.is_dir()]
    if not calib_dirs or missing:
        raise DataError(
            f"{bundle.path}: the manifest's calibration folder {missing[0] if missing else None} is not here; "
            "pass --calib <data>/train"
        )
    count = req.calib_count or record.get("requested") or DEFAULT_COUNT
    seed = req.seed if req.seed is not None else record.get("seed", 0)
    eval_dirs = [req.eval_dir] if req.eval_dir else []
    class_map = record.get("class_map") or []
    return build_calibration_set(
        calib_dirs, bundle.preprocess_spec, bundle.labels, count, seed, eval_dirs, class_map
    )


def export(req: ExportRequest) -> ExportResult:
    if req.format not in FORMATS:
        raise DataError(f"--format must be one of {', '.join(FORMATS)}")
    bundle = Bundle.load(req.bundle)
    if req.run is None:
        log.info(f"converting {bundle.path / 'model.tflite'} to ONNX (tf2onnx, TFLite front end)...")
        export_ = from_tflite(bundle.model_bytes(), f"{bundle.path.name}/model.tflite", len(bundle.labels))
        export_.record["command"] = req.command_line()
        fidelity = _fidelity(bundle, export_, eval_images(bundle, req.eval_dir))
        messages = [export_.record["tensorrt_note"]] if "tensorrt_note" in export_.record else []
        return ExportResult(add_to_bundle(bundle.path, export_, fidelity), fidelity, messages)

    src = load_source(req.run)
    if src.labels is not None and list(src.labels) != list(bundle.labels):
        raise DataError(f"{req.run}: labels {src.labels} differ from the bundle's {bundle.labels}")
    calib = _calibration_for(req, bundle)
    return export_keras(
        bundle.path,
        src.model,
        calib,
        eval_images(bundle, req.eval_dir),
        str(src.model_path),
        src.info.get("source_sha256"),
        req.command_line(),
    )


def summary(result: ExportResult) -> str:
    record = result.bundle.manifest.model["onnx"]
    q = record["quantization"]
    lines = [
        f"wrote {result.bundle.path / record['file']} ({record['route']} route: {record['tool']['converter']}; "
        f"sha256 {result.bundle.manifest.files[record['file']][:12]}…; dynamic batch {record['dynamic_batch']})",
        f"quantize nodes with zero point 0: {q['zero_point_0']} of {q['quantize_nodes']} "
        f"(TensorRT int8 ready: {q['tensorrt_int8_ready']})",
    ]
    lines += [format_agreement(r) for r in result.fidelity]
    lines += [f"note: {m}" for m in result.messages]
    return "\n".join(lines)
