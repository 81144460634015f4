"""The detector's frames, split honestly: val by edge.detect.voc's hash of the frame's name (never
trained or tuned on), the rest again by another salt into fit (trained on) and tune (the epoch and
the operating threshold are chosen on it); near-duplicate fields kept in one split."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.detect.spec import WBC
from edge.detect.voc import SPLIT_METHOD, VocFrame, assign_splits, near_duplicates, read_voc, split_frames
from edge.errors import DataError
from edge.hashing import fingerprint, sha256_file
from edge.preprocess import load_image, to_bgr8

TUNE_FRACTION = 0.2
TUNE_METHOD = "train frames with int(sha256('tune:' + stem)[:8], 16) % 100 < 20"


def tune_of(stem: str) -> bool:
    return int(hashlib.sha256(f"tune:{stem}".encode()).hexdigest()[:8], 16) % 100 < round(100 * TUNE_FRACTION)


@dataclass
class Splits:
    fit: list[VocFrame]
    tune: list[VocFrame]
    val: list[VocFrame]
    notes: list[str] = field(default_factory=list)

    def record(self) -> dict:
        def names(frames):
            return [f.image.name for f in frames]

        def cells(frames):
            return sum(len(f.of(WBC)) for f in frames)

        return {
            "method": SPLIT_METHOD,
            "tune_method": TUNE_METHOD,
            "fit": {"frames": len(self.fit), "wbc": cells(self.fit), "files": names(self.fit)},
            "tune": {"frames": len(self.tune), "wbc": cells(self.tune), "files": names(self.tune)},
            "val": {"frames": len(self.val), "wbc": cells(self.val), "files": names(self.val)},
            "annotation_notes": self.notes,
        }


def make_splits(voc: Path) -> Splits:
    frames = read_voc(voc)
    duplicates = near_duplicates(frames)
    assigned = assign_splits(frames, duplicates)
    train = split_frames(frames, "train", assigned)
    splits = Splits(
        [f for f in train if not tune_of(f.stem)],
        [f for f in train if tune_of(f.stem)],
        split_frames(frames, "val", assigned),
        [n for f in frames for n in f.notes]
        + [
            f"{a} and {b} show the same field (thumbnail correlation {c}): kept in one split"
            for a, b, c in duplicates
        ],
    )
    if not splits.fit or not splits.tune or not splits.val:
        raise DataError(f"{voc}: too few frames to split into fit, tune and val ({len(frames)} frames)")
    return splits


def voc_fingerprint(frames: list[VocFrame]) -> str:
    """One sha256 over every frame's image and annotation (edge.hashing.fingerprint)."""
    return fingerprint(
        (kind, f.image.name if kind == "image" else f.annotation.name, sha256_file(path))
        for f in frames
        for kind, path in (("image", f.image), ("annotation", f.annotation))
    )


def load_frames(frames: list[VocFrame]) -> list[np.ndarray]:
    """The frames' images, BGR uint8."""
    return [to_bgr8(load_image(f.image)) for f in frames]
