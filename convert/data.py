"""Image folders -> file lists, honest splits, a data fingerprint and a cross-split near-duplicate check.

Layout: one subfolder per class, any number of classes >= 2. Fatal (DataError): a missing folder,
fewer than two classes, an empty class. Warned and ignored: files that are not images by suffix.
Unreadable or corrupt images are found when they are decoded (convert.cache), named and skipped.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.errors import DataError
from edge.preprocess import IMAGE_SUFFIXES


@dataclass
class ImageFolder:
    """A scanned class-folder dataset: files[i] has class index targets[i] into labels."""

    root: Path
    labels: list[str]
    files: list[Path]
    targets: np.ndarray
    ignored: list[Path] = field(default_factory=list)  # non-image files, warned about

    def __len__(self) -> int:
        return len(self.files)

    def counts(self) -> dict[str, int]:
        return {name: int((self.targets == i).sum()) for i, name in enumerate(self.labels)}

    def subset(self, index) -> ImageFolder:
        index = np.asarray(index, int)
        return ImageFolder(self.root, self.labels, [self.files[i] for i in index], self.targets[index], [])


def scan_folder(root: str | os.PathLike, labels: list[str] | None = None) -> ImageFolder:
    """Scan `root/<class>/*`. With `labels` (e.g. from the training folder) the classes must match them."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root}: no class subfolders (expected {root}/<class>/<image>)")
    found = [p.name for p in class_dirs]
    if labels is None:
        if len(class_dirs) < 2:
            raise DataError(f"{root}: only one class ({found[0]}); need at least 2 class subfolders")
        labels = found
    elif sorted(found) != sorted(labels):
        raise DataError(f"{root}: classes {found} do not match the training classes {list(labels)}")
    files, targets, ignored = [], [], []
    for index, name in enumerate(labels):
        entries = sorted(p for p in (root / name).rglob("*") if p.is_file() and not p.name.startswith("."))
        images = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
        ignored += [p for p in entries if p.suffix.lower() not in IMAGE_SUFFIXES]
        if not images:
            raise DataError(f"{root / name}: class '{name}' has no images")
        files += images
        targets += [index] * len(images)
    return ImageFolder(root, list(labels), files, np.array(targets, dtype=np.int64), ignored)


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


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fingerprint(folder: ImageFolder, hashes: list[str] | None = None) -> str:
    """sha256 over sorted '<class>/<relative name> <content sha256>' lines: changes with any file."""
    hashes = hashes or [file_sha256(p) for p in folder.files]
    lines = sorted(
        f"{folder.labels[t]}/{p.relative_to(folder.root / folder.labels[t]).as_posix()} {h}"
        for p, t, h in zip(folder.files, folder.targets, hashes, strict=True)
    )
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


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
