"""`edge bench --mode field`: the daemon's field mode timed per frame and per cell.

The five standard stages keep their meaning, summed over the frame's models: `invoke` is the
detector's invoke() plus the classifier's (batched over the frame's cells), `preprocess` everything
before them (the detector's letterbox and decoding, the crops, the classifier's preprocessing),
`postprocess` the classifier's. The stage motion runs beside the classification (MotionCheck) and the
tracking after it: both lie within end_to_end, and `field.stages.motion` is the check's own time,
off the frame's path when it ran beside. So `overhead_ratio` is end_to_end over
(detector invoke + classifier invoke): the field-mode goal (<= 1.5) on the same scale as cell mode's.
`field` breaks each frame down further, and per cell. The mode itself is the daemon's, built by the
same function (edge/daemon/modes.py open_field_mode) with the default [pipeline.field] options.
"""

from __future__ import annotations

import numpy as np

from edge.bench.stats import summarize

TARGET = 1.5
# the field stages, in the order a frame goes through them
FIELD_STAGES = (
    "motion",
    "detect_preprocess",
    "detect_invoke",
    "detect_decode",
    "background",
    "track",
    "crop",
    "classify_preprocess",
    "classify_invoke",
    "classify_postprocess",
    "end_to_end",
)


def standard_sample(t: dict) -> tuple[float, float, float, float, float]:
    """(capture, preprocess, invoke, postprocess, end_to_end) of a field-mode frame."""
    invoke = t["detect_invoke"] + t["invoke"]
    # the mode's time holds the detector's stages, unless the capture thread ran them (look-ahead)
    if t.get("detected_ahead"):
        mode = t["mode"] + t["detect_preprocess"] + t["detect_decode"] + t["background"]
    else:
        mode = t["mode"] - t["detect_invoke"]
    before = mode + t["preprocess"]
    return t["capture"], before, invoke, t["postprocess"], t["result"]


def field_sample(t: dict, cells: int) -> dict:
    return {
        **{k: t[k] for k in FIELD_STAGES[:7]},
        "classify_preprocess": t["preprocess"],
        "classify_invoke": t["invoke"],
        "classify_postprocess": t["postprocess"],
        "end_to_end": t["result"],
        "cells": cells,
    }


def summary(samples: list[dict], mode) -> dict:
    """The `field` section of the bench JSON."""
    cells = np.array([s["cells"] for s in samples])
    stages = {name: summarize([s[name] for s in samples]).to_dict() for name in FIELD_STAGES}
    with_cells = [s for s in samples if s["cells"]]
    per_cell = {}
    if with_cells:
        per_cell = {
            "classify": summarize(
                [
                    (s["classify_preprocess"] + s["classify_invoke"] + s["classify_postprocess"]) / s["cells"]
                    for s in with_cells
                ]
            ).to_dict(),
            "classify_invoke": summarize([s["classify_invoke"] / s["cells"] for s in with_cells]).to_dict(),
            "end_to_end": summarize([s["end_to_end"] / s["cells"] for s in with_cells]).to_dict(),
        }
    invokes = [s["detect_invoke"] + s["classify_invoke"] for s in samples]
    e2e = stages["end_to_end"]["p50_ms"]
    per_cell_invoke = per_cell.get("classify_invoke", {}).get("p50_ms", 0.0)
    one_cell = stages["detect_invoke"]["p50_ms"] + per_cell_invoke * max(1.0, float(np.mean(cells)))
    return {
        "detector": {
            "path": str(mode.detector.bundle.path),
            "sha256": mode.detector.bundle.sha256,
            "input": list(mode.detector.bundle.manifest.input.shape),
            "threshold": mode.threshold,
        },
        "crop_cell_fraction": mode.crop_rule.cell_fraction,
        "cells_per_frame": {
            "mean": round(float(cells.mean()), 3),
            "max": int(cells.max()),
            "frames_without": int((cells == 0).sum()),
            "frames": len(samples),
        },
        "stages": stages,
        "per_cell": per_cell,
        # end_to_end p50 over the p50 of each frame's detector + classifier invoke(); and over the
        # detector's invoke plus the classifier's invoke per cell times the mean cells per frame
        "overhead_ratio": round(e2e / float(np.median(invokes)), 4) if np.median(invokes) > 0 else None,
        "overhead_ratio_per_cell_invoke": round(e2e / one_cell, 4) if one_cell > 0 else None,
        "target": TARGET,
    }
