"""Pascal VOC frames (`Annotations/*.xml` + `JPEGImages/`): their boxes, the quirks of public sets,
and the train/val split that detector training records (by the hash of each frame's name, with
near-duplicate frames kept together).

Boxes become (x0, y0, x1, y1) in the image's own pixels: VOC's 1-based inclusive corners, so
x0 = xmin - 1 and x1 = xmax (BCCD's boxes then span 0..640 exactly). Known quirks of the public BCCD
annotations are repaired or set aside, each with a note naming the file (`VocFrame.notes`):

- xmin > xmax (or ymin > ymax): the corners are swapped;
- a box that reaches beyond the frame is clipped to it; one under 2 px wide or high (BloodImage_00338
  and 00343 each hold a 1 x 1 px "RBC") is dropped;
- a "WBC" box whose longer side is under MIN_WBC_SIDE of the frame's shorter side (BloodImage_00113
  holds a 31 x 27 px one: a platelet) is kept as `ignore`: a detection on it is neither a hit nor a
  false positive, and training neither rewards nor punishes it.
"""

from __future__ import annotations

import hashlib
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from edge.dataset import is_image_name
from edge.detect.evaluate import FrameTruth
from edge.errors import DataError

KINDS = {"wbc": "wbc", "rbc": "rbc", "platelets": "platelet", "platelet": "platelet"}
# The smallest white cell in BCCD's 640 x 480 fields is 96 px, a fifth of the short side; a "WBC"
# under an eighth of it is a labelling slip.
MIN_WBC_SIDE = 0.125
VAL_FRACTION = 0.2
SPLIT_METHOD = (
    "sha256 of the file stem: val when int(sha256(stem)[:8], 16) % 100 < 20, train otherwise; near-duplicate "
    "frames (64x48 grey thumbnails correlating >= 0.9) follow the first of their group by name"
)


@dataclass(frozen=True)
class Box:
    kind: str
    x0: float
    y0: float
    x1: float
    y1: float
    ignore: bool = False

    @property
    def xywh(self) -> tuple[float, float, float, float]:
        return self.x0, self.y0, self.x1 - self.x0, self.y1 - self.y0


@dataclass
class VocFrame:
    image: Path
    annotation: Path
    width: int
    height: int
    boxes: list[Box]
    notes: list[str] = field(default_factory=list)

    @property
    def stem(self) -> str:
        return self.annotation.stem

    def of(self, kind: str, ignored: bool = False) -> list[Box]:
        return [b for b in self.boxes if b.kind == kind and b.ignore == ignored]


def _kind(name: str) -> str:
    key = name.strip().lower()
    return KINDS.get(key, key)


def _number(node, tag: str, where: str) -> float:
    text = node.findtext(tag)
    try:
        return float(text)
    except (TypeError, ValueError):
        raise DataError(f"{where}: <{tag}> is {text!r}, not a number") from None


