"""Synthetic stained-cell images, so every pipeline test (and the `sim` camera) is self-contained.

Five classes that differ in nucleus shape and colour, loosely after the real ones (round,
lobed, kidney-shaped, granular, small dense). Not a model of haematology, just a learnable
signal with realistic-looking nuisance: pink red cells, stain jitter, position and size noise.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

CLASSES = ("round", "lobed", "kidney", "granular", "dense")

# BGR colours: (cytoplasm, nucleus)
_STAINS = {
    "round": ((215, 180, 200), (140, 60, 90)),
    "lobed": ((200, 195, 225), (150, 70, 120)),
    "kidney": ((225, 200, 190), (160, 90, 110)),
    "granular": ((190, 150, 175), (110, 30, 70)),
    "dense": ((170, 170, 225), (90, 40, 60)),
}
_BACKGROUND = (225, 215, 235)
_RBC = (170, 160, 225)


def _jitter(color, rng, amount=18):
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in color)


def _draw_rbcs(img, rng, count):
    h, w = img.shape[:2]
    for _ in range(count):
        r = int(rng.integers(max(4, min(h, w) // 16), max(6, min(h, w) // 9)))
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.circle(img, c, r, _jitter(_RBC, rng, 12), -1, cv2.LINE_AA)
        cv2.circle(img, c, max(1, r // 2), _jitter((195, 185, 235), rng, 8), -1, cv2.LINE_AA)


def draw_cell(img, center, radius, class_name, rng):
    """Draw one white cell of `class_name` at `center` (in place)."""
    cyto, nuc = (_jitter(c, rng) for c in _STAINS[class_name])
    cx, cy = center
    cv2.circle(img, (cx, cy), radius, cyto, -1, cv2.LINE_AA)
    angle = float(rng.uniform(0, 360))
    if class_name == "round":
        cv2.circle(img, (cx, cy), int(radius * 0.72), nuc, -1, cv2.LINE_AA)
    elif class_name == "lobed":
        for k in range(int(rng.integers(3, 5))):
            a = np.deg2rad(angle + k * 95)
            p = (int(cx + radius * 0.4 * np.cos(a)), int(cy + radius * 0.4 * np.sin(a)))
            cv2.circle(img, p, int(radius * 0.24), nuc, -1, cv2.LINE_AA)
    elif class_name == "kidney":
        cv2.ellipse(
            img, (cx, cy), (int(radius * 0.62), int(radius * 0.38)), angle, 20, 340, nuc, -1, cv2.LINE_AA
        )
        a = np.deg2rad(angle)
        notch = (int(cx + radius * 0.45 * np.cos(a)), int(cy + radius * 0.45 * np.sin(a)))
        cv2.circle(img, notch, int(radius * 0.22), cyto, -1, cv2.LINE_AA)
    elif class_name == "granular":
        cv2.circle(img, (cx, cy), int(radius * 0.5), nuc, -1, cv2.LINE_AA)
        for _ in range(40):
            a, d = rng.uniform(0, 2 * np.pi), radius * np.sqrt(rng.uniform(0, 0.9))
            p = (int(cx + d * np.cos(a)), int(cy + d * np.sin(a)))
            cv2.circle(img, p, max(1, radius // 14), (70, 20, 60), -1)
    elif class_name == "dense":
        cv2.circle(img, (cx, cy), int(radius * 0.45), nuc, -1, cv2.LINE_AA)
    else:
        raise ValueError(f"unknown synthetic class {class_name!r}; choose from {CLASSES}")


def render_cell(class_name: str, rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """One single-cell image (BGR uint8, size x size), the cell near the centre."""
    img = np.full((size, size, 3), _jitter(_BACKGROUND, rng, 10), np.uint8)
    _draw_rbcs(img, rng, int(rng.integers(3, 8)))
    scale = 0.55 if class_name == "dense" else 1.0
    radius = int(size * rng.uniform(0.28, 0.34) * scale)
    shift = size // 16
    center = (
        size // 2 + int(rng.integers(-shift, shift + 1)),
        size // 2 + int(rng.integers(-shift, shift + 1)),
    )
    draw_cell(img, center, radius, class_name, rng)
    img = cv2.GaussianBlur(img, (3, 3), float(rng.uniform(0.3, 1.0)))
    noise = rng.normal(0, 3, img.shape)
    return np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def render_field(
    rng: np.random.Generator,
    width: int = 640,
    height: int = 480,
    center_class: str | None = None,
    n_extra: int = 0,
) -> tuple[np.ndarray, list[tuple[str, tuple[int, int, int, int]]]]:
    """A microscope field (BGR): red cells, one white cell centred (if `center_class`), `n_extra` elsewhere.

    Returns the frame and the ground truth as (class, (x, y, w, h)) boxes.
    """
    img = np.full((height, width, 3), _jitter(_BACKGROUND, rng, 8), np.uint8)
    _draw_rbcs(img, rng, int(width * height / 6000))
    truth = []
    cells = [(center_class, (width // 2, height // 2))] if center_class else []
    for _ in range(n_extra):
        cells.append(
            (
                CLASSES[int(rng.integers(len(CLASSES)))],
                (int(rng.integers(60, width - 60)), int(rng.integers(60, height - 60))),
            )
        )
    for name, (cx, cy) in cells:
        radius = int(min(width, height) * rng.uniform(0.12, 0.15) * (0.55 if name == "dense" else 1.0))
        draw_cell(img, (cx, cy), radius, name, rng)
        truth.append((name, (cx - radius, cy - radius, 2 * radius, 2 * radius)))
    img = cv2.GaussianBlur(img, (3, 3), 0.8)
    return img, truth


def make_dataset(
    root: str | os.PathLike,
    per_class: int = 20,
    classes: tuple[str, ...] = CLASSES,
    size: int = 128,
    seed: int = 0,
    ext: str = ".jpg",
) -> Path:
    """Write `per_class` images per class into root/<class>/<class>_NNN.jpg; returns root."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for name in classes:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            cv2.imwrite(str(folder / f"{name}_{i:03d}{ext}"), render_cell(name, rng, size))
    return root


