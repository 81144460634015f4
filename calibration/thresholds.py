"""Uncertainty thresholds (edge.bundle.Uncertainty) derived from the quantized model's own outputs.

We take low quantiles of the top-1 probability and of the top-1 minus top-2 margin over the
calibration images, as the shipped (quantized) model scores them. Calibration images are training
images the model has seen, so they are scored more confidently than new cells will be: a threshold
at their 2nd percentile flags somewhat more than 2% of new cells, which is the safe direction for
screening. Clamps keep a badly fitted model from producing a useless rule.
"""

from __future__ import annotations

import numpy as np

from edge.bundle import Uncertainty

QUANTILE = 0.02
CONFIDENCE_RANGE = (0.5, 0.95)
MARGIN_RANGE = (0.1, 0.9)


def top_and_margin(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ordered = np.sort(probs, axis=1)[:, ::-1]
    second = ordered[:, 1] if probs.shape[1] > 1 else np.zeros(len(probs))
    return ordered[:, 0], ordered[:, 0] - second


def derive_uncertainty(probs: np.ndarray, split: str, quantile: float = QUANTILE) -> Uncertainty:
    """Thresholds at `quantile` of top-1 probability and margin on `probs` (N x C), clamped."""
    top, margin = top_and_margin(probs)
    conf = float(np.clip(np.quantile(top, quantile), *CONFIDENCE_RANGE))
    marg = float(np.clip(np.quantile(margin, quantile), *MARGIN_RANGE))
    source = (
        f"quantized model on the {len(probs)} calibration images ({split}): "
        f"quantile {quantile:g} of top-1 probability and of top-1 minus top-2 margin, "
        f"clamped to {list(CONFIDENCE_RANGE)} and {list(MARGIN_RANGE)}"
    )
    return Uncertainty(min_confidence=round(conf, 4), min_margin=round(marg, 4), source=source)


def flag_stats(probs: np.ndarray, y: np.ndarray, rule: Uncertainty) -> dict:
    """On a labelled set: the fraction flagged, and accuracy among flagged and unflagged cells."""
    top, margin = top_and_margin(probs)
    flagged = (top < rule.min_confidence) | (margin < rule.min_margin)
    correct = probs.argmax(1) == y
    return {
        "flagged_fraction": float(flagged.mean()),
        "accuracy_unflagged": float(correct[~flagged].mean()) if (~flagged).any() else float("nan"),
        "accuracy_flagged": float(correct[flagged].mean()) if flagged.any() else float("nan"),
        "errors_flagged": int((~correct & flagged).sum()),
        "errors_total": int((~correct).sum()),
    }
