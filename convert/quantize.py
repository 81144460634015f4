"""`edge quantize`: a trained Keras model -> a verified TFLite bundle (int8 by default).

A sequence of steps, each returning a record, then one manifest builder:

    source      the run directory (or bare model), its labels and preprocessing
    calibration a class-balanced set from the training split, through edge.preprocess
    fixes       optional float-side fixes for int8: head adaptation, last-layer bias correction
    conversion  full-integer int8 with uint8 I/O, or float16 / float32 (with --reject, the model
                gets a second output, the embedding)
    thresholds  the uncertainty rule from the quantized model on the calibration images
    rejection   (--reject) class means and shared covariance of the embeddings of the training
                images, and the threshold beyond which a cell is "unknown"
    fidelity    float vs quantized on --eval, measured through the device's runtime layer
    manifest    everything above, recorded; the bundle is written and loaded back as the device will
    onnx        with --format onnx: the same float model and calibration images as model.onnx (convert/export.py)
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from calibration.fidelity import (
    DEFAULT_THRESHOLD_PP,
    FidelityReport,
    compare,
    format_fidelity,
    keras_probs,
    loss_warning,
    tflite_outputs,
    tflite_probs,
    top1_agreement,
    worst_layers,
)
from calibration.representative import DEFAULT_COUNT, CalibrationSet, build_calibration_set
from calibration.thresholds import derive_uncertainty, flag_stats
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
from edge.bundle import Bundle, Manifest, Metric, Rejection, TensorSpec, Uncertainty
from edge.dataset import load_labelled, parse_class_map, scan_labelled
from edge.errors import DataError
from edge.metrics import classification_report
from edge.rejection import MahalanobisScorer

REJECTION_FILE = "rejection.npz"


def _paths(value) -> list[Path]:
    """One folder, several (a list or a click tuple), or none -> a list of Paths."""
    if value is None:
        return []
    if isinstance(value, (str, Path)):
        return [Path(value)]
    return [Path(v) for v in value]


@dataclass
class QuantizeRequest:
    """What `edge quantize` was asked. `calib_dir`, `eval_dir` and `reject_holdout` are lists of class-folder
    roots (one or several sources, aliased by `class_map` as in `edge train`)."""

    source: Path
    calib_dir: list[Path]
    out_dir: Path
    eval_dir: list[Path] = field(default_factory=list)
    precision: str = "int8"
    calib_count: int = DEFAULT_COUNT
    debug_layers: bool = False
    threshold_pp: float = DEFAULT_THRESHOLD_PP
    seed: int = 0
    bias_correction: bool = False
    adapt_head: bool = False
    reject: str = "none"  # "mahalanobis": a rejection score for cells unlike the training data
    reject_layer: str = "head_dense"
    reject_quantile: float = 0.99
    reject_holdout: list[Path] = field(default_factory=list)  # cells not trained on, for the threshold
    reject_dims: int = 0  # PCA dimensions before the Mahalanobis distance (0: none)
    format: str = "tflite"  # "onnx": also write model.onnx (the bundle always holds model.tflite)
    crop_fraction: float | None = None  # detector runs: the crop rule's cell fraction, if measured since
    class_map: list[str] = field(default_factory=list)  # FOLDER=LABEL; default: the training run's

    def __post_init__(self):
        self.calib_dir = _paths(self.calib_dir)
        self.eval_dir = _paths(self.eval_dir)
        self.reject_holdout = _paths(self.reject_holdout)
        self.class_map = list(self.class_map or [])

    def images(self, roots: list[Path], labels: list[str]):
        """The labelled images under `roots` (each file once, aliases applied), as `edge train` saw them."""
        return scan_labelled(roots, labels, parse_class_map(self.class_map), dedupe=True)

    def command_line(self) -> str:
        """The command that reproduces this bundle; recorded with every metric."""
        args = ["edge", "quantize", str(self.source)]
        for flag, roots in (("--calib", self.calib_dir), ("--eval", self.eval_dir)):
            for root in roots:
                args += [flag, str(root)]
        args += ["--out", str(self.out_dir)]
        for pair in self.class_map:
            args += ["--map", pair]
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
        if self.reject != "none":
            args += ["--reject", self.reject, "--reject-layer", self.reject_layer]
            args += ["--reject-quantile", f"{self.reject_quantile:g}"]
            for root in self.reject_holdout:
                args += ["--reject-holdout", str(root)]
            if self.reject_dims:
                args += ["--reject-dims", str(self.reject_dims)]
        if self.format != "tflite":
            args += ["--format", self.format]
        return shlex.join(args)


@dataclass
class Fixes:
    """The float model that is converted, and what was done to the trained one to get it."""

    model: object
    adaptation: object | None = None  # convert.head_adaptation.HeadAdaptation
    correction: object | None = None  # convert.bias_correction.BiasCorrection

    @property
    def changed(self) -> bool:
        return self.adaptation is not None or self.correction is not None


@dataclass
class Fidelity:
    report: FidelityReport
    metrics: list[Metric]
    evaluation: dict  # split, fingerprint, n, skipped


@dataclass
class QuantizeResult:
    manifest: Manifest
    out_dir: Path
    fidelity: FidelityReport | None = None
    messages: list[str] = field(default_factory=list)


def _say(msg: str) -> None:
    print(msg, flush=True)


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
    _say(
        f"model: {src.model_path} ({src.info['architecture']}, {len(src.labels)} classes, input {src.spec.size} px)"
    )
    return src


def calibration_step(req: QuantizeRequest, src: ModelSource) -> CalibrationSet:
    calib = build_calibration_set(
        req.calib_dir, src.spec, src.labels, req.calib_count, req.seed, req.eval_dir, req.class_map
    )
    d = calib.description
    _say(f"calibration: {d['count']} images from {d['split']} {d['per_class']}")
    return calib


def fixes_step(req: QuantizeRequest, src: ModelSource, calib: CalibrationSet) -> Fixes:
    fixes = Fixes(src.model)
    if req.precision != "int8":
        return fixes
    if req.adapt_head:
        from convert.head_adaptation import adapt

        train = load_labelled(req.images(req.calib_dir, src.labels), src.spec)
        _say(
            f"adapting the head to the int8 backbone on {len(train)} images of {train.split} "
            f"(as they are and in augmented views; a few minutes for a 224 px model)..."
        )
        fixes.model, fixes.adaptation = adapt(
            fixes.model, calib.images, train.images, train.y, train.split, req.seed
        )
        a = fixes.adaptation
        _say(
            f"int8 backbone features differ from float by {a.feature_rel_error * 100:.1f}% (median); "
            f"adapted head on {train.split}: {a.train_accuracy_float_features * 100:.2f}% from float "
            f"features, {a.train_accuracy_int8_features * 100:.2f}% from int8 features"
        )
    if req.bias_correction:
        from convert.bias_correction import corrected_copy, measure

        _say("measuring the int8 logit shift on the calibration images (bias correction)...")
        fixes.correction = measure(fixes.model, calib.images)
        fixes.model = corrected_copy(fixes.model, fixes.correction)
        _say(f"logit shift (int8 - float) per class: {[round(v, 3) for v in fixes.correction.shift]}")
    return fixes


def conversion_step(req: QuantizeRequest, fixes: Fixes, calib: CalibrationSet) -> bytes:
    _say(
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


def _embeddings(tflite: bytes, images: np.ndarray, n_classes: int, desc: str) -> np.ndarray:
    outputs = tflite_outputs(tflite, images, desc=desc)
    return next(o for o in outputs if o.shape[-1] != n_classes or len(outputs) == 1)


def rejection_step(
    req: QuantizeRequest, src: ModelSource, tflite: bytes
) -> tuple[Rejection, bytes, dict] | None:
    """Fit the class means and shared covariance on the training images' embeddings, as the quantized
    model computes them on the device; set the threshold at `reject_quantile` of the scores of the
    held-out cells (--reject-holdout), or of the training images themselves without it."""
    if req.reject == "none":
        return None
    train = load_labelled(req.images(req.calib_dir, src.labels), src.spec)
    n = len(src.labels)
    _say(f"rejection: embeddings of the {len(train)} images of {train.split} ({req.reject_layer})...")
    train_emb = _embeddings(tflite, train.images, n, "embeddings (train)")
    scorer = MahalanobisScorer.fit(train_emb, train.y, n, dims=req.reject_dims or None)
    held = load_labelled(req.images(req.reject_holdout, src.labels), src.spec) if req.reject_holdout else None
    if held is not None:
        scores = scorer.scores(_embeddings(tflite, held.images, n, f"embeddings ({held.split})"))
        where = f"{len(held)} held-out cells of {held.split}"
    else:
        scores = scorer.scores(train_emb)
        where = f"the {len(train)} training images themselves (no --reject-holdout: new cells score higher)"
    threshold = float(np.quantile(scores, req.reject_quantile))
    projection = f", PCA to {req.reject_dims} dims" if req.reject_dims else ""
    rejection = Rejection(
        method="mahalanobis",
        threshold=round(threshold, 4),
        file=REJECTION_FILE,
        source=f"class means and shared covariance of {req.reject_layer} embeddings of the {len(train)} "
        f"images of {train.split} (int8 model{projection}); threshold at quantile {req.reject_quantile:g} "
        f"of the scores of {where}",
    )
    record = {
        "fit_split": train.split,
        "fit_fingerprint": train.fingerprint,
        "fit_n": len(train),
        "holdout_split": held.split if held is not None else None,
        "holdout_fingerprint": held.fingerprint if held is not None else None,
        "layer": req.reject_layer,
        "score_quantiles": {str(q): round(float(np.quantile(scores, q)), 4) for q in (0.5, 0.9, 0.95, 0.99)},
    }
    _say(f"rejection: unknown above a score of {threshold:.2f} ({where})")
    return rejection, scorer.to_bytes(), record


def fidelity_step(
    req: QuantizeRequest,
    src: ModelSource,
    fixes: Fixes,
    tflite: bytes,
    calib: CalibrationSet,
    uncertainty: Uncertainty,
) -> Fidelity | None:
    if not req.eval_dir:
        return None
    ev = load_labelled(req.images(req.eval_dir, src.labels), src.spec)
    # Fidelity is measured against the float model that was converted; when that was changed on
    # the way (head adaptation, bias correction), the trained model's numbers are reported too.
    float_p = keras_probs(fixes.model, ev.images, desc=f"float on {ev.split}")
    quant_p = tflite_probs(
        tflite, ev.images, desc=f"{req.precision} on {ev.split}", n_classes=len(src.labels)
    )
    report = compare(float_p, quant_p, ev.y, src.labels, ev.split, req.precision, req.threshold_pp)
    if fixes.changed:
        trained_p = keras_probs(src.model, ev.images, desc=f"trained float on {ev.split}")
        report.trained_float_accuracy = float((trained_p.argmax(1) == ev.y).mean())
        report.agreement_with_trained_float = top1_agreement(trained_p, quant_p)
    if req.debug_layers and req.precision == "int8":
        _say("running the quantization debugger (per-layer float vs int8)...")
        report.worst_layers = worst_layers(
            make_converter(fixes.model, "int8", calib.generator()), calib.images
        )
    flags = flag_stats(quant_p, ev.y, uncertainty)
    uncertainty.warning = flag_warning(flags, ev.split)
    metrics = _metrics(report, quant_p, ev.y, src.labels, flags, req.command_line())
    return Fidelity(
        report,
        metrics,
        {"split": ev.split, "fingerprint": ev.fingerprint, "n": len(ev), "skipped": ev.skipped},
    )


# Below this share of its errors caught on the evaluation split, the flag is said not to work.
MIN_ERRORS_CAUGHT = 0.5


def flag_warning(flags: dict, split: str) -> str | None:
    """The loud sentence for a model whose uncertainty rule cannot tell its errors from its correct
    answers (thresholds set on training images, where a weak model is confident too)."""
    errors, caught = flags["errors_total"], flags["errors_flagged"]
    if errors < 5 or caught / errors >= MIN_ERRORS_CAUGHT:
        return None
    return (
        f"the uncertainty rule flags {flags['flagged_fraction'] * 100:.1f}% of cells of {split} but catches only "
        f"{caught} of the model's {errors} errors there: it cannot separate this model's errors from its "
        "correct answers, so an unflagged answer is not a checked one"
    )


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
        fields["rejection"], extra[REJECTION_FILE], fields["calibration"]["rejection"] = rejection
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
    from convert.export import export_keras, summary

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
    _say(summary(result))
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


def print_summary(result: QuantizeResult) -> None:
    print(summary(result))
    warning = result.manifest.uncertainty.warning
    if warning:
        bar = "!" * 78
        print(
            f"{bar}\nWARNING: {warning}. Recorded in the manifest (uncertainty.warning).\n{bar}",
            file=sys.stderr,
        )
    if result.fidelity is not None and result.fidelity.exceeds_threshold:
        print(loss_warning(result.fidelity), file=sys.stderr)