def write_voc_annotation(path, image_name: str, width: int, height: int, boxes) -> None:
    """A Pascal VOC XML file for `boxes`: (class name, (x, y, w, h)) in pixels, written as WBC/RBC/..."""
    import xml.etree.ElementTree as ET

    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = image_name
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    for name, (x, y, w, h) in boxes:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "difficult").text = "0"
        bb = ET.SubElement(obj, "bndbox")
        # VOC corners are 1-based and inclusive (edge/detect/voc.py reads them back)
        for tag, value in (("xmin", x + 1), ("ymin", y + 1), ("xmax", x + w), ("ymax", y + h)):
            ET.SubElement(bb, tag).text = str(int(round(value)))
    ET.ElementTree(root).write(str(path))


def make_voc_dataset(
    root: str | os.PathLike,
    frames: int = 40,
    seed: int = 0,
    width: int = 640,
    height: int = 480,
    max_cells: int = 3,
    empty_every: int = 5,
) -> Path:
    """Synthetic microscope fields (render_field) with their white cells as VOC boxes, in
    root/JPEGImages and root/Annotations: every `empty_every`-th frame holds red cells only."""
    root = Path(root)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(frames):
        n = 0 if empty_every and i % empty_every == empty_every - 1 else int(rng.integers(1, max_cells + 1))
        image, truth = render_field(rng, width, height, center_class=None, n_extra=n)
        name = f"field_{i:04d}.jpg"
        cv2.imwrite(str(root / "JPEGImages" / name), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
        write_voc_annotation(
            root / "Annotations" / f"field_{i:04d}.xml",
            name,
            width,
            height,
            [("WBC", box) for _, box in truth],
        )
    return root
