"""`edge quantize`: a trained Keras model -> a verified TFLite bundle (int8 by default).

A sequence of steps, each returning a record, then one manifest builder:

    source      the run directory (or bare model), its labels and preprocessing
    calibration a class-balanced set from the training split, through edge.preprocess
    fixes       optional float-side fixes for int8: head adaptation, last-layer bias correction
    conversion  full-integer int8 with uint8 I/O, or float16 / float32 (with --reject, the model
                gets a second output, the embedding)
    thresholds  the uncertainty rule from the quantized model on the calibration images
    rejection   (--reject, convert/quantize_rejection.py) class means and shared covariance of the
                embeddings of the training images, and the threshold beyond which a cell is "unknown"
    fidelity    (convert/quantize_fidelity.py) float vs quantized on --eval, measured through the
                device's runtime layer
    manifest    everything above, recorded; the bundle is written and loaded back as the device will
    onnx        with --format onnx: the same float model and calibration images as model.onnx (convert/export.py)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from calibration.fidelity import FidelityReport, format_fidelity, loss_warning, tflite_probs
from calibration.representative import CalibrationSet, build_calibration_set
from calibration.thresholds import derive_uncertainty
from convert.bias_correction import corrected_copy, measure
from convert.export import export_keras
from convert.export import summary as export_summary
from convert.head_adaptation import adapt
from convert.quantize_fidelity import Fidelity, Fixes, fidelity_step
from convert.quantize_rejection import REJECTION_FILE, rejection_step
from convert.quantize_request import QuantizeRequest
from convert.run_source import ModelSource, find_key, load_source
from convert.tflite_export import (
    INT8_SETTINGS,
    PRECISIONS,
    bundle_from_tflite,
    convert_model,
    make_converter,
    tensor_specs,
    with_embedding,
)
from convert.tflite_graph import per_channel_ops, read_graph
from edge.bundle import Bundle, Manifest, TensorSpec, Uncertainty
from edge.dataset import parse_class_map, scan_labelled
from edge.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class QuantizeResult:
    manifest: Manifest
    out_dir: Path
    fidelity: FidelityReport | None = None
    messages: list[str] = field(default_factory=list)


# --- the steps -------------------------------------------------------------------------------------


def source_step(req: QuantizeRequest) -> ModelSource:
    if req.precision not in PRECISIONS:
        raise DataError(f"--precision must be one of {PRECISIONS}")
    src = load_source(req.source)
    if not req.class_map:  # the aliases the run was trained with
        req.class_map = list(find_key(src.info.get("run_config") or {}, ("class_map",)) or [])
    if src.labels is None:  # a bare model: its labels are the calibration folder's classes
        src.labels = scan_labelled(req.calib_dir, class_map=parse_class_map(req.class_map)).labels
    if len(src.labels) != src.info["n_outputs"]:
        raise DataError(
            f"{req.calib_dir}: {len(src.labels)} class folders {src.labels} but the model outputs "
            f"{src.info['n_outputs']} classes"
        )
    log.info(
        f"model: {src.model_path} ({src.info['architecture']}, {len(src.labels)} classes, input {src.spec.size} px)"
    )
    return src


def calibration_step(req: QuantizeRequest, src: ModelSource) -> CalibrationSet:
    calib = build_calibration_set(
        req.calib_dir,
        src.spec,
        src.labels,
        req.calib_count,
        req.seed,
        req.eval_dir,
        req.class_map,
        scales=src.scales_for,
    )
    d = calib.description
    log.info(f"calibration: {d['count']} images from {d['split']} {d['per_class']}")
    return calib


def fixes_step(req: QuantizeRequest, src: ModelSource, calib: CalibrationSet) -> Fixes:
    fixes = Fixes(src.model)
    if req.precision != "int8":
        return fixes
    if req.adapt_head:
        train = req.load(req.calib_dir, src)
        log.info(
            f"adapting the head to the int8 backbone on {len(train)} images of {train.split} "
            f"(as they are and in augmented views; a few minutes for a 224 px model)..."
        )
        fixes.model, fixes.adaptation = adapt(
            fixes.model, calib.images, train.images, train.y, train.split, req.seed
        )
        a = fixes.adaptation
        log.info(
            f"int8 backbone features differ from float by {a.feature_rel_error * 100:.1f}% (median); "
            f"adapted head on {train.split}: {a.train_accuracy_float_features * 100:.2f}% from float "
            f"features, {a.train_accuracy_int8_features * 100:.2f}% from int8 features"
        )
    if req.bias_correction:
        log.info("measuring the int8 logit shift on the calibration images (bias correction)...")
        fixes.correction = measure(fixes.model, calib.images)
        fixes.model = corrected_copy(fixes.model, fixes.correction)
        log.info(f"logit shift (int8 - float) per class: {[round(v, 3) for v in fixes.correction.shift]}")
    return fixes


def conversion_step(req: QuantizeRequest, fixes: Fixes, calib: CalibrationSet) -> bytes:
    log.info(
        f"converting to {req.precision} TFLite (calibrating int8 ranges takes a minute for a 224 px model)..."
    )
    model = with_embedding(fixes.model, req.reject_layer) if req.reject != "none" else fixes.model
    representative = calib.generator() if req.precision == "int8" else None
    return convert_model(make_converter(model, req.precision, representative))


def thresholds_step(
    req: QuantizeRequest, tflite: bytes, calib: CalibrationSet, n_classes: int
) -> Uncertainty:
    desc = f"{req.precision} on calibration images"
    probs = tflite_probs(tflite, calib.images, desc=desc, n_classes=n_classes)
    return derive_uncertainty(probs, calib.description["split"])


# --- the manifest ----------------------------------------------------------------------------------


def _quantization_record(
    precision: str, tflite: bytes, inp: TensorSpec, out: TensorSpec, fixes: Fixes
) -> dict:
    if precision == "float16":
        return {
            "method": "float16 weights (Optimize.DEFAULT, supported_types float16); float32 input, output and compute"
        }
    if precision != "int8":
        return {"method": "none (float32)"}
    record = {
        **INT8_SETTINGS,
        "per_op_weights": per_channel_ops(read_graph(tflite)),
        "input_scale": inp.scale,
        "input_zero_point": inp.zero_point,
        "output_scale": out.scale,
        "output_zero_point": out.zero_point,
    }
    if fixes.correction is not None:
        record["bias_correction"] = fixes.correction.to_dict()
    if fixes.adaptation is not None:
        record["head_adaptation"] = fixes.adaptation.to_dict()
    return record


def manifest_fields(
    req: QuantizeRequest,
    src: ModelSource,
    calib: CalibrationSet,
    fixes: Fixes,
    tflite: bytes,
    uncertainty: Uncertainty,
    fidelity: Fidelity | None,
) -> dict:
    """model / training / calibration / metrics / uncertainty for edge.bundle.Manifest."""
    info = src.info
    calibration = {
        **calib.description,
        "uncertainty_derivation": uncertainty.source,
        "command": req.command_line(),
    }
    if fidelity is not None:
        calibration["fidelity"] = fidelity.report.to_dict()
        calibration["evaluation"] = fidelity.evaluation
    training = {
        "data_fingerprint": info.get("data_fingerprint"),
        "sources": (info.get("run_config") or {}).get("data_sources"),
        "run_dir": info.get("run_dir"),
        "run_val_accuracy": info.get("run_val_accuracy"),
        "run_config": info.get("run_config"),
        # red-cell diameter (px) of each source, as preprocessing version 2 cut its cells (edge.scale)
        "scales": src.scales or None,
    }
    inp, out, _ = tensor_specs(tflite, len(src.labels))
    model = {
        "architecture": info["architecture"],
        "weights": info["weights"],
        "precision": req.precision,
        "source": info["source"],
        "source_sha256": info["source_sha256"],
        "quantization": _quantization_record(req.precision, tflite, inp, out, fixes),
    }
    return {
        "model": model,
        "training": {k: v for k, v in training.items() if v is not None},
        "calibration": calibration,
        "metrics": fidelity.metrics if fidelity is not None else [],
        "uncertainty": uncertainty,
    }


def quantize(req: QuantizeRequest) -> QuantizeResult:
    src = source_step(req)
    calib = calibration_step(req, src)
    fixes = fixes_step(req, src, calib)
    tflite = conversion_step(req, fixes, calib)
    uncertainty = thresholds_step(req, tflite, calib, len(src.labels))
    rejection = rejection_step(req, src, tflite)
    fidelity = fidelity_step(req, src, fixes, tflite, calib, uncertainty)
    fields = manifest_fields(req, src, calib, fixes, tflite, uncertainty, fidelity)
    extra = {}
    if rejection is not None:
        fields["rejection"], extra[REJECTION_FILE], fields["calibration"]["rejection"], fields["gate"] = (
            rejection
        )
    bundle_from_tflite(req.out_dir, tflite, src.labels, src.spec, extra_files=extra, **fields)
    bundle = Bundle.load(req.out_dir)  # verify what we wrote, as the device will
    messages = _messages(req)
    if req.format == "onnx" and req.precision != "int8":
        messages.append(f"--format onnx makes an int8 model.onnx; skipped for --precision {req.precision}")
    elif req.format == "onnx":
        bundle, onnx_messages = onnx_step(req, src, fixes, calib)
        messages += onnx_messages
    return QuantizeResult(bundle.manifest, Path(req.out_dir), fidelity.report if fidelity else None, messages)


def onnx_step(req: QuantizeRequest, src: ModelSource, fixes: Fixes, calib: CalibrationSet):
    """model.onnx from the float model that was converted (after any fixes), on the same calibration set."""
    made_from = str(src.model_path) + (" (after --adapt-head / --bias-correction)" if fixes.changed else "")
    result = export_keras(
        req.out_dir,
        fixes.model,
        calib,
        req.images(req.eval_dir, src.labels) if req.eval_dir else None,
        made_from,
        src.info["source_sha256"],
        req.command_line(),
    )
    log.info(export_summary(result))
    return result.bundle, result.messages


def _messages(req: QuantizeRequest) -> list[str]:
    messages = []
    if req.precision != "int8":
        messages += [
            f"{flag} applies to int8 only; skipped"
            for flag, on in (
                ("--adapt-head", req.adapt_head),
                ("--bias-correction", req.bias_correction),
                ("--debug-layers", req.debug_layers and req.eval_dir),
            )
            if on
        ]
    if not req.eval_dir:
        messages.append(
            "no --eval given: the manifest holds no accuracy; pass --eval <data>/val to measure fidelity"
        )
    return messages


def summary(result: QuantizeResult) -> str:
    m = result.manifest
    lines = [
        f"bundle: {result.out_dir}  ({m.model['precision']}, input {m.input.shape} {m.input.dtype}, "
        f"output {m.output.shape} {m.output.dtype})",
        f"uncertain when top-1 < {m.uncertainty.min_confidence:.3f} or margin < {m.uncertainty.min_margin:.3f} "
        f"({m.uncertainty.source})",
    ]
    if result.fidelity is not None:
        lines.append(format_fidelity(result.fidelity))
        flagged = m.metric("flagged_fraction")
        unflagged = m.metric("accuracy_unflagged")
        if flagged is not None:
            extra = f", accuracy on the rest {unflagged.value * 100:.2f}%" if unflagged else ""
            lines.append(f"flagged for review on {flagged.split}: {flagged.value * 100:.1f}%{extra}")
    lines.extend(f"note: {msg}" for msg in result.messages)
    return "\n".join(lines)


def warnings(result: QuantizeResult) -> list[str]:
    """The loud messages for stderr: an uncertainty rule that cannot catch the model's errors, and an
    accuracy loss above the threshold."""
    out = []
    warning = result.manifest.uncertainty.warning
    if warning:
        bar = "!" * 78
        out.append(f"{bar}\nWARNING: {warning}. Recorded in the manifest (uncertainty.warning).\n{bar}")
    if result.fidelity is not None and result.fidelity.exceeds_threshold:
        out.append(loss_warning(result.fidelity))
    return out
