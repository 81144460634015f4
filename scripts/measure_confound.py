#!/usr/bin/env python3
"""Measure the lab confound of a bundle: can its embedding tell two labs apart within one class?

    python scripts/measure_confound.py models/differential-int8 \
        --lab barcelona=../shared/data/pbc-8class/val/neutrophil \
        --lab munich=../shared/data/blood-5class/val/seg_neutrophil --label neutrophil

Both folders hold the same kind of cell (by default: neutrophils of the Barcelona and the Munich lab).
A model that reads the cell gives them the same label in both labs and embeddings that a linear
probe cannot tell apart much better than chance; a model that learned the lab does the opposite.
Printed (and with --json, written):

- per lab: the share of its cells called `--label` (recall), rejected as unknown, flagged;
- the linear probe: 5-fold cross-validated accuracy of a logistic regression (L2) that predicts the
  lab from the model's embedding (the same output rejection uses), as computed on the device; 50 %
  is chance for two labs of equal size (the folders are subsampled to the same size).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--lab", action="append", required=True, metavar="NAME=FOLDER", help="two of them")
    ap.add_argument("--label", default="neutrophil", help="the class both folders hold")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args(argv)

    import numpy as np

    from edge.bundle import Bundle
    from edge.dataset import images_in, load_array
    from edge.head_fit import fit_head
    from edge.predict import Classifier
    from edge.splits import stratified_folds

    labs = dict(pair.split("=", 1) for pair in args.lab)
    if len(labs) != 2:
        ap.error("give exactly two --lab NAME=FOLDER")
    bundle = Bundle.load(args.bundle)
    if bundle.manifest.embedding is None:
        ap.error(f"{args.bundle} has no embedding output (quantize with --reject)")
    classifier = Classifier.open(bundle, "cpu")
    rng = np.random.default_rng(args.seed)
    files = {name: images_in(folder) for name, folder in labs.items()}
    n = min(len(f) for f in files.values())
    result = {"bundle": str(bundle.path), "sha256": bundle.sha256, "label": args.label, "per_lab": {}}
    embeddings, lab_of = [], []
    for k, (name, paths) in enumerate(files.items()):
        chosen = [paths[i] for i in np.sort(rng.permutation(len(paths))[:n])]
        images = load_array(chosen, bundle.preprocess_spec).images
        preds, embs = [], []
        for start in range(0, len(images), 16):
            preds += classifier.classify_tensors(images[start : start + 16])
            embs.append(classifier.backend.embedding())
        embeddings.append(np.concatenate(embs))
        lab_of += [k] * len(images)
        result["per_lab"][name] = {
            "folder": labs[name],
            "n": len(images),
            "recall": round(float(np.mean([p.label == args.label for p in preds])), 4),
            "rejected": round(float(np.mean([p.label == "unknown" for p in preds])), 4),
            "flagged": round(float(np.mean([p.uncertain for p in preds])), 4),
        }
    x = np.concatenate(embeddings).astype(np.float64)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    y = np.array(lab_of)
    right = 0
    for held in stratified_folds(y, 5, args.seed):
        fit = np.setdiff1d(np.arange(len(y)), held)
        w, b = fit_head(x[fit], y[fit], np.zeros((2, x.shape[1])), np.zeros(2), 1e-2)
        right += int(((x[held] @ w.T + b).argmax(1) == y[held]).sum())
    result["lab_probe_accuracy"] = round(right / len(y), 4)
    result["lab_probe"] = "5-fold CV logistic regression (L2 1e-2) on standardised embeddings; chance 0.5"
    for name, v in result["per_lab"].items():
        print(
            f"{name}: n={v['n']} called {args.label} {v['recall'] * 100:.1f}%, rejected {v['rejected'] * 100:.1f}%, "
            f"flagged {v['flagged'] * 100:.1f}%"
        )
    print(
        f"linear probe tells the labs apart from the embedding: {result['lab_probe_accuracy'] * 100:.1f}% (chance 50%)"
    )
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
