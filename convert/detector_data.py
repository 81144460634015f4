"""Training data for the white-cell detector: augmented views of the annotated frames and the grid
targets of each view (convert/detector_train.py trains on them).

A view is made in three steps, on the training frames only (docs/design.md, "Honest evaluation"):

1. a region of the frame: the whole field, a zoomed-in part of it, a zoomed-out field (filled with the
   background colour, never mirrored: a mirror would show cells with no box), or a square around one
   white cell framed as the single-cell images of other microscopes frame theirs (the cell fills 30-80 %
   of the side), so the detector also finds the one cell of a pbc-8class or tecom-wbc image;
2. the device's own preprocessing (edge.preprocess: letterbox to the model's input);
3. flips, quarter turns, free rotations (boxes rotated as ellipses, which fits round cells) and colour:
   hue, saturation, brightness, contrast, gamma, per-channel gain (another stain or white balance),
   blur, noise, JPEG (albumentations).

Boxes cut by the region keep their visible part when at least MIN_VISIBLE of them is left, and are set
aside (ignored by the loss) otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.detect.crop import crop_region
from edge.detect.spec import CropRule
from edge.detect.voc import VocFrame
from edge.preprocess import PreprocessSpec, input_geometry, preprocess

MIN_VISIBLE = 0.45
# region kinds and their probabilities
VIEW_KINDS = {"field": 0.35, "zoom_in": 0.2, "zoom_out": 0.15, "single_cell": 0.3}
_FILL_RULE = CropRule(border="constant")


@dataclass
class View:
    image: np.ndarray  # the model input, uint8 RGB size x size
    boxes: np.ndarray  # K x 4 white cells, x0 y0 x1 y1 in input pixels
    ignore: np.ndarray  # M x 4 boxes the loss leaves alone


def frame_boxes(frame: VocFrame, kind: str = "wbc") -> tuple[np.ndarray, np.ndarray]:
    def arr(boxes):
        return np.array([[b.x0, b.y0, b.x1, b.y1] for b in boxes], np.float64).reshape(-1, 4)

    return arr(frame.of(kind)), arr(frame.of(kind, ignored=True))


def _region(shape, boxes: np.ndarray, rng: np.random.Generator) -> tuple[float, float, float, float]:
    h, w = shape[:2]
    kinds, probs = zip(*VIEW_KINDS.items(), strict=True)
    kind = rng.choice(kinds, p=probs)
    if kind == "single_cell" and len(boxes):
        x0, y0, x1, y1 = boxes[rng.integers(len(boxes))]
        side = max(x1 - x0, y1 - y0) / rng.uniform(0.3, 0.8)
        cx = (x0 + x1) / 2 + rng.uniform(-0.08, 0.08) * side
        cy = (y0 + y1) / 2 + rng.uniform(-0.08, 0.08) * side
        return cx - side / 2, cy - side / 2, side, side
    if kind == "zoom_in":
        s, aspect = rng.uniform(0.4, 0.9), rng.uniform(0.75, 1.33)
        cw, ch = min(w, s * w * np.sqrt(aspect)), min(h, s * h / np.sqrt(aspect))
        return rng.uniform(0, w - cw), rng.uniform(0, h - ch), cw, ch
    if kind == "zoom_out":
        s = rng.uniform(1.1, 1.7)
        cw, ch = s * w, s * h
        return rng.uniform(w - cw, 0), rng.uniform(h - ch, 0), cw, ch
    return 0.0, 0.0, float(w), float(h)


def _clip(boxes: np.ndarray, region, size) -> tuple[np.ndarray, np.ndarray]:
    """Boxes shifted into the region and clipped to it: (kept, cut off too much)."""
    x, y = region[0], region[1]
    w, h = size
    shifted = boxes - np.array([x, y, x, y])
    clipped = np.stack(
        [
            np.clip(shifted[:, 0], 0, w),
            np.clip(shifted[:, 1], 0, h),
            np.clip(shifted[:, 2], 0, w),
            np.clip(shifted[:, 3], 0, h),
        ],
        axis=1,
    ).reshape(-1, 4)
    area = np.prod(shifted[:, 2:] - shifted[:, :2], axis=1)
    visible = np.prod(np.clip(clipped[:, 2:] - clipped[:, :2], 0, None), axis=1) / np.maximum(area, 1e-9)
    return clipped[visible >= MIN_VISIBLE], clipped[(visible > 0) & (visible < MIN_VISIBLE)]


def to_input(boxes: np.ndarray, shape, spec: PreprocessSpec) -> np.ndarray:
    """Boxes in an image's pixels -> the model input's pixels (the inverse of input_geometry)."""
    sx, sy, left, top = input_geometry(shape, spec)
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack(
        [(b[:, 0] - left) / sx, (b[:, 1] - top) / sy, (b[:, 2] - left) / sx, (b[:, 3] - top) / sy], 1
    )


def build_photometric(size: int, seed: int):
    """Step 3 of a view (albumentations), with the boxes (pascal_voc, labels say kept/ignored)."""
    import albumentations as A
    import cv2

    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.RandomRotate90(p=0.5),
            A.Affine(
                rotate=(-180, 180), rotate_method="ellipse", border_mode=cv2.BORDER_CONSTANT, fill=0, p=0.3
            ),
            A.HueSaturationValue(hue_shift_limit=12, sat_shift_limit=35, val_shift_limit=20, p=0.7),
            A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.2, p=0.5),
            A.RandomGamma(gamma_limit=(80, 125), p=0.3),
            # one gain per channel: another stain, white balance or lamp
            A.MultiplicativeNoise(multiplier=(0.75, 1.25), per_channel=True, elementwise=False, p=0.5),
            A.ToGray(p=0.05),
            A.GaussianBlur(sigma_limit=(0.3, 1.8), blur_limit=0, p=0.25),
            A.GaussNoise(std_range=(0.01, 0.04), p=0.2),
            A.ImageCompression(quality_range=(50, 95), p=0.25),
        ],
        bbox_params=A.BboxParams(
            format="pascal_voc", label_fields=["ignored"], min_visibility=0.3, clip=True
        ),
        seed=seed,
    )


def make_view(
    frame_bgr: np.ndarray, boxes: np.ndarray, ignore: np.ndarray, spec: PreprocessSpec, rng, photometric=None
) -> View:
    """One augmented view of a frame (photometric None: the region and the preprocessing only)."""
    region = _region(frame_bgr.shape, boxes, rng)
    fill = np.median(frame_bgr.reshape(-1, 3), axis=0)
    crop = crop_region(frame_bgr, [int(round(v)) for v in region], _FILL_RULE, fill=fill)
    kept, cut = _clip(boxes, region, (crop.shape[1], crop.shape[0]))
    ign, _ = _clip(ignore, region, (crop.shape[1], crop.shape[0]))
    ign = np.concatenate([ign, cut]).reshape(-1, 4)
    image = preprocess(crop, spec)
    kept, ign = to_input(kept, crop.shape, spec), to_input(ign, crop.shape, spec)
    if photometric is not None:
        every = np.concatenate([kept, ign]).reshape(-1, 4)
        flags = [0] * len(kept) + [1] * len(ign)
        every = np.clip(every, 0, spec.size)
        keep = (every[:, 2] - every[:, 0] >= 1) & (every[:, 3] - every[:, 1] >= 1)
        out = photometric(
            image=image, bboxes=every[keep], ignored=[f for f, k in zip(flags, keep, strict=True) if k]
        )
        image = out["image"]
        bb = np.asarray(out["bboxes"], np.float64).reshape(-1, 4)
        lab = np.asarray(out["ignored"], int)
        kept, ign = bb[lab == 0], bb[lab == 1]
    return View(np.ascontiguousarray(image), kept.reshape(-1, 4), ign.reshape(-1, 4))


def plain_view(frame_bgr: np.ndarray, frame: VocFrame, spec: PreprocessSpec) -> View:
    """The frame as the device sees it: no augmentation."""
    boxes, ignore = frame_boxes(frame)
    return View(
        preprocess(frame_bgr, spec),
        to_input(boxes, frame_bgr.shape, spec),
        to_input(ignore, frame_bgr.shape, spec),
    )


def grid_targets(view: View, size: int, stride: int) -> tuple[np.ndarray, ...]:
    """CenterNet targets on the size/stride grid: (heat G x G x 1, heat weight G x G x 1,
    box distances G x G x 4 in grid cells, box weight G x G).

    Each cell's score target is a Gaussian around its centre (sigma a sixth of its side in grid
    cells, at least 0.5), exactly 1 at the grid cell holding the centre. Box distances are learnt
    where the Gaussian is at least 0.3, weighted by it. Grid cells whose centre lies in an ignored box
    (and outside every kept one's Gaussian) carry no score loss."""
    g = size // stride
    centres = (np.arange(g) + 0.5) * stride
    heat = np.zeros((g, g), np.float32)
    owner = np.full((g, g), -1, np.int64)
    box_t = np.zeros((g, g, 4), np.float32)
    for k, (x0, y0, x1, y1) in enumerate(view.boxes):
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        sx = max(0.5, (x1 - x0) / stride / 6)
        sy = max(0.5, (y1 - y0) / stride / 6)
        gx, gy = cx / stride - 0.5, cy / stride - 0.5
        jj, ii = np.meshgrid(np.arange(g), np.arange(g))
        gauss = np.exp(-((jj - gx) ** 2) / (2 * sx * sx) - ((ii - gy) ** 2) / (2 * sy * sy))
        pi, pj = int(np.clip(np.floor(cy / stride), 0, g - 1)), int(np.clip(np.floor(cx / stride), 0, g - 1))
        gauss[pi, pj] = 1.0
        better = gauss > heat
        heat = np.where(better, gauss, heat)
        owner = np.where(better, k, owner)
    for k, (x0, y0, x1, y1) in enumerate(view.boxes):
        mask = owner == k
        cx, cy = centres[None, :], centres[:, None]
        box_t[..., 0] = np.where(mask, (cx - x0) / stride, box_t[..., 0])
        box_t[..., 1] = np.where(mask, (cy - y0) / stride, box_t[..., 1])
        box_t[..., 2] = np.where(mask, (x1 - cx) / stride, box_t[..., 2])
        box_t[..., 3] = np.where(mask, (y1 - cy) / stride, box_t[..., 3])
    box_w = np.where((heat >= 0.3) & (box_t.min(axis=-1) > 0), heat, 0.0).astype(np.float32)
    heat_w = np.ones((g, g), np.float32)
    for x0, y0, x1, y1 in view.ignore:
        inside = (
            (centres[None, :] >= x0)
            & (centres[None, :] <= x1)
            & (centres[:, None] >= y0)
            & (centres[:, None] <= y1)
        )
        heat_w = np.where(inside & (heat < 0.3), 0.0, heat_w)
    f32 = np.float32
    return heat[..., None].astype(f32), heat_w[..., None].astype(f32), box_t.astype(f32), box_w.astype(f32)
