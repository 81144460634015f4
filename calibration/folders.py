"""Labelled image folders (`<root>/<class>/*.jpg`): scanning, split names, content hashes, loading.

Loading always goes through `edge.preprocess.preprocess_file`, the one preprocessing the device
uses, so calibration and evaluation see exactly the tensors the device will see.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.errors import DataError, ImageLoadError
from edge.preprocess import IMAGE_SUFFIXES, PreprocessSpec, preprocess_file


def scan_classes(root: str | os.PathLike) -> dict[str, list[Path]]:
    """Class name -> sorted image files. DataError when the folder has no class subfolders with images."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory of class folders (<class>/<image>)")
    classes = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in sub.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            classes[sub.name] = files
    if not classes:
        raise DataError(f"{root}: no class folders with images (expected <class>/<image>.jpg)")
    return classes


def check_classes(found: list[str], labels: list[str], root: Path, exact: bool) -> None:
    """Folder names must be model labels (and, for calibration, all of them)."""
    unknown = sorted(set(found) - set(labels))
    if unknown:
        raise DataError(f"{root}: class folders {unknown} are not labels of the model {labels}")
    missing = sorted(set(labels) - set(found))
    if exact and missing:
        raise DataError(f"{root}: no images for classes {missing}; calibration needs every class")


def split_name(root: str | os.PathLike) -> str:
    """`…/blood-5class/val` -> `blood-5class/val`: what every metric records as its split."""
    root = Path(root).resolve()
    return f"{root.parent.name}/{root.name}" if root.parent.name else root.name


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fingerprint(entries: list[tuple[str, str]], spec: PreprocessSpec) -> str:
    """sha256 over sorted (relative path, content sha256) pairs and the preprocessing spec."""
    digest = hashlib.sha256()
    for rel, sha in sorted(entries):
        digest.update(f"{rel}\t{sha}\n".encode())
    digest.update(repr(sorted(spec.to_dict().items())).encode())
    return digest.hexdigest()


@dataclass
class LabelledImages:
    """Preprocessed uint8 images (N x S x S x 3) with integer labels indexing `labels`."""

    images: np.ndarray
    y: np.ndarray
    labels: list[str]
    files: list[Path]
    split: str
    fingerprint: str
    skipped: list[str] = field(default_factory=list)  # "file: reason" for unreadable images

    def __len__(self) -> int:
        return len(self.y)


def load_images(
    files: list[tuple[Path, int]], spec: PreprocessSpec, labels: list[str], root: Path, desc: str
) -> LabelledImages:
    """Preprocess (file, label index) pairs with a progress bar; unreadable files are skipped and listed."""
    from tqdm import tqdm

    xs, ys, kept, skipped, entries = [], [], [], [], []
    for path, label in tqdm(files, desc=desc, unit="img", leave=False, disable=None):
        try:
            xs.append(preprocess_file(path, spec))
        except ImageLoadError as exc:
            skipped.append(str(exc))
            print(f"warning: skipped {exc}", file=sys.stderr)
            continue
        ys.append(label)
        kept.append(path)
        entries.append((str(path.relative_to(root)), file_sha256(path)))
    if not xs:
        raise DataError(f"{root}: none of the {len(files)} images could be read")
    return LabelledImages(
        images=np.stack(xs),
        y=np.asarray(ys, dtype=np.int64),
        labels=list(labels),
        files=kept,
        split=split_name(root),
        fingerprint=fingerprint(entries, spec),
        skipped=skipped,
    )


def load_labelled(root: str | os.PathLike, spec: PreprocessSpec, labels: list[str]) -> LabelledImages:
    """Every image of a labelled folder (an evaluation split), in the model's label order."""
    root = Path(root)
    classes = scan_classes(root)
    check_classes(list(classes), labels, root, exact=False)
    pairs = [(f, labels.index(name)) for name, files in classes.items() for f in files]
    return load_images(pairs, spec, labels, root, desc=f"load {split_name(root)}")
