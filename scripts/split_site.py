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
    args = ap.parse_args(argv)

    import numpy as np

    from edge.dataset import scan_labelled
    from edge.splits import per_class_sample

    images = scan_labelled(args.source)
    targets = images.targets
    site = set(per_class_sample(targets, args.per_class, args.seed).tolist())
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


if __name__ == "__main__":
    sys.exit(main())