def parse_annotation(path: Path, images_dir: Path) -> VocFrame:
    """One VOC XML file -> a VocFrame; DataError (one line naming the file) when it cannot be read."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise DataError(f"{path}: not a readable VOC annotation ({exc})") from None
    name = root.findtext("filename") or f"{path.stem}.jpg"
    image = images_dir / Path(name).name
    if not image.exists():
        image = next((p for p in images_dir.glob(f"{path.stem}.*") if is_image_name(p.name)), image)
    size = root.find("size")
    if size is None:
        raise DataError(f"{path}: no <size>")
    width, height = int(_number(size, "width", str(path))), int(_number(size, "height", str(path)))
    boxes, notes = [], []
    for i, obj in enumerate(root.findall("object")):
        kind = _kind(obj.findtext("name") or "")
        bb = obj.find("bndbox")
        if bb is None:
            notes.append(f"{path.name}: object {i} ({kind}) has no box: dropped")
            continue
        xmin, ymin, xmax, ymax = (_number(bb, t, str(path)) for t in ("xmin", "ymin", "xmax", "ymax"))
        if xmin > xmax or ymin > ymax:
            notes.append(f"{path.name}: object {i} ({kind}) has min > max: corners swapped")
            xmin, xmax = sorted((xmin, xmax))
            ymin, ymax = sorted((ymin, ymax))
        x0, y0, x1, y1 = xmin - 1, ymin - 1, xmax, ymax
        clipped = max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1)
        if clipped != (x0, y0, x1, y1):
            notes.append(
                f"{path.name}: object {i} ({kind}) reaches beyond the {width}x{height} frame: clipped"
            )
        x0, y0, x1, y1 = clipped
        if x1 - x0 < 2 or y1 - y0 < 2:  # xmin == xmax: a point or a line, not a cell
            notes.append(f"{path.name}: object {i} ({kind}) is {x1 - x0:.0f}x{y1 - y0:.0f} px: dropped")
            continue
        ignore = obj.findtext("difficult", "0").strip() == "1"
        if kind == "wbc" and max(x1 - x0, y1 - y0) < MIN_WBC_SIDE * min(width, height):
            notes.append(
                f"{path.name}: object {i} (wbc) is {x1 - x0:.0f}x{y1 - y0:.0f} px, too small for a white "
                "cell: ignored (neither a hit nor a false positive)"
            )
            ignore = True
        boxes.append(Box(kind, x0, y0, x1, y1, ignore))
    return VocFrame(image, path, width, height, boxes, notes)


def read_voc(root: str | os.PathLike) -> list[VocFrame]:
    """Every annotated frame of a VOC folder (Annotations/ + JPEGImages/), sorted by name."""
    root = Path(root)
    ann, images = root / "Annotations", root / "JPEGImages"
    if not ann.is_dir():
        raise DataError(
            f"{root}: not a Pascal VOC folder (no Annotations/; expected Annotations/*.xml + JPEGImages/)"
        )
    files = sorted(p for p in ann.iterdir() if p.suffix.lower() == ".xml" and not p.name.startswith("."))
    if not files:
        raise DataError(f"{ann}: no .xml annotations")
    return [parse_annotation(p, images if images.is_dir() else root) for p in files]


def split_of(stem: str, val_fraction: float = VAL_FRACTION) -> str:
    """ "train" or "val" for a frame, from its name alone: stable when frames are added or removed."""
    return (
        "val"
        if int(hashlib.sha256(stem.encode()).hexdigest()[:8], 16) % 100 < round(100 * val_fraction)
        else "train"
    )


# Two frames whose 64 x 48 grey thumbnails correlate this well are the same field captured twice
# (BloodImage_00037 and 00038: 0.96; the next pair of BCCD's trainval part scores 0.62).
NEAR_DUPLICATE = 0.9


def near_duplicates(frames: list[VocFrame]) -> list[tuple[str, str, float]]:
    """Pairs of frames (stems) that show the same view, with their thumbnail correlation."""
    import cv2
    import numpy as np

    from edge.errors import ImageLoadError
    from edge.imagefile import load_image

    thumbs = []
    for f in frames:
        try:  # the one decoder, with its limits (a VOC folder is input like any other)
            image = load_image(f.image, cv2.IMREAD_GRAYSCALE)
        except ImageLoadError:  # reported by whoever reads the frame for real
            thumbs.append(np.zeros(64 * 48, np.float32))
            continue
        t = cv2.resize(image, (64, 48), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
        t -= t.mean()
        thumbs.append(t / max(float(np.linalg.norm(t)), 1e-6))
    corr = np.stack(thumbs) @ np.stack(thumbs).T if thumbs else np.zeros((0, 0))
    i, j = np.nonzero(np.triu(corr, 1) >= NEAR_DUPLICATE)
    return [(frames[a].stem, frames[b].stem, round(float(corr[a, b]), 3)) for a, b in zip(i, j, strict=True)]


def assign_splits(frames: list[VocFrame], duplicates=None) -> dict[str, str]:
    """stem -> "train" or "val": `split_of` each frame's name, except that near-duplicates go where
    the first of their group (by name) goes, so no field is in both splits."""
    duplicates = near_duplicates(frames) if duplicates is None else duplicates
    leader = {f.stem: f.stem for f in frames}

    def find(stem):
        while leader[stem] != stem:
            stem = leader[stem]
        return stem

    for a, b, _ in duplicates:
        ra, rb = find(a), find(b)
        leader[max(ra, rb)] = min(ra, rb)
    return {f.stem: split_of(find(f.stem)) for f in frames}


def split_frames(frames: list[VocFrame], split: str, splits: dict[str, str] | None = None) -> list[VocFrame]:
    """The frames of one split ("train", "val" or "all"); `splits` from `assign_splits` (computed
    here when not given)."""
    if split == "all":
        return list(frames)
    if split not in ("train", "val"):
        raise DataError(f"unknown split {split!r}: train, val or all")
    splits = assign_splits(frames) if splits is None else splits
    return [f for f in frames if splits[f.stem] == split]


def truth(frame: VocFrame, kind: str = "wbc"):
    """What evaluate.py scores a frame against: its boxes of `kind`, and those set aside as `ignore`."""
    import numpy as np

    def arr(boxes):
        return np.array([[b.x0, b.y0, b.x1, b.y1] for b in boxes], np.float64).reshape(-1, 4)

    return FrameTruth(arr(frame.of(kind)), arr(frame.of(kind, ignored=True)))
