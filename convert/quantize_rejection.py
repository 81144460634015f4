"""`edge quantize --reject mahalanobis`: what the device needs to call a cell unlike the training
cells "unknown" (edge/rejection.py): the class means and shared covariance of the training images'
embeddings, as the quantized model computes them, and the threshold."""

from __future__ import annotations

import logging

import numpy as np

from calibration.fidelity import tflite_outputs
from convert.quantize_request import QuantizeRequest
from convert.run_source import ModelSource
from edge.bundle import Rejection
from edge.manifest import Gate
from edge.rejection import MahalanobisScorer
from edge.site import CHECKPOINTS, gate_limits, gate_scores, measure_false_alarm

log = logging.getLogger(__name__)

REJECTION_FILE = "rejection.npz"


def _outputs(tflite: bytes, images: np.ndarray, n_classes: int, desc: str) -> tuple[np.ndarray, np.ndarray]:
    """The embedding and the class scores of the int8 model."""
    outputs = tflite_outputs(tflite, images, desc=desc)
    embedding = next(o for o in outputs if o.shape[-1] != n_classes or len(outputs) == 1)
    return embedding, next((o for o in outputs if o.shape[-1] == n_classes), outputs[0])


def _embeddings(tflite: bytes, images: np.ndarray, n_classes: int, desc: str) -> np.ndarray:
    return _outputs(tflite, images, n_classes, desc)[0]


def gate_step(scores: np.ndarray, where: str, seed: int = 0) -> tuple[Gate | None, dict]:
    """The gate (edge/site.py) from held-out known cells' scores: its limits set on one half of them,
    its false-alarm rate measured on the other half (random batches called "differs")."""
    if len(scores) < 2 * CHECKPOINTS[-1]:
        return None, {"gate": f"not set: {len(scores)} held-out cells, the gate needs {2 * CHECKPOINTS[-1]}"}
    order = np.random.default_rng(seed).permutation(len(scores))
    half_a, half_b = scores[order[: len(order) // 2]], scores[order[len(order) // 2 :]]
    gate = gate_limits(half_a, f"half of the {where} (the other half measured its false alarms)")
    measured = measure_false_alarm(gate, half_b)
    log.info(
        "gate: a microscope differs when the median score of its first cells passes "
        + ", ".join(f"{c.limit:.1f} at {c.cells}" for c in gate.checkpoints)
        + f"; known cells called different in {measured * 100:.1f}% of random batches"
    )
    return gate, {"gate_false_alarm_measured": round(measured, 4), "gate_limits_from": len(half_a)}


def rejection_step(
    req: QuantizeRequest, src: ModelSource, tflite: bytes
) -> tuple[Rejection, bytes, dict, Gate | None] | None:
    """Fit the class means and shared covariance on the training images' embeddings, as the quantized
    model computes them on the device; set the threshold at `reject_quantile` of the scores of the
    held-out cells (--reject-holdout), or of the training images themselves without it; and from the
    held-out cells, the gate that notices another microscope."""
    if req.reject == "none":
        return None
    train = req.training(src)
    n = len(src.labels)
    log.info(f"rejection: embeddings of the {len(train)} images of {train.split} ({req.reject_layer})...")
    train_emb = _embeddings(tflite, train.images, n, "embeddings (train)")
    scorer = MahalanobisScorer.fit(train_emb, train.y, n, dims=req.reject_dims or None)
    held = req.load(req.reject_holdout, src) if req.reject_holdout else None
    if held is not None:
        emb, probs = _outputs(tflite, held.images, n, f"embeddings ({held.split})")
        scores = scorer.scores(emb)
        called = gate_scores([src.labels[k] for k in probs.argmax(1)], scores)  # what the gate reads
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
    log.info(f"rejection: unknown above a score of {threshold:.2f} ({where})")
    gate, gate_record = (
        gate_step(called, f"{len(called)} of the {where} not called a blast")
        if held is not None
        else (None, {"gate": "not set: no --reject-holdout"})
    )
    record.update(gate_record)
    return rejection, scorer.to_bytes(), record, gate
