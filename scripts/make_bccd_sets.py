#!/usr/bin/env python3
"""Cut the cells and the debris that a classifier meets in real microscope fields out of a Pascal VOC
set (BCCD), as class folders for `edge eval`:

    python scripts/make_bccd_sets.py ../shared/data/bccd-frames --out /tmp/bccd-sets

Each kind is a class folder inside a folder that `edge eval` takes as one labelled set: `OUT/wbc/wbc/`
and `OUT/debris/{rbc_only,background,blurred}/`. None of them is a class of a bundle, so `edge eval`
scores them as should-be-rejected and counts the myeloblast calls among them.

- `wbc/`: every annotated white cell, cropped by the crop rule (a square of side max(w, h) / 0.45,
  centred on the box, reflected at the frame's edge: what `edge run --mode field` gives the
  classifier). These are cells of normal blood from another microscope and stain: none is a blast.
- `rbc_only/`: the same framing around a red cell whose crop holds no white cell;
- `background/`: squares of the white-cell crops' size with the fewest annotated objects in them
  (slide, plasma and the edges of red cells);
- `blurred/`: white-cell crops through a strong Gaussian blur (a cell far out of focus).

The last three are not cells a differential counts: a bundle that rejects what it does not know
should call them unknown (or at least flag them). Nothing is written into the project: the output
holds crops of the data set's images and stays where --out says.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CELL_FRACTION = 0.45  # the committed detector's crop rule (docs/field.md)


def _overlap(a, b) -> float:
    """Intersection of box b with square a, over b's area."""
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    return max(0.0, x1 - x0) * max(0.0, y1 - y0) / max(1e-6, b[2] * b[3])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("voc")
    ap.add_argument("--out", required=True)
    ap.add_argument("--per-kind", type=int, default=200, help="at most this many debris crops of each kind")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import cv2
    import numpy as np

    from edge.detect.crop import crop_box, crop_region
    from edge.detect.spec import CropRule
    from edge.detect.voc import read_voc

    rule = CropRule(cell_fraction=CELL_FRACTION)
    rng = np.random.default_rng(args.seed)
    root = Path(args.out)
    folder = {"wbc": root / "wbc" / "wbc"} | {
        k: root / "debris" / k for k in ("rbc_only", "background", "blurred")
    }
    for path in folder.values():
        path.mkdir(parents=True, exist_ok=True)
    counts = dict.fromkeys(("wbc", "rbc_only", "background", "blurred"), 0)
    frames = read_voc(args.voc)
    for frame in frames:
        image = cv2.imread(str(frame.image))
        wbcs = [b.xywh for b in frame.of("wbc")]
        others = [b.xywh for b in frame.boxes if b.kind != "wbc"]
        sides = []
        for k, box in enumerate(wbcs):
            square = crop_box(box, rule)
            sides.append(square[2])
            crop = crop_region(image, square, rule)
            cv2.imwrite(str(folder["wbc"] / f"{frame.stem}_{k}.png"), crop)
            counts["wbc"] += 1
            if counts["blurred"] < args.per_kind:
                cv2.imwrite(
                    str(folder["blurred"] / f"{frame.stem}_{k}.png"),
                    cv2.GaussianBlur(crop, (0, 0), square[2] / 25),
                )
                counts["blurred"] += 1
        side = int(np.median(sides)) if sides else int(min(frame.width, frame.height) * 0.45)
        for k, box in enumerate(b.xywh for b in frame.of("rbc")):
            square = crop_box((box[0], box[1], box[2], box[3]), rule)
            square = (square[0], square[1], side, side) if square[2] < side else square
            if counts["rbc_only"] >= args.per_kind or any(_overlap(square, w) > 0 for w in wbcs):
                continue
            if rng.random() < 0.25:  # a few per frame, from many frames
                cv2.imwrite(
                    str(folder["rbc_only"] / f"{frame.stem}_{k}.png"), crop_region(image, square, rule)
                )
                counts["rbc_only"] += 1
        if counts["background"] < args.per_kind and frame.width > side and frame.height > side:
            best, best_cover = None, None
            for _ in range(40):
                x, y = int(rng.integers(0, frame.width - side)), int(rng.integers(0, frame.height - side))
                square = (x, y, side, side)
                if any(_overlap(square, w) > 0 for w in wbcs):
                    continue
                cover = sum(_overlap(square, o) for o in others)
                if best_cover is None or cover < best_cover:
                    best, best_cover = square, cover
            if best is not None:
                cv2.imwrite(str(folder["background"] / f"{frame.stem}.png"), crop_region(image, best, rule))
                counts["background"] += 1
    print(
        f"wrote {root}: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + f" (from {len(frames)} frames)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
