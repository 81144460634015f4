#!/usr/bin/env python3
"""Set a bundle's gate again on held-out cells, without quantizing again: for a bundle made before the
gate's rule changed (edge/site.py: the gate reads no cell the model calls a blast, issue 22).

    python scripts/regate.py models/differential-int8 --holdout ../shared/data/pbc-8class/val \\
        --holdout ../shared/data/blood-5class/val --map seg_neutrophil=neutrophil

The cells are cut at the scales the bundle recorded for them (manifest training.scales) and scored by
the bundle's own int8 model on the device's code; the limits and the false-alarm measurement are
`edge quantize`'s (convert/quantize_rejection.py gate_step). Rewrites the manifest (the same files).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from convert.quantize_rejection import gate_step  # noqa: E402
from edge.bundle import CPU_MODEL, Bundle, write_bundle  # noqa: E402
from edge.dataset import load_labelled, parse_class_map, scan_labelled  # noqa: E402
from edge.predict import Classifier  # noqa: E402
from edge.site import gate_scores  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--holdout", action="append", required=True, help="held-out labelled folder (repeatable)")
    ap.add_argument("--map", action="append", default=[], help="class folder alias FOLDER=LABEL")
    args = ap.parse_args(argv)
    bundle = Bundle.load(args.bundle)
    recorded = (bundle.manifest.training or {}).get("scales") or {}
    scales = {str(Path(k).resolve()): v for k, v in recorded.items()}  # the run recorded absolute paths
    holdout = [str(Path(h).resolve()) for h in args.holdout]
    held = scan_labelled(holdout, bundle.labels, parse_class_map(args.map), dedupe=True)
    missing = [str(r) for r in held.roots if str(r) not in scales]
    if bundle.preprocess_spec.field_rbc and missing:
        sys.exit(f"{args.bundle}: no recorded scale for {', '.join(missing)} (manifest training.scales)")
    cells = load_labelled(held, bundle.preprocess_spec, scales=scales or None)
    classifier = Classifier.open(bundle, "cpu")
    preds = []
    for i in range(0, len(cells.images), 16):
        preds += classifier.classify_tensors(cells.images[i : i + 16])
    scores = gate_scores([p.label for p in preds], [p.rejection_score for p in preds])
    where = f"{len(scores)} of the {len(preds)} held-out cells of {held.split} not called a blast"
    gate, record = gate_step(scores, where)
    if gate is None:
        sys.exit(f"{args.bundle}: {record['gate']}")
    manifest = bundle.manifest
    manifest.gate = gate
    manifest.calibration = {
        **manifest.calibration,
        "rejection": {**manifest.calibration["rejection"], **record},
    }
    write_bundle(bundle.path, {CPU_MODEL: (bundle.path / CPU_MODEL).read_bytes()}, manifest)
    limits = ", ".join(f"{c.limit:.2f} at {c.cells}" for c in gate.checkpoints)
    print(
        f"{args.bundle}: gate {limits}; known cells called different in {record['gate_false_alarm_measured']:.1%}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
