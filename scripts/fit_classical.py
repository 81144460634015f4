#!/usr/bin/env python3
"""Fit the classical baseline's parameters (edge/detect/classical.py) on the TRAINING split of a VOC
folder: a grid search for the best AP@0.5:0.95 (ties: AP@0.5), printed as ClassicalParams, and its
operating threshold, chosen as the learned detector's is: the highest score that still finds 99.5 %
of the training frames' white cells.

    python scripts/fit_classical.py ../shared/data/bccd-frames

The val split is never read, so `edge eval-detector classical VOC --split val` stays a fair test.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("voc")
    args = ap.parse_args(argv)

    import cv2
    from tqdm import tqdm

    from edge.detect.classical import ClassicalDetector, ClassicalParams
    from edge.detect.evaluate import evaluate, threshold_for_recall
    from edge.detect.voc import read_voc, split_frames, truth

    frames = split_frames(read_voc(args.voc), "train")
    images = [cv2.imread(str(f.image)) for f in frames]
    truths = [truth(f) for f in frames]
    grid = list(
        itertools.product((104, 107, 110, 113), (1.1, 1.2, 1.3), (0.03, 0.045, 0.06), (0.002, 0.004, 0.008))
    )
    best = None
    for b_max, grow, close, min_area in tqdm(grid, desc="grid", unit="setting"):
        params = ClassicalParams(b_max=b_max, grow=grow, close=close, min_area=min_area)
        det = ClassicalDetector(params)
        report = evaluate(
            [(det.detect(im, threshold=0.0)[0], t) for im, t in zip(images, truths, strict=True)], 0.5
        )
        key = (report.ap50_95, report.ap50)
        if best is None or key > best[0]:
            best = (key, params, report)
    (ap50_95, ap50), params, _ = best
    det = ClassicalDetector(params)
    ranked = [(det.detect(im, threshold=0.0)[0], t) for im, t in zip(images, truths, strict=True)]
    threshold = threshold_for_recall(ranked, 0.995)
    at = evaluate(ranked, threshold)
    print(f"train split, {len(frames)} frames: AP@0.5 {ap50:.4f}, AP@0.5:0.95 {ap50_95:.4f}")
    print(
        f"{params}; threshold {threshold:.4f} (precision {at.precision:.4f}, recall {at.recall:.4f} on train)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
