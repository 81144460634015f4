#!/usr/bin/env python3
"""Measure the crop rule: how much of a training image's side its white cell spans.

    python scripts/measure_cell_fraction.py models/wbc-detector-int8 \
        ../shared/data/pbc-8class/train ../shared/data/blood-5class/train --per-class 150

For a seeded sample of each class folder, the detector's box over the image centre (and, as a cross-
check, the classical baseline's): max(w, h) / the image's shorter side, which is the side of the
centred square the classifier's preprocessing takes. The median over the white-cell folders of all
the sets (platelets and erythroblasts left out) is the crop rule's `cell_fraction`: a detected cell is
cropped to a square of side max(w, h) / cell_fraction (edge/detect/crop.py). The per-class spread
shows what the rule gives up: in the training images the field of view is fixed, so a lymphocyte
fills less of it than a monocyte; the rule frames every cell alike.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("detector")
    ap.add_argument("sets", nargs="+")
    ap.add_argument("--per-class", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import numpy as np

    from edge.bundle import Bundle
    from edge.detect.centred import NOT_WHITE, centred_report
    from edge.detect.classical import ClassicalDetector
    from edge.detect.detector import Detector

    detector = Detector.open(Bundle.load(args.detector))
    pooled: dict[str, list[float]] = {"detector": [], "classical": []}
    for name, det in (("detector", detector), ("classical", ClassicalDetector(threshold=0.05))):
        for root in args.sets:
            report = centred_report(det, Path(root), args.per_class, args.seed, keep_fractions=True)
            for folder, r in report["folders"].items():
                f = r["cell_side_fraction"]
                print(
                    f"{name:<9} {Path(root).parent.name}/{Path(root).name}/{folder:<15} found {r['found']:>4}/{r['images']:<4} "
                    f"cell side / image side: median {f['median']} (IQR {f['p25']}-{f['p75']})"
                )
                if folder.lower() not in NOT_WHITE:
                    pooled[name] += r["fractions"]
    for name, values in pooled.items():
        q = np.percentile(values, [25, 50, 75]) if values else [float("nan")] * 3
        print(
            f"{name}: white cells of all sets, n={len(values)}: median {q[1]:.3f} (IQR {q[0]:.3f}-{q[2]:.3f})"
        )
    print(f"crop rule: cell_fraction = {np.median(pooled['detector']):.2f} (the detector's median)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
