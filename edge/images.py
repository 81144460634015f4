"""Which files a command works on: images named directly, and folders searched recursively."""

from __future__ import annotations

import os
import re
from pathlib import Path

from edge.errors import DataError
from edge.preprocess import IMAGE_SUFFIXES


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def images_in(folder: Path) -> list[Path]:
    """Image files under `folder`, recursively, sorted; hidden files and folders are skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append(Path(dirpath) / name)
    return found


def expand_paths(paths) -> list[Path]:
    """Files and folders -> image files, in the order given, each file once.

    A file named directly is kept whatever its suffix, and so is a path that does not exist: the
    loader then reports it by name ("file not found", "not a decodable image") like any bad image.
    """
    out: list[Path] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        for item in images_in(path) if path.is_dir() else [path]:
            key = item.resolve() if item.exists() else item
            if key not in seen:
                seen.add(key)
                out.append(item)
    return out


def normalize_label(name: str) -> str:
    """Folder names match labels regardless of case, underscores, hyphens and spaces."""
    return re.sub(r"[\s_\-]+", "", name).lower()


def labelled_images(root: str | os.PathLike, labels: list[str]) -> tuple[list[Path], list[int], list[str]]:
    """LABELLED_DIR/<class>/**/image -> (paths, label indices, folder names), matching folders to `labels`.

    Raises DataError naming any folder that matches no label, or when nothing is found.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected one sub-folder per class)")
    by_key = {normalize_label(name): i for i, name in enumerate(labels)}
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not _is_hidden(p))
    unknown = [f.name for f in folders if normalize_label(f.name) not in by_key]
    if unknown:
        raise DataError(
            f"{root}: folder(s) {', '.join(unknown)} match no label of the bundle ({', '.join(labels)})"
        )
    paths, targets = [], []
    for folder in folders:
        for path in images_in(folder):
            paths.append(path)
            targets.append(by_key[normalize_label(folder.name)])
    if not paths:
        raise DataError(f"{root}: no images found in class sub-folders (expected {root}/<label>/*.jpg)")
    return paths, targets, [f.name for f in folders]
