#!/usr/bin/env python3
"""Split a labelled folder from a new microscope into the cells a site would label for `edge adapt`
and the rest, to measure site calibration on cells it never saw:

    python scripts/split_site.py ../shared/data/tecom-wbc --per-class 20 --site /tmp/tecom-site --rest /tmp/tecom-rest
    edge adapt models/differential-int8 /tmp/tecom-site --out /tmp/differential-tecom
    edge eval /tmp/differential-tecom /tmp/tecom-rest

`--per-class` cells of each class (edge.splits.per_class_sample with --seed, over the class's files
in edge.dataset's scan order; all of them where a class has fewer, and then the class has none left in
--rest) are copied to --site, the others to --rest. Files are copied, never linked: both outputs are
ordinary class folders. Nothing is written into the project.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source")
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--site", required=True)
    ap.add_argument("--rest", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--at-most-half",
        action="store_true",
        help="never more than half of a class to --site, so every class is also tested (20 a class, 10 "
        "where a set has 20 or fewer)",
    )
    ap.add_argument(
        "--labels",
        action="store_true",
        help="SOURCE is a frame,label CSV (edge adapt/eval --frames --labels): write --site and --rest CSVs",
    )
    args = ap.parse_args(argv)

    import numpy as np

    from edge.dataset import scan_labelled

    if args.labels:
        return _split_csv(args)
    images = scan_labelled(args.source)
    targets = images.targets
    site = _choose(targets, args)
    for c, name in enumerate(images.labels):
        members = np.flatnonzero(targets == c)
        chosen = site.intersection(members.tolist())
        for i in members:
            item = images.items[i]
            dest = Path(args.site if i in chosen else args.rest) / item.folder / item.relative()
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(item.path, dest)
        print(f"{name}: {len(chosen)} to {args.site}, {len(members) - len(chosen)} to {args.rest}")
    return 0


def _choose(targets, args) -> set[int]:
    """Per class, --per-class cells (at most half of the class with --at-most-half), at random."""
    import numpy as np

    from edge.splits import per_class_sample

    if not args.at_most_half:
        return set(per_class_sample(targets, args.per_class, args.seed).tolist())
    rng = np.random.default_rng(args.seed)
    chosen = set()
    for c in np.unique(targets):
        members = np.flatnonzero(targets == c)
        chosen.update(rng.permutation(members)[: min(args.per_class, len(members) // 2)].tolist())
    return chosen


def _split_csv(args) -> int:
    import csv

    import numpy as np

    rows = list(csv.DictReader(open(args.source, newline="")))
    names = sorted({r["label"] for r in rows})
    targets = np.array([names.index(r["label"]) for r in rows])
    site = _choose(targets, args)
    for path, keep in ((args.site, True), (args.rest, False)):
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["frame", "label"])
            writer.writeheader()
            writer.writerows(
                {"frame": r["frame"], "label": r["label"]} for i, r in enumerate(rows) if (i in site) == keep
            )
    for c, name in enumerate(names):
        n = int((targets == c).sum())
        k = len([i for i in site if targets[i] == c])
        print(f"{name}: {k} to {args.site}, {n - k} to {args.rest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
