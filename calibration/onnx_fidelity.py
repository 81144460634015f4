"""Does model.onnx say what the bundle's other models say? Top-1 agreement and per-class accuracy of the
ONNX int8 model against a reference (the float Keras model, or the TFLite int8 model), on a labelled set.

The ONNX probabilities come through edge.runtime.onnx, the code the device runs, on the CPU provider.
"""

from __future__ import annotations

import numpy as np

from calibration.fidelity import compare
from edge.progress import progress
from edge.runtime.onnx import OnnxModel


def onnx_probs(
    onnx_model: bytes, images: np.ndarray, batch_size: int = 16, desc: str = "onnx model"
) -> np.ndarray:
    """Float32 scores of an ONNX model for uint8 images, through the device's input and output handling."""
    model = OnnxModel(onnx_model, ["CPUExecutionProvider"])
    starts = range(0, len(images), batch_size)
    return np.concatenate(
        [
            model.run(images[a : a + batch_size])
            for a in progress(starts, desc=desc, unit="batch", leave=False)
        ]
    )


def agreement(
    reference_p: np.ndarray, onnx_p: np.ndarray, y: np.ndarray, labels: list[str], split: str, reference: str
) -> dict:
    """The ONNX model against `reference` ("float", "tflite-int8") on the same images: top-1 agreement,
    both accuracies overall and per class, and the mean absolute probability difference
    (calibration.fidelity.compare, in the shape the export report records)."""
    r = compare(reference_p, onnx_p, y, labels, split)
    return {
        "against": reference,
        "split": split,
        "n": r.n,
        "agreement": round(r.agreement, 6),
        "disagreements": r.n - round(r.agreement * r.n),
        "reference_accuracy": round(r.float_accuracy, 6),
        "onnx_accuracy": round(r.quant_accuracy, 6),
        "mean_abs_prob_diff": round(r.mean_abs_prob_diff, 6),
        "per_class": [
            {
                "label": c.label,
                "n": c.n,
                "reference_accuracy": round(c.float_accuracy, 6),
                "onnx_accuracy": round(c.quant_accuracy, 6),
            }
            for c in r.per_class
        ],
    }


def format_agreement(report: dict) -> str:
    lines = [
        f"onnx int8 vs {report['against']} on {report['split']} (n={report['n']}): top-1 agreement "
        f"{report['agreement'] * 100:.2f}% ({report['disagreements']} differ), accuracy {report['against']} "
        f"{report['reference_accuracy'] * 100:.2f}%  onnx {report['onnx_accuracy'] * 100:.2f}%",
        f"{'class':<16} {'n':>5} {report['against']:>12} {'onnx':>8}",
    ]
    for c in report["per_class"]:
        lines.append(
            f"{c['label']:<16} {c['n']:5d} {c['reference_accuracy'] * 100:11.2f}% {c['onnx_accuracy'] * 100:7.2f}%"
        )
    return "\n".join(lines)
