"""Honest splits and a cross-split near-duplicate check, on an `edge.dataset.ImageSet`.

Which files a folder holds, their labels, hashes and fingerprint come from edge.dataset (the one
data layer); this module adds what only training needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.errors import DataError


def stratified_split(targets: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices with the same class proportions; each class keeps >= 1 image in each split."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"--val-fraction must be between 0 and 1, not {val_fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for cls in np.unique(targets):
        idx = rng.permutation(np.flatnonzero(targets == cls))
        if len(idx) < 2:
            raise DataError(f"class index {cls} has {len(idx)} image; a split needs at least 2 per class")
        n_val = min(len(idx) - 1, max(1, int(round(len(idx) * val_fraction))))
        val += idx[:n_val].tolist()
        train += idx[n_val:].tolist()
    return np.sort(train), np.sort(val)


def stratified_kfold(targets: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """K (train, val) index pairs; every image is in exactly one val fold, class proportions kept."""
    if k < 2:
        raise DataError(f"--folds must be at least 2, not {k}")
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(targets), dtype=np.int64)
    for cls in np.unique(targets):
        idx = rng.permutation(np.flatnonzero(targets == cls))
        if len(idx) < k:
            raise DataError(f"class index {cls} has {len(idx)} images, fewer than --folds {k}")
        fold_of[idx] = np.arange(len(idx)) % k
    all_idx = np.arange(len(targets))
    return [(all_idx[fold_of != f], all_idx[fold_of == f]) for f in range(k)]


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
