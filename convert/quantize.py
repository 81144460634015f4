"""`edge quantize`: a trained Keras model -> a verified TFLite bundle (int8 by default).

Steps: load the run (or bare model) -> class-balanced calibration set from the training split ->
convert (full-integer int8 with uint8 I/O, or float16 / float32) -> uncertainty thresholds from
the quantized model on the calibration images -> fidelity (float vs quantized) on --eval ->
bundle with everything recorded in the manifest.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from calibration.bias_correction import corrected_copy, measure
from calibration.fidelity import (
    DEFAULT_THRESHOLD_PP,
    FidelityReport,
    compare,
    format_fidelity,
    keras_probs,
    loss_warning,
    tflite_probs,
    worst_layers,
)
from calibration.folders import load_labelled, scan_classes
from calibration.head_adaptation import adapt
from calibration.representative import DEFAULT_COUNT, build_calibration_set
from calibration.thresholds import derive_uncertainty, flag_stats
from convert.run_source import load_source
from convert.tflite_export import INT8_SETTINGS, PRECISIONS, bundle_from_tflite, make_converter, tensor_specs
from convert.tflite_graph import per_channel_ops, read_graph
from edge.bundle import Bundle, Manifest, Metric, TensorSpec
from edge.errors import DataError
from edge.metrics import classification_report


@dataclass
class QuantizeRequest:
    source: Path
    calib_dir: Path
    out_dir: Path
    eval_dir: Path | None = None
    precision: str = "int8"
    calib_count: int = DEFAULT_COUNT
    debug_layers: bool = False
    threshold_pp: float = DEFAULT_THRESHOLD_PP
    seed: int = 0
    bias_correction: bool = False
    adapt_head: bool = False

    def command_line(self) -> str:
        """The command that reproduces this bundle; recorded with every metric."""
        args = ["edge", "quantize", str(self.source), "--calib", str(self.calib_dir)]
        if self.eval_dir:
            args += ["--eval", str(self.eval_dir)]
        args += ["--out", str(self.out_dir)]
        if self.precision != "int8":
            args += ["--precision", self.precision]
        if self.calib_count != DEFAULT_COUNT:
            args += ["--calib-count", str(self.calib_count)]
        if self.seed:
            args += ["--seed", str(self.seed)]
        if self.bias_correction:
            args += ["--bias-correction"]
        if self.adapt_head:
            args += ["--adapt-head"]
        return shlex.join(args)


@dataclass
class QuantizeResult:
    manifest: Manifest
    out_dir: Path
    fidelity: FidelityReport | None = None
    messages: list[str] = field(default_factory=list)


def _say(msg: str) -> None:
    print(msg, flush=True)


def _quantization_record(
    precision: str, tflite: bytes, manifest_input: TensorSpec, manifest_output: TensorSpec
) -> dict:
    if precision == "int8":
        return {
            **INT8_SETTINGS,
            "per_op_weights": per_channel_ops(read_graph(tflite)),
            "input_scale": manifest_input.scale,
            "input_zero_point": manifest_input.zero_point,
            "output_scale": manifest_output.scale,
            "output_zero_point": manifest_output.zero_point,
        }
    if precision == "float16":
        return {
            "method": "float16 weights (Optimize.DEFAULT, supported_types float16); float32 input, output and compute"
        }
    return {"method": "none (float32)"}


def _metrics(report: FidelityReport, quant_p, y, labels, flags: dict, command: str) -> list[Metric]:
    split, n = report.split, report.n
    macro_f1 = classification_report(y, quant_p.argmax(1), labels)["macro_f1"]
    values = [
        ("accuracy", report.quant_accuracy),
        ("float_accuracy", report.float_accuracy),
        ("top1_agreement", report.agreement),
        ("mean_abs_prob_diff", report.mean_abs_prob_diff),
        ("macro_f1", macro_f1),
        ("flagged_fraction", flags["flagged_fraction"]),
        ("accuracy_unflagged", flags["accuracy_unflagged"]),
    ]
    if report.trained_float_accuracy is not None:
        values += [
            ("trained_float_accuracy", report.trained_float_accuracy),
            ("top1_agreement_with_trained_float", report.agreement_with_trained_float),
        ]
    return [Metric(name, round(float(v), 6), split, n, command) for name, v in values if np.isfinite(v)]


def quantize(req: QuantizeRequest) -> QuantizeResult:
    if req.precision not in PRECISIONS:
        raise DataError(f"--precision must be one of {PRECISIONS}")
    command = req.command_line()
    src = load_source(req.source)
    labels = src.labels or sorted(scan_classes(req.calib_dir))
    if len(labels) != src.info["n_outputs"]:
        raise DataError(
            f"{req.calib_dir}: {len(labels)} class folders {labels} but the model outputs {src.info['n_outputs']} classes"
        )
    _say(
        f"model: {src.model_path} ({src.info['architecture']}, {len(labels)} classes, input {src.spec.size} px)"
    )
    calib = build_calibration_set(
        req.calib_dir, src.spec, labels, req.calib_count, req.seed, [req.eval_dir] if req.eval_dir else []
    )
    _say(
        f"calibration: {calib.description['count']} images from {calib.description['split']} {calib.description['per_class']}"
    )

    to_convert, correction, adaptation = src.model, None, None
    if req.adapt_head and req.precision == "int8":
        train = load_labelled(req.calib_dir, src.spec, labels)
        _say(
            f"adapting the head to the int8 backbone on {len(train)} images of {train.split} "
            f"(as they are and in augmented views; a few minutes for a 224 px model)..."
        )
        to_convert, adaptation = adapt(to_convert, calib.images, train.images, train.y, train.split, req.seed)
        _say(
            f"int8 backbone features differ from float by {adaptation.feature_rel_error * 100:.1f}% (median); "
            f"adapted head on {train.split}: {adaptation.train_accuracy_float_features * 100:.2f}% from float "
            f"features, {adaptation.train_accuracy_int8_features * 100:.2f}% from int8 features"
        )
    if req.bias_correction and req.precision == "int8":
        _say("measuring the int8 logit shift on the calibration images (bias correction)...")
        correction = measure(to_convert, calib.images)
        to_convert = corrected_copy(to_convert, correction)
        _say(f"logit shift (int8 - float) per class: {[round(v, 3) for v in correction.shift]}")
    _say(
        f"converting to {req.precision} TFLite (calibrating int8 ranges takes a minute for a 224 px model)..."
    )
    converter = make_converter(
        to_convert, req.precision, calib.generator() if req.precision == "int8" else None
    )
    tflite = converter.convert()

    calib_p = tflite_probs(tflite, calib.images, desc=f"{req.precision} on calibration images")
    uncertainty = derive_uncertainty(calib_p, calib.description["split"])

    fidelity, metrics, messages = None, [], []
    if req.precision != "int8":
        messages += [
            f"{flag} applies to int8 only; skipped"
            for flag, on in (("--adapt-head", req.adapt_head), ("--bias-correction", req.bias_correction))
            if on
        ]
    if req.eval_dir:
        ev = load_labelled(req.eval_dir, src.spec, labels)
        # Fidelity is measured against the float model that was converted; when that was changed on
        # the way (head adaptation, bias correction), the trained model's numbers are reported too.
        float_p = keras_probs(to_convert, ev.images, desc=f"float on {ev.split}")
        quant_p = tflite_probs(tflite, ev.images, desc=f"{req.precision} on {ev.split}")
        fidelity = compare(float_p, quant_p, ev.y, labels, ev.split, req.precision, req.threshold_pp)
        if to_convert is not src.model:
            trained_p = keras_probs(src.model, ev.images, desc=f"trained float on {ev.split}")
            fidelity.trained_float_accuracy = float((trained_p.argmax(1) == ev.y).mean())
            fidelity.agreement_with_trained_float = float((trained_p.argmax(1) == quant_p.argmax(1)).mean())
        if req.debug_layers:
            if req.precision != "int8":
                messages.append("--debug-layers applies to int8 only; skipped")
            else:
                _say("running the quantization debugger (per-layer float vs int8)...")
                fidelity.worst_layers = worst_layers(
                    make_converter(to_convert, "int8", calib.generator()), calib.images
                )
        flags = flag_stats(quant_p, ev.y, uncertainty)
        metrics = _metrics(fidelity, quant_p, ev.y, labels, flags, command)
        eval_record = {"split": ev.split, "fingerprint": ev.fingerprint, "n": len(ev), "skipped": ev.skipped}
    else:
        messages.append(
            "no --eval given: the manifest holds no accuracy; pass --eval <data>/val to measure fidelity"
        )
        eval_record = None

    info = src.info
    calibration = {
        **calib.description,
        "uncertainty_derivation": uncertainty.source,
        "command": command,
    }
    if fidelity is not None:
        calibration["fidelity"] = fidelity.to_dict()
        calibration["evaluation"] = eval_record
    training = {
        "data_fingerprint": info.get("data_fingerprint"),
        "run_dir": info.get("run_dir"),
        "run_val_accuracy": info.get("run_val_accuracy"),
        "run_config": info.get("run_config"),
    }
    model = {
        "architecture": info["architecture"],
        "weights": info["weights"],
        "precision": req.precision,
        "source": info["source"],
        "source_sha256": info["source_sha256"],
    }
    inp, out = tensor_specs(tflite)
    model["quantization"] = _quantization_record(req.precision, tflite, inp, out)
    if correction is not None:
        model["quantization"]["bias_correction"] = correction.to_dict()
    if adaptation is not None:
        model["quantization"]["head_adaptation"] = adaptation.to_dict()
    bundle_from_tflite(
        req.out_dir,
        tflite,
        labels,
        src.spec,
        model=model,
        training={k: v for k, v in training.items() if v is not None},
        calibration=calibration,
        metrics=metrics,
        uncertainty=uncertainty,
    )
    bundle = Bundle.load(req.out_dir)  # verify what we wrote, as the device will
    return QuantizeResult(bundle.manifest, Path(req.out_dir), fidelity, messages)


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


def print_summary(result: QuantizeResult) -> None:
    text = summary(result)
    print(text)
    if result.fidelity is not None and result.fidelity.exceeds_threshold:
        print(loss_warning(result.fidelity), file=sys.stderr)
