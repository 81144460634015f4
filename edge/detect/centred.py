"""`edge eval-detector --centred`: a detector on folders of single-cell images (one class a folder).
Is a white cell found over each image's centre, and which fraction of the image's shorter side does
it span (the crop rule's measure, scripts/measure_cell_fraction.py)?"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.image_files import images_in, subfolders
from edge.preprocess import load_image, to_bgr8

# Folders of single-cell images that hold no white cell: reported apart from the others.
NOT_WHITE = ("platelet", "platelets", "erythroblast", "erythroblasts")


def _over_centre(dets, h: int, w: int):
    """The white-cell detection whose box holds the image's centre with the highest score, or None."""
    over = [
        d
        for d in dets
        if d.kind == "wbc"
        and d.box[0] <= w / 2 <= d.box[0] + d.box[2]
        and d.box[1] <= h / 2 <= d.box[1] + d.box[3]
    ]
    return max(over, key=lambda d: d.score) if over else None


def _quartiles(fractions: list[float]) -> dict:
    q = np.percentile(fractions, [25, 50, 75]).round(3).tolist() if fractions else [None] * 3
    return {"p25": q[0], "median": q[1], "p75": q[2], "n": len(fractions)}


def _folder(detector, files: list[Path], errors: list[str]) -> dict:
    """One folder's numbers (with its cell fractions under "_fractions")."""
    found, fractions, ms = 0, [], []
    for path in files:
        try:
            image = to_bgr8(load_image(path))
        except Exception as exc:  # noqa: BLE001 - a bad file is one line, not the end of the run
            errors.append(f"{path}: {exc}")
            continue
        dets, stages = detector.detect(image)
        ms.append(sum(stages.values()))
        h, w = image.shape[:2]
        best = _over_centre(dets, h, w)
        if best is not None:
            found += 1
            fractions.append(max(best.box[2], best.box[3]) / min(h, w))
    n = len(files)
    return {
        "images": n,
        "found": found,
        "found_fraction": round(found / n, 4) if n else None,
        "cell_side_fraction": _quartiles(fractions),
        "ms_per_image_p50": round(float(np.median(ms)), 3) if ms else None,
        "_fractions": fractions,
    }


def centred_report(detector, root: Path, per_class: int, seed: int, keep_fractions: bool = False) -> dict:
    """Each class folder of `root` (or `root` itself), at most `per_class` images of each (seeded
    sample; 0: all), and the white-cell folders pooled."""
    rng = np.random.default_rng(seed)
    out, errors = {}, []
    for folder in subfolders(root) or [root]:
        files = images_in(folder)
        if per_class and len(files) > per_class:
            files = [files[i] for i in sorted(rng.choice(len(files), per_class, replace=False))]
        out[folder.name] = _folder(detector, files, errors)
    white = [k for k in out if k.lower() not in NOT_WHITE]
    n = sum(out[k]["images"] for k in white)
    found = sum(out[k]["found"] for k in white)
    pooled = [f for k in white for f in out[k]["_fractions"]]
    for v in out.values():
        fractions = v.pop("_fractions")
        if keep_fractions:
            v["fractions"] = fractions
    return {
        "folders": out,
        "white_cell_folders": white,
        "white_cells": {
            "images": n,
            "found": found,
            "found_fraction": round(found / n, 4) if n else None,
            "cell_side_fraction": _quartiles(pooled),
        },
        "errors": errors,
    }
