"""Honest splits and a cross-split near-duplicate check, on an `edge.dataset.ImageSet`.

Which files a folder holds, their labels, hashes and fingerprint come from edge.dataset (the one
data layer); this module adds what only training needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge import splits
from edge.errors import DataError


def _require_per_class(targets: np.ndarray, at_least: int, what: str) -> None:
    for cls in np.unique(targets):
        n = int((targets == cls).sum())
        if n < at_least:
            raise DataError(f"class index {cls} has {n} {what}")


def stratified_split(targets: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices with the same class proportions; each class keeps >= 1 image in each split
    (edge.splits, the one stratified split)."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"--val-fraction must be between 0 and 1, not {val_fraction}")
    _require_per_class(targets, 2, "image; a split needs at least 2 per class")
    return splits.stratified_split(targets, val_fraction, seed, min_rest=1)


def stratified_kfold(targets: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """K (train, val) index pairs; every image is in exactly one val fold, class proportions kept."""
    if k < 2:
        raise DataError(f"--folds must be at least 2, not {k}")
    _require_per_class(targets, k, f"images, fewer than --folds {k}")
    every = np.arange(len(targets))
    return [(np.setdiff1d(every, val), val) for val in splits.stratified_folds(targets, k, seed)]


# --- near-duplicates across splits ------------------------------------------------------------


def perceptual_hashes(images: np.ndarray) -> np.ndarray:
    """64-bit pHash (imagehash) of each uint8 RGB image, as uint64."""
    import imagehash
    from PIL import Image

    out = np.empty(len(images), dtype=np.uint64)
    for i, img in enumerate(images):
        bits = imagehash.phash(Image.fromarray(img)).hash.flatten()
        out[i] = np.uint64(int("".join("1" if b else "0" for b in bits), 2))
    return out


@dataclass
class DuplicatePair:
    train_file: str
    val_file: str
    distance: int  # Hamming distance of the 64-bit pHashes; 0 = identical hash


def near_duplicates(
    train_hashes, val_hashes, train_files, val_files, max_distance: int = 4
) -> list[DuplicatePair]:
    """Train/val pairs whose perceptual hashes differ in <= max_distance bits (of 64)."""
    pairs = []
    train_hashes = np.asarray(train_hashes, np.uint64)
    for j, h in enumerate(np.asarray(val_hashes, np.uint64)):
        dist = np.bitwise_count(np.bitwise_xor(train_hashes, h))
        for i in np.flatnonzero(dist <= max_distance):
            pairs.append(DuplicatePair(str(train_files[i]), str(val_files[j]), int(dist[i])))
    return pairs
