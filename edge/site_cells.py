"""A site's labelled cells, wherever they come from, cut at any scale: what `edge adapt` fits on.

Two forms: a folder of single-cell images (SITE_DIR/<class>/<image>), or whole fields with one
labelled white cell each (`--frames DIR --labels CSV`, `frame,label`), whose cell the detector finds
and whose red cells give the microscope's scale. Either way a cell is an image and a View (where the
cell is), so it can be preprocessed at every candidate scale the calibration tries.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edge.bundle import Bundle
from edge.dataset import ImageSet
from edge.detect.crop import crop_cell
from edge.detect.spec import WBC
from edge.errors import DataError, ImageLoadError
from edge.hashing import fingerprint, sha256_file
from edge.image_files import images_in
from edge.imagefile import load_image, to_bgr8
from edge.preprocess import View, preprocess
from edge.progress import progress
from edge.scale import Scale, measure

log = logging.getLogger(__name__)


@dataclass
class SiteCells:
    """Decoded site cells (8-bit BGR images and where their cell is) with labels."""

    images: list[np.ndarray]
    views: list[View]
    y: np.ndarray
    names: list[str]  # file (and frame) names, for messages and the fingerprint
    split: str  # what the record calls the data
    fingerprint: str
    skipped: list[tuple[str, str]]
    white_cells: list | None = None  # frames: each frame's white-cell boxes (red cells are the rest)
    crop_rule: object | None = None  # frames: the detector's crop rule, for bundles of version 1

    def __len__(self) -> int:
        return len(self.y)

    def measured_scale(self) -> Scale | None:
        """The microscope's scale from the red cells of these images."""
        if self.white_cells is not None:
            return measure(zip(self.images, self.white_cells, strict=True))
        return measure(self.images)

    def inputs(self, bundle: Bundle, rbc_px: float | None) -> np.ndarray:
        """Every cell preprocessed for `bundle` at `rbc_px` (None: as its View says)."""
        return np.concatenate(list(self.batches(bundle, rbc_px, len(self) or 1)))

    def batches(self, bundle: Bundle, rbc_px: float | None, size: int = 16):
        """The cells preprocessed as `inputs`, `size` at a time (so the caller can show progress)."""
        spec = bundle.preprocess_spec
        if spec.version == 1 and self.white_cells is not None:  # version 1 sees the crop rule's square
            for start in range(0, len(self.images), size):
                pairs = zip(
                    self.images[start : start + size], self.white_cells[start : start + size], strict=True
                )
                yield np.stack(
                    [preprocess(crop_cell(img, box[0], self.crop_rule)[0], spec) for img, box in pairs]
                )
            return
        views = self.views if rbc_px is None else [replace(v, rbc_px=rbc_px) for v in self.views]
        for start in range(0, len(self.images), size):
            pairs = zip(self.images[start : start + size], views[start : start + size], strict=True)
            yield np.stack([preprocess(img, spec, view=v) for img, v in pairs])

    def subset(self, index) -> SiteCells:
        index = [int(i) for i in index]
        pick = lambda items: None if items is None else [items[i] for i in index]  # noqa: E731
        return replace(
            self,
            images=pick(self.images),
            views=pick(self.views),
            y=self.y[index],
            names=pick(self.names),
            white_cells=pick(self.white_cells),
        )


def from_folder(site: ImageSet) -> SiteCells:
    """Single-cell images; an unreadable one is named and left out."""
    images, keep, skipped = [], [], []
    files = progress(site.files, desc="reading the site's cells", note=False, leave=False)
    for i, path in enumerate(files):
        try:
            images.append(to_bgr8(load_image(path)))
            keep.append(i)
        except (ImageLoadError, ValueError) as exc:
            skipped.append((str(path), getattr(exc, "reason", str(exc))))
            log.warning(f"skipped: {path}: {skipped[-1][1]}")
    kept = site.subset(keep)
    return SiteCells(
        images,
        [View()] * len(images),
        kept.targets,
        [str(p) for p in kept.files],
        kept.split,
        kept.fingerprint(),
        skipped,
    )


def read_labels(csv_path: Path, labels: list[str], aliases: dict[str, str]) -> list[tuple[str, int]]:
    """(frame stem, label index) rows of a `frame,label` CSV; a label the bundle lacks is an error."""
    try:
        rows = list(csv.DictReader(Path(csv_path).open(newline="")))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{csv_path}: cannot read the labels ({exc})") from None
    if not rows or not {"frame", "label"} <= set(rows[0]):
        raise DataError(f"{csv_path}: expected a header 'frame,label' and one row per labelled frame")
    known = {name.lower(): i for i, name in enumerate(labels)}
    out = []
    for n, row in enumerate(rows, start=2):
        name = aliases.get(row["label"].strip(), row["label"].strip()).lower()
        if name not in known:
            raise DataError(
                f"{csv_path}:{n}: label {row['label']!r} is not a class of the bundle ({', '.join(labels)})"
            )
        out.append((Path(row["frame"].strip()).stem, known[name]))
    return out


def from_frames(
    frames_dir: Path, csv_path: Path, detector, labels: list[str], aliases: dict[str, str]
) -> SiteCells:
    """Whole fields with one labelled white cell each: the detector's most confident white cell is the
    labelled one (a frame with none is named and left out)."""
    rows = read_labels(csv_path, labels, aliases)
    by_stem = {p.stem: p for p in images_in(Path(frames_dir))}
    images, views, y, names, boxes, skipped, entries = [], [], [], [], [], [], []
    for stem, label in progress(
        rows, desc="finding the labelled cells in the fields", note=False, leave=False
    ):
        path = by_stem.get(stem)
        if path is None:
            skipped.append((stem, f"no image {stem}.* in {frames_dir}"))
            continue
        try:
            frame = to_bgr8(load_image(path))
        except (ImageLoadError, ValueError) as exc:
            skipped.append((str(path), getattr(exc, "reason", str(exc))))
            continue
        found, _ = detector.detect(frame)
        cells = sorted((d for d in found if d.kind == WBC), key=lambda d: -d.score)
        if not cells:
            skipped.append((str(path), "the detector found no white cell"))
            continue
        bx, by, bw, bh = cells[0].box
        images.append(frame)
        views.append(View(centre=(bx + bw / 2, by + bh / 2)))
        y.append(label)
        names.append(str(path))
        boxes.append([d.int_box() for d in cells])
        entries.append((labels[label], path.name, sha256_file(path)))
    for what, why in skipped:
        log.warning(f"skipped: {what}: {why}")
    if not images:
        raise DataError(f"{frames_dir}: no labelled frame with a white cell the detector found")
    return SiteCells(
        images,
        views,
        np.array(y, np.int64),
        names,
        f"{Path(frames_dir).name} (frames)",
        fingerprint(entries),
        skipped,
        boxes,
        detector.spec.crop,
    )
