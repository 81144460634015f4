"""`edge quantize --eval`: float vs quantized on held-out images, measured through the device's runtime
layer, the metrics the manifest records, and whether the uncertainty flag catches the model's errors."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from calibration.fidelity import (
    FidelityReport,
    compare,
    keras_probs,
    tflite_probs,
    top1_agreement,
    worst_layers,
)
from calibration.representative import CalibrationSet
from calibration.thresholds import flag_stats
from convert.quantize_request import QuantizeRequest
from convert.run_source import ModelSource
from convert.tflite_export import make_converter
from edge.bundle import Metric, Uncertainty
from edge.metrics import classification_report

log = logging.getLogger(__name__)


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
    ev = req.load(req.eval_dir, src)
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
        log.info("running the quantization debugger (per-layer float vs int8)...")
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
    kept = [(name, round(float(v), 6)) for name, v in values if np.isfinite(v)]
    return [Metric(name=name, value=v, split=split, n=n, command=command) for name, v in kept]
