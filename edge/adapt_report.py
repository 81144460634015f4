"""What `edge adapt` records and prints: the held-back cells scored before and after, and the summary
lines. The numbers go into the new bundle's manifest (calibration.site_adaptation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.catalogue import UNKNOWN
from edge.metrics import label_indices, recall_by_class


def scores(preds, y: np.ndarray, labels: list[str]) -> dict:
    """Accuracy, recall per class, and the rejected and flagged shares of `preds` against `y`."""
    if not len(y):
        return {"n": 0, "accuracy": None, "recall": {}, "rejected_fraction": None, "flagged_fraction": None}
    predicted = label_indices([p.label for p in preds], labels)
    return {
        "n": len(y),
        "accuracy": round(float(np.mean(predicted == y)), 4),
        "recall": {
            name: round(share, 4) for name, (_, share) in recall_by_class(y, predicted, labels).items()
        },
        "rejected_fraction": round(float(np.mean([p.label == UNKNOWN for p in preds])), 4),
        "flagged_fraction": round(float(np.mean([p.uncertain for p in preds])), 4),
    }


def counts(y: np.ndarray, labels: list[str]) -> dict[str, int]:
    return {labels[c]: int((y == c).sum()) for c in np.unique(y)}


def _pct(v) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


def _scale_lines(scale: dict | None) -> list[str]:
    if not scale:
        return []
    how = {"given": "given", "calibration": "the best of the candidates", "red cells": "red cells"}[
        scale["method"]
    ]
    tried = ", ".join(f"{k} px {v * 100:.0f}%" for k, v in (scale.get("cross_validation") or {}).items())
    measured = scale.get("measured_from_red_cells")
    return [
        f"scale: red cells {scale['rbc_px']:g} px across ({how}"
        + (f"; red cells measured {measured:g} px" if measured else "; too few red cells to measure")
        + (f"; cross-validated accuracy {tried}" if tried else "")
        + ")"
    ]


def _gate_lines(gate: dict | None) -> list[str]:
    if not gate:
        return []
    if "kept" in gate:
        return [f"gate: the bundle's kept ({gate['kept']})"]
    limits = ", ".join(f"{c} cells {v:g}" for c, v in gate["checkpoints"])
    return [f"gate: set on {gate['site_cells']} site cells (median rejection score limits: {limits})"]


def summary(record: dict, out_dir: Path, fitted: str | None = None) -> list[str]:
    """The lines `edge adapt` prints; `fitted` says what was fitted (default: the device's last layer)."""
    b, a = record["before"], record["after"]
    lines = [
        fitted
        or f"fitted the last layer on {record['fit']['n']} cells {record['fit']['per_class']} "
        f"(L2 pull {record['l2_strength']:g}, chosen by cross-validation {record['cross_validation_accuracy']})",
        f"held back {record['held_back']['n']} cells (never fitted): accuracy {_pct(b['accuracy'])} before -> "
        f"{_pct(a['accuracy'])} after; rejected {_pct(b['rejected_fraction'])} -> {_pct(a['rejected_fraction'])}; "
        f"flagged {_pct(b['flagged_fraction'])} -> {_pct(a['flagged_fraction'])}",
        "per class after: " + ", ".join(f"{k} {_pct(v)}" for k, v in a["recall"].items()),
        *_scale_lines(record.get("scale")),
        *_gate_lines(record.get("gate")),
        f"site background (R, G, B) {record['site_background_rgb']}; bundle white reference "
        f"{record['white_reference_rgb']}",
        f"bundle: {out_dir}",
    ]
    if record["files_not_carried_over"]:
        lines.append(
            f"note: {', '.join(record['files_not_carried_over'])} not carried over (they hold the old head): "
            "run edge export / edge compile on the new bundle"
        )
    return lines
