"""The one data layer: which image files a folder holds, which class each belongs to, their hashes,
and loading them through `edge.preprocess`.

Every command that reads images from folders (`edge classify`, `eval`, `train`, `quantize --calib/
--eval`, `adapt`) goes through `scan_labelled` or the one folder scanner (edge/image_files.py:
hidden entries skipped, links followed only inside the folder, each real file once), so they all
see the same images. Class folder names match labels regardless of case, underscores, hyphens and
spaces (`Seg-Neutrophil` = `seg_neutrophil`), after an optional class map (`seg_neutrophil=neutrophil`).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.errors import DataError, ImageLoadError
from edge.hashing import FINGERPRINT_METHOD, fingerprint, sha256_file
from edge.image_files import (  # noqa: F401 - the scanner's names, re-exported: the data layer's own
    IMAGE_SUFFIXES,
    expand_paths,
    files_in,
    images_in,
    is_image_name,
    printable,
    subfolders,
)
from edge.imagefile import load_image
from edge.preprocess import WHOLE_IMAGE, PreprocessSpec, View, preprocess

log = logging.getLogger(__name__)


def normalize_label(name: str) -> str:
    """Folder names match labels regardless of case, underscores, hyphens and spaces."""
    return re.sub(r"[\s_\-]+", "", name).lower()


def parse_class_map(pairs: Iterable[str]) -> dict[str, str]:
    """["seg_neutrophil=neutrophil", ...] -> {normalized folder name: label}."""
    out = {}
    for pair in pairs:
        folder, sep, label = pair.partition("=")
        if not sep or not folder.strip() or not label.strip():
            raise DataError(f"--map {pair!r}: expected FOLDER=LABEL, e.g. seg_neutrophil=neutrophil")
        out[normalize_label(folder)] = label.strip()
    return out


def split_name(root: str | os.PathLike) -> str:
    """`…/blood-5class/val` -> `blood-5class/val`: what every metric records as its split."""
    root = Path(root).resolve()
    return f"{root.parent.name}/{root.name}" if root.parent.name else root.name


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    label: int  # index into the set's labels; -1: a folder the labels do not know (kept on request)
    folder: str  # the class folder's own name
    source: str  # the root folder it was found under

    def relative(self) -> str:
        """Path relative to its class folder, as the fingerprint records it."""
        return self.path.relative_to(Path(self.source) / self.folder).as_posix()


@dataclass
class ImageSet:
    """Labelled images from one or more class-folder roots."""

    labels: list[str]
    items: list[LabelledImage]
    roots: list[Path]
    ignored: list[Path] = field(default_factory=list)  # non-image files, warned about
    unknown_folders: list[str] = field(
        default_factory=list
    )  # kept with label -1 (eval's "should be rejected")
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (kept, dropped): same bytes, same label
    conflicts: list[tuple[str, ...]] = field(
        default_factory=list
    )  # same bytes, different labels: all dropped
    _hashes: dict[Path, str] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def files(self) -> list[Path]:
        return [i.path for i in self.items]

    @property
    def targets(self) -> np.ndarray:
        return np.array([i.label for i in self.items], dtype=np.int64)

    @property
    def split(self) -> str:
        return " + ".join(split_name(r) for r in self.roots)

    def counts(self) -> dict[str, int]:
        targets = self.targets
        return {name: int((targets == i).sum()) for i, name in enumerate(self.labels)}

    def subset(self, index) -> ImageSet:
        items = [self.items[i] for i in np.asarray(index, int)]
        return ImageSet(
            self.labels,
            items,
            self.roots,
            [],
            self.unknown_folders,
            self.duplicates,
            self.conflicts,
            self._hashes,
        )

    def hashes(self) -> list[str]:
        """sha256 of every file (computed once per file and kept)."""
        for item in self.items:
            if item.path not in self._hashes:
                self._hashes[item.path] = sha256_file(item.path)
        return [self._hashes[i.path] for i in self.items]

    def entries(self) -> list[tuple[str, str, str]]:
        """(label, path relative to the class folder, sha256) of every image: what a fingerprint hashes."""
        names = [self.labels[i.label] if i.label >= 0 else i.folder for i in self.items]
        return list(zip(names, (i.relative() for i in self.items), self.hashes(), strict=True))

    def fingerprint(self) -> str:
        return fingerprint(self.entries())

    def views(self, scales: dict[str, float] | None) -> list[View]:
        """Each image's View at its source root's scale (`scales`: root path -> red-cell pixels)."""
        scales = {str(Path(k)): v for k, v in (scales or {}).items()}
        return [View(rbc_px=scales.get(str(Path(i.source)))) for i in self.items]

    def sources(self) -> list[dict]:
        """What a manifest records of each root: its path, fingerprint and per-class counts."""
        out = []
        for root in self.roots:
            part = self.subset([k for k, i in enumerate(self.items) if Path(i.source) == root])
            out.append(
                {
                    "path": str(root),
                    "split": split_name(root),
                    "n": len(part),
                    "per_class": {k: v for k, v in part.counts().items() if v},
                    "fingerprint": part.fingerprint(),
                    "fingerprint_method": FINGERPRINT_METHOD,
                }
            )
        return out


def _class_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected one sub-folder per class: {root}/<class>/<image>)")
    folders = subfolders(root)  # a class folder that is a link out of the root is not part of it
    if not folders:
        raise DataError(f"{root}: no class subfolders (expected {root}/<class>/<image>)")
    return folders


def scan_labelled(
    roots: str | os.PathLike | Iterable[str | os.PathLike],
    labels: list[str] | None = None,
    class_map: dict[str, str] | None = None,
    keep_unknown: bool = False,
    dedupe: bool = False,
) -> ImageSet:
    """ROOT/<class>/**/image under each root -> an ImageSet.

    `labels` None: the labels are the (mapped) class folder names, sorted; at least two, each with
    images. With `labels` (a model's), every folder must match one (after `class_map`), unless `keep_unknown`,
    which keeps the others with label -1. `dedupe`: identical files (by sha256) are taken once; the
    same bytes under different labels are dropped altogether and reported as conflicts.
    """
    roots = [Path(roots)] if isinstance(roots, (str, os.PathLike)) else [Path(r) for r in roots]
    class_map = class_map or {}
    found: list[tuple[Path, Path, str]] = []  # (root, class folder, mapped name)
    for root in roots:
        for folder in _class_folders(root):
            found.append((root, folder, class_map.get(normalize_label(folder.name), folder.name)))
    from_folders = labels is None
    if from_folders:
        by_key: dict[str, str] = {}
        for _, _, name in found:
            by_key.setdefault(normalize_label(name), name)
        labels = sorted(by_key.values())
        if len(labels) < 2:
            raise DataError(f"{roots[0]}: only one class ({labels[0]}); need at least 2 class subfolders")
    index = {normalize_label(name): i for i, name in enumerate(labels)}
    unknown = sorted({f.name for _, f, name in found if normalize_label(name) not in index})
    if unknown and not keep_unknown:
        raise DataError(
            f"{', '.join(map(str, roots))}: folder(s) {', '.join(unknown)} match no label ({', '.join(labels)})"
        )
    items, ignored, seen = [], [], set()
    for root, folder, name in found:
        label = index.get(normalize_label(name), -1)
        for path in files_in(folder):
            real = os.path.realpath(path)
            if real in seen:  # the same file again through a link: once, under the first folder
                continue
            seen.add(real)
            if is_image_name(path.name):
                items.append(LabelledImage(path, label, folder.name, str(root)))
            else:
                ignored.append(path)
    where = ", ".join(map(str, roots))
    result = ImageSet(list(labels), items, roots, ignored, unknown)
    if from_folders:
        require_classes(result, where, "every class folder needs images")
    elif not items:
        raise DataError(f"{where}: no images found in class sub-folders (expected <class>/*.jpg)")
    return _deduplicated(result) if dedupe else result


def _deduplicated(images: ImageSet) -> ImageSet:
    by_hash: dict[str, list[int]] = {}
    for k, sha in enumerate(images.hashes()):
        by_hash.setdefault(sha, []).append(k)
    keep = []
    for group in by_hash.values():
        first = images.items[group[0]]
        if len({images.items[k].label for k in group}) > 1:
            images.conflicts.append(
                tuple(f"{images.items[k].path} ({images.items[k].folder})" for k in group)
            )
            continue
        keep.append(group[0])
        images.duplicates += [(str(first.path), str(images.items[k].path)) for k in group[1:]]
    kept = images.subset(sorted(keep))
    kept.ignored = images.ignored
    return kept


def require_classes(images: ImageSet, where, why: str) -> None:
    """Every label has at least one image (training and calibration need each class)."""
    missing = [name for name, n in images.counts().items() if n == 0]
    if missing:
        raise DataError(f"{where}: class {', '.join(map(repr, missing))} has no images ({why})")


# --- loading through edge.preprocess ------------------------------------------------------------


@dataclass
class LoadedImage:
    """One file after decode + preprocess, or the reason it could not be read."""

    path: Path
    tensor: np.ndarray | None = None
    error: str | None = None
    decode_ms: float = 0.0
    preprocess_ms: float = 0.0


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def load_one(path: Path, spec: PreprocessSpec, lab=None, view: View = WHOLE_IMAGE) -> LoadedImage:
    """Decode and preprocess one file; a bad file becomes an error naming the reason, never an exception."""
    t0 = time.perf_counter()
    try:
        image = load_image(path)
    except ImageLoadError as exc:
        return LoadedImage(path, error=exc.reason)
    except Exception as exc:  # a decoder failing in a way load_image does not foresee: still one file's error
        return LoadedImage(path, error=f"cannot decode ({type(exc).__name__}: {_first_line(exc)})")
    t1 = time.perf_counter()
    try:
        tensor = preprocess(image, spec, lab=lab, view=view)
    except Exception as exc:  # an unsupported bit depth or channel count (ValueError), cv2.error
        return LoadedImage(path, error=f"cannot preprocess ({_first_line(exc)})")
    t2 = time.perf_counter()
    return LoadedImage(path, tensor, None, (t1 - t0) * 1000, (t2 - t1) * 1000)


@dataclass
class LoadedArray:
    """images[i] (uint8, spec.size square) is files[ok[i]]; skipped lists (file, reason)."""

    images: np.ndarray
    ok: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)


def load_array(
    files: list[Path],
    spec: PreprocessSpec,
    workers: int = 2,
    progress: Callable[[int], None] | None = None,
    views: list[View] | None = None,
) -> LoadedArray:
    """Preprocess `files` (each at its `views` entry: its microscope's scale) into one uint8 array;
    unreadable files are skipped, named and listed.

    OpenCV releases the GIL while decoding and resizing, so `workers` threads use several cores.
    """
    views = views or [WHOLE_IMAGE] * len(files)
    size = int(spec.size)
    images = np.empty((len(files), size, size, 3), dtype=np.uint8)
    good = np.zeros(len(files), dtype=bool)
    skipped = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for i, loaded in enumerate(pool.map(lambda p, v: load_one(Path(p), spec, view=v), files, views)):
            if loaded.error is None:
                images[i], good[i] = loaded.tensor, True
            else:
                skipped.append((str(loaded.path), loaded.error))
                log.info(f"skipped: {loaded.path}: {loaded.error}")
            if progress is not None:
                progress(1)
    ok = np.flatnonzero(good)
    return LoadedArray(images[ok] if len(ok) < len(files) else images, ok, skipped)


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


def load_labelled(
    source: str | os.PathLike | ImageSet,
    spec: PreprocessSpec,
    labels: list[str] | None = None,
    progress: Callable[[int], None] | None = None,
    scales: dict[str, float] | None = None,
) -> LabelledImages:
    """Every readable image of a labelled folder (or ImageSet), preprocessed, in `labels` order, each
    source root at its scale in `scales` (red-cell diameter in pixels, by root path).
    The fingerprint covers the images that were read."""
    images = source if isinstance(source, ImageSet) else scan_labelled(source, labels)
    loaded = load_array(images.files, spec, progress=progress, views=images.views(scales))
    if not len(loaded.ok):
        raise DataError(f"{images.split}: none of the {len(images)} images could be read")
    kept = images.subset(loaded.ok)
    return LabelledImages(
        images=loaded.images,
        y=kept.targets,
        labels=list(images.labels),
        files=kept.files,
        split=images.split,
        fingerprint=kept.fingerprint(),
        skipped=[f"{f}: {reason}" for f, reason in loaded.skipped],
    )
