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

from calibration.folders import (
    LabelledImages,
    check_classes,
    file_sha256,
    load_images,
    scan_classes,
    split_name,
)
from edge.errors import DataError
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

    def generator(self):
        """The zero-argument generator of [1 x S x S x 3 float32] the TFLite converter asks for."""
        images = self.data.images

        def generate():
            for img in images:
                yield [img[None].astype(np.float32)]

        return generate


def _overlaps(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


def _eval_hashes(eval_dirs: list[Path]) -> set[str]:
    hashes = set()
    for root in eval_dirs:
        for files in scan_classes(root).values():
            hashes.update(file_sha256(f) for f in files)
    return hashes


def balanced_sample(classes: dict[str, list[Path]], count: int, seed: int) -> dict[str, list[Path]]:
    """`count // n_classes` files per class (all of them where a class has fewer), chosen with `seed`."""
    rng = np.random.default_rng(seed)
    per_class = max(1, count // len(classes))
    chosen = {}
    for name, files in classes.items():
        k = min(per_class, len(files))
        idx = np.sort(rng.choice(len(files), size=k, replace=False))
        chosen[name] = [files[i] for i in idx]
    return chosen


def build_calibration_set(
    calib_dir: str | os.PathLike,
    spec: PreprocessSpec,
    labels: list[str],
    count: int = DEFAULT_COUNT,
    seed: int = 0,
    eval_dirs: list[str | os.PathLike] = (),
) -> CalibrationSet:
    """Sample, preprocess and describe the calibration images.

    Refuses a calibration folder that is (or contains, or lies inside) an evaluation folder, and
    drops any sampled file whose bytes also occur in an evaluation folder (a duplicate across splits).
    """
    root = Path(calib_dir)
    eval_paths = [Path(p) for p in eval_dirs if p]
    for ev in eval_paths:
        if _overlaps(root, ev):
            raise DataError(
                f"{root}: the calibration folder overlaps the evaluation split {ev}; "
                "calibrate on training images (e.g. <data>/train), never on the split that judges the model"
            )
    if count < 1:
        raise DataError(f"--calib-count must be at least 1, not {count}")
    classes = scan_classes(root)
    check_classes(list(classes), labels, root, exact=True)
    chosen = balanced_sample(classes, count, seed)
    eval_hashes = _eval_hashes(eval_paths) if eval_paths else set()
    dropped = 0
    pairs = []
    for name in labels:
        for f in chosen[name]:
            if eval_hashes and file_sha256(f) in eval_hashes:
                dropped += 1
                continue
            pairs.append((f, labels.index(name)))
    data = load_images(pairs, spec, labels, root, desc="calibration images")
    per_class = {name: int((data.y == i).sum()) for i, name in enumerate(labels)}
    description = {
        "split": split_name(root),
        "source": str(root),
        "count": len(data),
        "requested": int(count),
        "per_class": per_class,
        "available": {name: len(files) for name, files in classes.items()},
        "selection": f"class-balanced: {max(1, count // len(classes))} per class, "
        f"numpy default_rng({seed}) over each class's files sorted by name",
        "seed": int(seed),
        "preprocess": "edge.preprocess.preprocess_file with the bundle's preprocess spec (uint8 RGB 0-255)",
        "dropped_eval_duplicates": dropped,
        "skipped_unreadable": data.skipped,
        "fingerprint": data.fingerprint,
        "fingerprint_method": "sha256 over sorted (relative path, file sha256) pairs + preprocess spec",
    }
    return CalibrationSet(data, description)
