"""Float Keras vs quantized TFLite on a labelled set: does the int8 model still say the same thing?

Reports both accuracies, top-1 agreement, mean absolute probability difference and per-class
deltas; optionally the layers TensorFlow's quantization debugger finds worst. Loud when the
quantized model loses more than a threshold (default 1.0 percentage point).
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field

import numpy as np

from edge.metrics import recall_by_class
from edge.progress import progress
from edge.runtime.tflite import TFLiteModel

DEFAULT_THRESHOLD_PP = 1.0

REMEDIES = (
    "more or more varied calibration images (--calib-count 1000; every class, same preprocessing)",
    "check that the calibration images are raw 0-255 (normalization belongs inside the model)",
    "find the culprit layers with --debug-layers and keep them float, or replace swish/squeeze-excite "
    "(e.g. EfficientNet-Lite, MobileNetV2)",
    "quantization-aware fine-tuning (tensorflow-model-optimization) before converting",
    "ship --precision float16 for GPU-class devices, where int8 is not required",
)


@dataclass
class ClassDelta:
    label: str
    n: int
    float_accuracy: float
    quant_accuracy: float

    @property
    def delta_pp(self) -> float:
        return (self.quant_accuracy - self.float_accuracy) * 100


@dataclass
class LayerError:
    """One row of the quantization debugger: error of a quantized tensor relative to its scale."""

    op: str
    tensor: str
    rmse_over_scale: float
    mean_abs_error: float
    scale: float


@dataclass
class FidelityReport:
    split: str
    n: int
    precision: str
    float_accuracy: float
    quant_accuracy: float
    agreement: float
    mean_abs_prob_diff: float
    per_class: list[ClassDelta]
    threshold_pp: float = DEFAULT_THRESHOLD_PP
    worst_layers: list[LayerError] = field(default_factory=list)
    # Set when the converted float model differs from the trained one (head adaptation, bias correction).
    trained_float_accuracy: float | None = None
    agreement_with_trained_float: float | None = None

    @property
    def loss_pp(self) -> float:
        """Accuracy lost by quantization, in percentage points (negative: the quantized model did better)."""
        return (self.float_accuracy - self.quant_accuracy) * 100

    @property
    def exceeds_threshold(self) -> bool:
        return self.loss_pp > self.threshold_pp

    def to_dict(self) -> dict:
        data = asdict(self)
        data["loss_pp"] = round(self.loss_pp, 4)
        data["per_class"] = [{**asdict(c), "delta_pp": round(c.delta_pp, 4)} for c in self.per_class]
        return data


def _batches(n: int, size: int):
    return [(i, min(n, i + size)) for i in range(0, n, size)]


def keras_probs(model, images: np.ndarray, batch_size: int = 32, desc: str = "float model") -> np.ndarray:
    """Float Keras probabilities for uint8 images (the model rescales inside its graph)."""
    out = []
    for a, b in progress(_batches(len(images), batch_size), desc=desc, unit="batch", leave=False):
        out.append(np.asarray(model(images[a:b].astype(np.float32), training=False)))
    return np.concatenate(out).astype(np.float32)


def tflite_outputs(
    tflite_bytes: bytes, images: np.ndarray, batch_size: int = 16, desc: str = "tflite model"
) -> list[np.ndarray]:
    """Every float32 output of a TFLite model (uint8, int8 or float input) for uint8 images, run
    through edge.runtime.tflite: the device's own input quantization and dequantization."""
    model = TFLiteModel(tflite_bytes)
    parts = []
    for a, b in progress(_batches(len(images), batch_size), desc=desc, unit="batch", leave=False):
        parts.append(model.run(images[a:b]))
    return [np.concatenate(column) for column in zip(*parts, strict=True)]


def tflite_probs(
    tflite_bytes: bytes,
    images: np.ndarray,
    batch_size: int = 16,
    desc: str = "tflite model",
    n_classes: int | None = None,
) -> np.ndarray:
    """The model's (first) output, or of a model with an embedding output too, the one with
    `n_classes` values: the class scores."""
    outputs = tflite_outputs(tflite_bytes, images, batch_size, desc)
    return next((o for o in outputs if n_classes and o.shape[-1] == n_classes), outputs[0])


def top1_agreement(a_p: np.ndarray, b_p: np.ndarray) -> float:
    """The share of images two models give the same top-1 class, from their scores."""
    return float((a_p.argmax(1) == b_p.argmax(1)).mean())


