"""The representative dataset for int8 calibration: a class-balanced sample of training images.

The converter uses it to choose every activation's int8 range, so it must look like what the device
will see: the same `edge.preprocess`, all classes equally, and never the evaluation split (that
would tune the quantization on the data that is meant to judge it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.dataset import (
    ImageSet,
    LabelledImages,
    load_labelled,
    parse_class_map,
    require_classes,
    scan_labelled,
)
from edge.errors import DataError
from edge.hashing import FINGERPRINT_METHOD, fingerprint
from edge.preprocess import PreprocessSpec

DEFAULT_COUNT = 300


@dataclass
class CalibrationSet:
    data: LabelledImages
    description: dict

    @property
    def images(self) -> np.ndarray:
        return self.data.images

    @property
    def fingerprint(self) -> str:
        return self.data.fingerprint

    def with_cells(self, cells: LabelledImages) -> CalibrationSet:
        """This set and `cells` (a site's, edge adapt --host), described as both."""
        data = joined(self.data, cells)
        site = {"split": cells.split, "count": len(cells), "fingerprint": cells.fingerprint}
        description = {
            **self.description,
            "split": data.split,
            "count": len(data),
            "per_class": {name: int((data.y == i).sum()) for i, name in enumerate(data.labels)},
            "fingerprint": data.fingerprint,
            "site_cells": site,
        }
        return CalibrationSet(data, description)

    def generator(self):
        """The zero-argument generator of [1 x S x S x 3 float32] the TFLite converter asks for."""
        images = self.data.images

        def generate():
            for img in images:
                yield [img[None].astype(np.float32)]

        return generate


def joined(a: LabelledImages, b: LabelledImages) -> LabelledImages:
    """Two sets of preprocessed cells with the same labels as one (a's first), fingerprinted as both."""
    return LabelledImages(
        np.concatenate([a.images, b.images]),
        np.concatenate([a.y, b.y]),
        a.labels,
        [*a.files, *b.files],
        f"{a.split} + {b.split}",
        fingerprint([("set", a.split, a.fingerprint), ("set", b.split, b.fingerprint)]),
        [*a.skipped, *b.skipped],
    )


def _overlaps(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


def balanced_sample(images: ImageSet, count: int, seed: int) -> ImageSet:
    """`count // n_classes` images per class (all of them where a class has fewer), chosen with
    `seed` over each class's files in scan order."""
    rng = np.random.default_rng(seed)
    per_class = max(1, count // len(images.labels))
    targets = images.targets
    chosen = []
    for label in range(len(images.labels)):
        members = np.flatnonzero(targets == label)
        k = min(per_class, len(members))
        chosen += members[np.sort(rng.choice(len(members), size=k, replace=False))].tolist()
    return images.subset(chosen)


def build_calibration_set(
    calib_dir: str | os.PathLike | list,
    spec: PreprocessSpec,
    labels: list[str],
    count: int = DEFAULT_COUNT,
    seed: int = 0,
    eval_dirs: list[str | os.PathLike] = (),
    class_map: list[str] = (),
    progress=None,
    scales=None,
) -> CalibrationSet:
    """Sample, preprocess and describe the calibration images (one class-folder root or several,
    aliased by `class_map` FOLDER=LABEL pairs; a file found twice counts once).

    Refuses a calibration folder that is (or contains, or lies inside) an evaluation folder, and
    drops any sampled file whose bytes also occur in an evaluation folder (a duplicate across splits).
    """
    roots = [Path(calib_dir)] if isinstance(calib_dir, (str, os.PathLike)) else [Path(r) for r in calib_dir]
    eval_paths = [Path(p) for p in eval_dirs if p]
    for root in roots:
        for ev in eval_paths:
            if _overlaps(root, ev):
                raise DataError(
                    f"{root}: the calibration folder overlaps the evaluation split {ev}; "
                    "calibrate on training images (e.g. <data>/train), never on the split that judges the model"
                )
    if count < 1:
        raise DataError(f"--calib-count must be at least 1, not {count}")
    aliases = parse_class_map(class_map)
    available = scan_labelled(roots, labels, aliases, dedupe=True)
    require_classes(available, available.split, "calibration needs every class")
    chosen = balanced_sample(available, count, seed)
    eval_hashes = set()
    for ev in eval_paths:
        eval_hashes.update(scan_labelled(ev, labels, aliases, keep_unknown=True).hashes())
    keep = [k for k, sha in enumerate(chosen.hashes()) if sha not in eval_hashes]
    dropped = len(chosen) - len(keep)
    chosen = chosen.subset(keep)
    data = load_labelled(
        chosen, spec, progress=progress, scales=scales(chosen) if callable(scales) else scales
    )
    per_class = {name: int((data.y == i).sum()) for i, name in enumerate(labels)}
    description = {
        "split": data.split,
        "source": str(roots[0]) if len(roots) == 1 else [str(r) for r in roots],
        "class_map": list(class_map),
        "count": len(data),
        "requested": int(count),
        "per_class": per_class,
        "available": available.counts(),
        "selection": f"class-balanced: {max(1, count // len(labels))} per class, "
        f"numpy default_rng({seed}) over each class's files in edge.dataset scan order",
        "seed": int(seed),
        "preprocess": "edge.preprocess.preprocess with the bundle's preprocess spec (uint8 RGB 0-255)",
        "dropped_eval_duplicates": dropped,
        "skipped_unreadable": data.skipped,
        "fingerprint": data.fingerprint,
        "fingerprint_method": FINGERPRINT_METHOD,
    }
    return CalibrationSet(data, description)
