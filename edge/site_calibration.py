"""What `edge adapt` decides about the microscope itself: its scale, its gate, and the `site` section
a calibrated bundle carries (edge/manifest.py `Site`), shown on every screen (edge/site.py)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edge.bundle import Bundle
from edge.catalogue import cell_class
from edge.manifest import Gate, Scale, Site
from edge.rejection import MahalanobisScorer
from edge.site import CHECKPOINTS, gate_limits, gate_scores
from edge.site_scores import false_blast_rate

# Around a scale measured from red cells (which Hough circles find to within ~10 %), and, where none can
# be measured, around the image's own side (a single-cell image usually spans 2-6 red cells).
AROUND_MEASURED = (0.8, 0.9, 1.0, 1.12, 1.25)
AROUND_IMAGE = (0.6, 0.75, 0.9, 1.1, 1.35, 1.7)
ROUND_PX = 0.5


def physical(bundle: Bundle) -> bool:
    """Does the bundle cut cells at a physical size (preprocessing version 2 with field_rbc)?"""
    spec = bundle.preprocess_spec
    return spec.version == 2 and bool(spec.field_rbc)


@dataclass
class ScaleChoice:
    rbc_px: float | None  # None: whole images (the bundle does not cut at a physical size)
    scale: Scale | None
    tried: dict[str, float] = field(default_factory=dict)  # rbc_px -> cross-validated accuracy
    measured: float | None = None

    def record(self) -> dict | None:
        if self.scale is None:
            return None
        return {
            **self.scale.to_dict(),
            "measured_from_red_cells": self.measured,
            "cross_validation": self.tried,
        }


def choose_scale(
    bundle: Bundle, cells, measured, given: float | None, cv_accuracy: Callable[[float], float]
) -> ScaleChoice:
    """The site's scale: `given`, else the candidate (around the red cells' measurement, or around the
    image side) at which `cv_accuracy(rbc_px)` (the fit's cross-validated accuracy) is best; ties go
    to the candidate nearest the measurement."""
    if not physical(bundle):
        return ScaleChoice(None, None)
    if given:
        return ScaleChoice(float(given), Scale(rbc_px=float(given), method="given"))
    if measured is not None:
        base, factors = measured.rbc_px, AROUND_MEASURED
    else:
        side = float(np.median([min(img.shape[:2]) for img in cells.images]))
        base, factors = side / float(bundle.preprocess_spec.field_rbc), AROUND_IMAGE
    candidates = sorted(
        {round(base * f / ROUND_PX) * ROUND_PX for f in factors}, key=lambda s: abs(np.log(s / base))
    )
    tried = {f"{s:g}": round(cv_accuracy(s), 4) for s in candidates}
    best = max(candidates, key=lambda s: tried[f"{s:g}"])  # max keeps the first of equals: the nearest
    scale = Scale(
        rbc_px=best,
        method="calibration",
        red_cells=measured.cells if measured else None,
        images=measured.images if measured else None,
    )
    return ScaleChoice(best, scale, tried, measured.rbc_px if measured else None)


def site_section(name: str, method: str, cells, split, scale: Scale | None) -> Site:
    fitted = cells.y[split.fit]
    labels_seen = {int(c): int((fitted == c).sum()) for c in np.unique(fitted)}
    return Site(
        name=name[:120],
        calibrated_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        method=method,
        cells_per_class={str(k): v for k, v in labels_seen.items()},
        scale=scale,
        fingerprint=cells.fingerprint,
    )


def held_back_summary(record: dict, y: np.ndarray, split, before: list, after: list, labels) -> dict:
    """The held-back cells' numbers a screen shows about the site: accuracy and false blasts."""
    held = split.held
    names = [labels[i] for i in y[held]]
    blasts = [n for n in labels if cell_class(n).blast]

    def fb(preds):
        return round(false_blast_rate([preds[i] for i in held], names, blasts)["false_blast_rate"], 4)

    return {
        "n": int(len(held)),
        "accuracy_before": record["before"]["accuracy"],
        "accuracy_after": record["after"]["accuracy"],
        "false_blast_before": fb(before) if len(held) else None,
        "false_blast_after": fb(after) if len(held) else None,
    }


def site_gate(adapted: Bundle, emb: np.ndarray, y: np.ndarray, split, preds) -> tuple[Gate | None, dict]:
    """The gate set again on the site's cells as the calibrated bundle scores them (the fitted ones
    each left out of its class's centre, the held-back ones as they are), never stricter than the
    bundle's own; the bundle's gate where the site has too few cells."""
    old = adapted.manifest.gate
    rejection = adapted.manifest.rejection
    if rejection is None:
        return old, {"kept": "the bundle has no rejection"}
    scorer = MahalanobisScorer.load(adapted.path / rejection.file)
    scores = np.concatenate(
        [scorer.left_out_scores(emb[split.fit], y[split.fit]), [preds[i].rejection_score for i in split.held]]
    )
    scores = gate_scores([preds[i].label for i in (*split.fit, *split.held)], scores)  # what the gate reads
    if len(scores) <= CHECKPOINTS[0]:
        return old, {"kept": f"only {len(scores)} site cells"}
    new = gate_limits(scores, f"{len(scores)} cells of the site (edge adapt)")
    if old is not None:
        floor = {c.cells: c.limit for c in old.checkpoints}
        raised = [c.replace(limit=max(c.limit, floor.get(c.cells, c.limit))) for c in new.checkpoints]
        new = new.replace(checkpoints=raised)
    limits = [[c.cells, c.limit] for c in new.checkpoints]
    return new, {"checkpoints": limits, "site_cells": int(len(scores))}