def compare(
    float_p: np.ndarray,
    quant_p: np.ndarray,
    y: np.ndarray,
    labels: list[str],
    split: str,
    precision: str = "int8",
    threshold_pp: float = DEFAULT_THRESHOLD_PP,
) -> FidelityReport:
    """The fidelity numbers from the two models' probabilities on the same labelled images: the one
    model-vs-model measure (calibration/onnx_fidelity.py reports it for model.onnx)."""
    fp, qp = float_p.argmax(1), quant_p.argmax(1)
    quant_recall = recall_by_class(y, qp, labels)
    per_class = [
        ClassDelta(name, n, accuracy, quant_recall[name][1])
        for name, (n, accuracy) in recall_by_class(y, fp, labels).items()
    ]
    return FidelityReport(
        split=split,
        n=int(len(y)),
        precision=precision,
        float_accuracy=float((fp == y).mean()),
        quant_accuracy=float((qp == y).mean()),
        agreement=top1_agreement(float_p, quant_p),
        mean_abs_prob_diff=float(np.abs(float_p - quant_p).mean()),
        per_class=per_class,
        threshold_pp=float(threshold_pp),
    )


def worst_layers(converter, images: np.ndarray, top: int = 10, max_images: int = 64) -> list[LayerError]:
    """Per-layer error of the int8 model through `tf.lite.experimental.QuantizationDebugger`.

    `converter` is an int8-configured TFLiteConverter (convert.tflite_export.make_converter). The
    debugger runs float and quantized tensors side by side; we rank by RMSE / scale, i.e. the error
    in units of the tensor's quantization step (about 0.29 is the floor of rounding alone).
    """
    import tensorflow as tf

    subset = images[:max_images]

    def debug_dataset():
        for img in subset:
            yield [img[None].astype(np.float32)]

    debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=debug_dataset)
    debugger.run()
    buf = io.StringIO()
    debugger.layer_statistics_dump(buf)
    rows = []
    for row in csv.DictReader(io.StringIO(buf.getvalue())):
        try:
            scale = float(row.get("scale") or 0)
            mse = float(row.get("mean_squared_error") or 0)
            mae = float(row.get("mean_abs_error") or 0) if row.get("mean_abs_error") else float("nan")
        except ValueError:
            continue
        if scale <= 0:
            continue
        rows.append(
            LayerError(
                row.get("op_name", "?"), row.get("tensor_name", "?"), float(np.sqrt(mse)) / scale, mae, scale
            )
        )
    rows.sort(key=lambda r: r.rmse_over_scale, reverse=True)
    return rows[:top]


def format_fidelity(report: FidelityReport) -> str:
    q = report.precision
    lines = [
        f"fidelity on {report.split} (n={report.n}): float {report.float_accuracy * 100:.2f}%  "
        f"{q} {report.quant_accuracy * 100:.2f}%  (loss {report.loss_pp:+.2f} pp)",
        f"top-1 agreement {report.agreement * 100:.2f}%   mean |p_float - p_{q}| {report.mean_abs_prob_diff:.4f}",
        f"{'class':<16} {'n':>5} {'float':>8} {q:>8} {'delta pp':>9}",
    ]
    if report.trained_float_accuracy is not None:
        lines.insert(
            2,
            f"the trained float model before adaptation/correction: {report.trained_float_accuracy * 100:.2f}%, "
            f"agreement with {q} {report.agreement_with_trained_float * 100:.2f}%",
        )
    for c in report.per_class:
        lines.append(
            f"{c.label:<16} {c.n:5d} {c.float_accuracy * 100:7.2f}% {c.quant_accuracy * 100:7.2f}% {c.delta_pp:+9.2f}"
        )
    if report.worst_layers:
        lines.append("worst quantized layers (RMSE / scale; rounding alone gives about 0.29):")
        for layer in report.worst_layers:
            name = layer.tensor.split(";")[0]
            lines.append(f"  {layer.rmse_over_scale:8.3f}  {layer.op:<20} {name[-70:]}")
    return "\n".join(lines)


def loss_warning(report: FidelityReport) -> str | None:
    """The loud message when quantization costs more than the threshold, with what to try."""
    if not report.exceeds_threshold:
        return None
    bar = "!" * 78
    lines = [
        bar,
        f"WARNING: {report.precision} loses {report.loss_pp:.2f} pp of accuracy on {report.split} "
        f"({report.float_accuracy * 100:.2f}% -> {report.quant_accuracy * 100:.2f}%), "
        f"more than the {report.threshold_pp:g} pp threshold.",
        "Do not deploy this bundle as is. Remedies, cheapest first:",
        *(f"  - {r}" for r in REMEDIES),
        bar,
    ]
    return "\n".join(lines)
