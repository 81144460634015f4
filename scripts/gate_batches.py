#!/usr/bin/env python3
"""The gate's goal figures (issue 22): how often random batches of held-out cells from the training
labs are called "matches", and where unseen microscopes are called "differs".

    python scripts/gate_batches.py models/differential-int8 --json gate.json

Known cells: the half of the --reject-holdout cells that `edge quantize` did NOT set the gate's
limits on (the same scan and the same seed-0 split as convert/quantize_rejection.py), 100 random
batches of 50 in random order; also batches of myeloblasts only (a slide full of blasts must never be called different).
Unseen microscopes: tecom-wbc (folder, scale measured on it) and bccd-frames (labelled fields through
the daemon's detector): random batches of 50 cells, the number of cells after which it said "differs".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

D = Path(os.environ.get("EDGE_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


def scores_of(classifier, tensors: np.ndarray) -> np.ndarray:
    """What the gate reads of each cell, in order: None for a cell called a blast (edge/site.py gate_score),
    which the gate skips."""
    from edge.site import gate_score

    out = []
    for i in range(0, len(tensors), 16):
        out += [
            gate_score(p.label, p.rejection_score) for p in classifier.classify_tensors(tensors[i : i + 16])
        ]
    return np.array(out, dtype=object)


def batches(gate, scores: np.ndarray, n: int = 50, reps: int = 100, seed: int = 1) -> dict:
    from edge.site import GateWatch

    rng = np.random.default_rng(seed)
    decisions, at = [], []
    for _ in range(reps):
        watch = GateWatch(gate)
        for s in scores[rng.choice(len(scores), min(n, len(scores)), replace=False)]:
            watch.add(s)
        decisions.append(watch.decision)
        if watch.decided_at and watch.differs:
            at.append(watch.decided_at)
    return {
        "batches": reps,
        "cells_per_batch": min(n, len(scores)),
        "matches": decisions.count("matches"),
        "differs": decisions.count("differs"),
        "undecided": decisions.count("checking"),
        "differs_after_cells_median": float(np.median(at)) if at else None,
        "differs_after_cells_max": int(max(at)) if at else None,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    from edge.bundle import Bundle, find_bundle
    from edge.daemon.config import DEFAULT_DETECTOR
    from edge.dataset import load_labelled, parse_class_map, scan_labelled
    from edge.detect.detector import Detector
    from edge.predict import Classifier
    from edge.scale import measure_files
    from edge.site_cells import from_frames

    bundle = Bundle.load(args.bundle)
    gate = bundle.manifest.gate
    if gate is None:
        sys.exit(f"{args.bundle}: has no gate")
    classifier = Classifier.open(bundle, "cpu")
    spec = bundle.preprocess_spec
    aliases = parse_class_map(["seg_neutrophil=neutrophil"])
    held = scan_labelled([D / "pbc-8class/val", D / "blood-5class/val"], bundle.labels, aliases, dedupe=True)
    scales = {
        str(r): measure_files([i.path for i in held.items if Path(i.source) == r]).rbc_px for r in held.roots
    }
    loaded = load_labelled(held, spec, scales=scales if spec.field_rbc else None)
    known = scores_of(classifier, loaded.images)
    read = np.flatnonzero([s is not None for s in known])  # what quantize set the limits on, split alike
    order = np.random.default_rng(0).permutation(len(read))
    half_b = read[order[len(order) // 2 :]]  # the half edge quantize did not set the limits on
    blast = bundle.labels.index("myeloblast")
    report = {
        "gate": gate.to_dict(),
        "known_cells_half_b": batches(gate, known[half_b]),
        "known_myeloblasts_only": batches(gate, known[loaded.y == blast]),
    }
    tecom = scan_labelled(D / "tecom-wbc", bundle.labels)
    scale = measure_files(tecom.files)
    report["tecom_scale_measured"] = scale.rbc_px if scale else None
    tecom_cells = load_labelled(tecom, spec, scales={str(D / "tecom-wbc"): scale.rbc_px} if scale else None)
    report["tecom"] = batches(gate, scores_of(classifier, tecom_cells.images))
    detector = Detector.open(Bundle.load(find_bundle(DEFAULT_DETECTOR)), "cpu")
    frames = from_frames(
        D / "bccd-frames/JPEGImages", D / "bccd-frames/wbc-labels.csv", detector, bundle.labels, {}
    )
    found = frames.measured_scale()
    report["bccd_scale_measured"] = found.rbc_px if found else None
    report["bccd"] = batches(
        gate, scores_of(classifier, frames.inputs(bundle, found.rbc_px if found else None))
    )
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
