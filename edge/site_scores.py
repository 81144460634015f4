"""Scoring a labelled folder from another site: the classes the bundle knows, and those it should reject.

`edge eval` sorts each image into one of two groups by its folder:
- a class the bundle knows (after `--map` aliases): scored for accuracy, counting a rejected cell
  ("unknown") as wrong, as the technician gets no label for it;
- a class it does not know (e.g. lymphocytes for a five-class model): the cell should be rejected or at
  least flagged; anything else is a confident wrong answer.
Across both: the false-blast rate, normal cells called a blast class without a flag, which is what
raises a false leukaemia alarm.
"""

from __future__ import annotations

from collections import Counter

from edge.catalogue import UNKNOWN
from edge.metrics import classification_report


def known_class_report(preds, targets: list[int], labels: list[str]) -> dict:
    """Accuracy and per-class metrics over cells of known classes, with "unknown" as a wrong answer
    (an extra predicted column, only when some cell was rejected)."""
    rejected = [p.label == UNKNOWN for p in preds]
    columns = labels + [UNKNOWN] if any(rejected) else labels
    report = classification_report(targets, [columns.index(p.label) for p in preds], columns)
    if any(rejected):  # "unknown" is no cell's true class: its row is zeros, so the macro leaves it out
        report["per_class"].pop(UNKNOWN)
    confident = [(p, t) for p, t in zip(preds, targets, strict=True) if not p.uncertain]
    accepted = [(p, t) for p, t in zip(preds, targets, strict=True) if p.label != UNKNOWN]
    report.update(
        uncertain_n=len(preds) - len(confident),
        uncertain_fraction=(len(preds) - len(confident)) / len(preds) if preds else 0.0,
        confident_n=len(confident),
        confident_accuracy=_accuracy(confident, labels),
        rejected_n=sum(rejected),
        rejected_fraction=sum(rejected) / len(preds) if preds else 0.0,
        accepted_accuracy=_accuracy(accepted, labels),
    )
    return report


def _accuracy(pairs, labels: list[str]) -> float:
    return sum(p.label == labels[t] for p, t in pairs) / len(pairs) if pairs else 0.0


def should_reject_report(preds_by_folder: dict[str, list]) -> dict:
    """For folders of classes the bundle does not know: how many cells were rejected, flagged, or
    given a confident label (and which)."""
    out = {}
    for folder, preds in preds_by_folder.items():
        n = len(preds)
        rejected = sum(p.label == UNKNOWN for p in preds)
        flagged = sum(p.uncertain for p in preds)
        out[folder] = {
            "n": n,
            "rejected": rejected,
            "rejected_fraction": rejected / n if n else 0.0,
            "rejected_or_flagged_fraction": flagged / n if n else 0.0,
            "confident_labels": dict(Counter(p.label for p in preds if not p.uncertain).most_common()),
        }
    total = sum(v["n"] for v in out.values())
    return {
        "folders": out,
        "n": total,
        "rejected_fraction": sum(v["rejected"] for v in out.values()) / total if total else 0.0,
        "rejected_or_flagged_fraction": (
            sum(v["rejected_or_flagged_fraction"] * v["n"] for v in out.values()) / total if total else 0.0
        ),
    }


def false_blast_rate(preds, true_names: list[str], blast_classes: list[str]) -> dict:
    """Among cells that are not of a blast class: the fraction called one without a flag."""
    normal = [p for p, name in zip(preds, true_names, strict=True) if name not in blast_classes]
    false = sum(p.label in blast_classes and not p.uncertain for p in normal)
    # the same cells without the gate's flag (edge.site): what the model itself says
    called = sum(
        p.label in blast_classes and (not p.uncertain or getattr(p, "site_flag", False)) for p in normal
    )
    return {
        "blast_classes": blast_classes,
        "normal_cells": len(normal),
        "false_blast": false,
        "false_blast_rate": false / len(normal) if normal else 0.0,
        "false_blast_without_gate": called,
        "false_blast_rate_without_gate": called / len(normal) if normal else 0.0,
    }
