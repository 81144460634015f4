"""Training augmentation with albumentations, each transform with a probability; training split only.

- `seed`: seed 000's list, applied to the preprocessed uint8 images (the model input), so augmented
  views never leave the value range the device produces.
- `stain`: seed 000's geometry plus what changes between microscopes and labs (stain, lamp, camera,
  optics, magnification, compression), applied to the image *before* colour standardisation and
  CLAHE; each view is then finished by the device's own `edge.preprocess`. A model that learned the
  lab's colour or magnification instead of the cell sees every lab's look on every class.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np

from edge.preprocess import PreprocessSpec, preprocess
from edge.progress import progress

Augment = Literal["seed", "stain", "none"]
# Magnification: a cell from another microscope fills anywhere from ~0.3 to ~0.8 of its image's side
# (tecom-wbc ~0.75, pbc-8class ~0.45, blood-5class's myeloblasts ~0.58; docs/differential.md), so views
# are zoomed out and in, far enough that a cell's share of the image says nothing about its class.
# With 0.6-1.6 a first model still called tecom-wbc's large lymphocytes myeloblasts (docs/differential.md).
SCALE_RANGE = (0.5, 2.0)


def raw_spec(spec: PreprocessSpec) -> PreprocessSpec:
    """The same square and resize, without colour standardisation and contrast: what `stain`
    augments before `finish` applies the rest of `spec`."""
    return spec.replace(color="none", white_reference=None, contrast="none")


def finish(raw_rgb: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """An augmented raw view (RGB, spec.size square) -> model input, through the device's preprocess
    (the resize is a no-op at this size; colour standardisation and CLAHE run as on the device)."""
    return preprocess(raw_rgb, spec, order="RGB")


def _geometry(size: int, border: int):
    import albumentations as A

    rotations = A.OneOf(
        [A.Rotate(limit=(a, a), border_mode=border, p=1.0) for a in (-45, -30, -15, 15, 30, 45)]
        + [A.RandomRotate90(p=1.0)],
        p=0.5,
    )
    return [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), rotations]


def build_stain_augmenter(size: int, seed: int):
    """Geometry (flips, rotations), magnification 0.5-2x, then stain (haematoxylin/eosin amounts in
    stain space, hue/saturation), lamp and camera (colour temperature, per-channel gain, gamma,
    brightness/contrast), optics (defocus, blur, a low-resolution camera), sensor noise and JPEG quality."""
    import albumentations as A
    import cv2

    border = cv2.BORDER_REFLECT_101
    return A.Compose(
        [
            *_geometry(size, border),
            # keep_ratio: one zoom for both axes (independent ones squash a round cell into an oval)
            A.Affine(scale=SCALE_RANGE, keep_ratio=True, balanced_scale=True, border_mode=border, p=0.8),
            A.ElasticTransform(alpha=30, sigma=5, border_mode=border, p=0.1),
            # Stain: the amount of each dye, in haematoxylin-eosin space (Ruifrok-style presets).
            # Stronger settings turn cells red or black, which no lab's smear looks like.
            A.HEStain(
                method="random_preset",
                intensity_scale_range=(0.8, 1.2),
                intensity_shift_range=(-0.1, 0.1),
                p=0.4,
            ),
            A.HueSaturationValue(hue_shift_limit=12, sat_shift_limit=35, val_shift_limit=15, p=0.6),
            # Lamp and camera: colour temperature, one gain per channel (a background tint), gamma.
            A.PlanckianJitter(mode="blackbody", p=0.4),
            A.MultiplicativeNoise(multiplier=(0.85, 1.15), per_channel=True, elementwise=False, p=0.5),
            A.RandomGamma(gamma_limit=(75, 140), p=0.4),
            A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.25, p=0.5),
            # Optics: focus and resolution.
            A.OneOf(
                [
                    A.Defocus(radius=(1, 3), alias_blur=(0.1, 0.3), p=1.0),
                    A.GaussianBlur(sigma_limit=(0.5, 1.5), blur_limit=0, p=1.0),
                    # a camera of a third to four fifths of the resolution (tecom-wbc's cells are 120 px)
                    A.Downscale(
                        scale_range=(0.35, 0.8),
                        interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_LINEAR},
                        p=1.0,
                    ),
                ],
                p=0.4,
            ),
            A.GaussNoise(std_range=(0.01, 0.04), p=0.2),
            A.ImageCompression(quality_range=(40, 95), p=0.3),
        ],
        seed=seed,
    )


def build_augmenter(size: int, seed: int):
    """albumentations pipeline: flips, rotations 15/30/45/90 deg, colour channels +-10 %, sharpness
    1.5, contrast 0.8-1.2, Gaussian blur sigma 0.5-1.5, Gaussian noise sigma 0.01-0.05, random crop
    80-100 % of the side, elastic deformation (alpha 30, sigma 5)."""
    import albumentations as A
    import cv2

    # Reflect, not black: black corners would be a cue the device images never have.
    border = cv2.BORDER_REFLECT_101
    return A.Compose(
        [
            *_geometry(size, border),
            # "crop of 80-100 %" of the side -> 64-100 % of the area, square, resized back.
            A.RandomResizedCrop(size=(size, size), scale=(0.64, 1.0), ratio=(1.0, 1.0), p=0.5),
            A.ElasticTransform(alpha=30, sigma=5, border_mode=border, p=0.2),
            # Colour channels +-10 %: one gain per channel for the whole image.
            A.MultiplicativeNoise(multiplier=(0.9, 1.1), per_channel=True, elementwise=False, p=0.5),
            # PIL ImageEnhance.Sharpness(1.5) blends 50 % of a sharpened image in.
            A.Sharpen(alpha=(0.5, 0.5), lightness=(1.0, 1.0), p=0.2),
            A.RandomBrightnessContrast(brightness_limit=0.0, contrast_limit=(-0.2, 0.2), p=0.5),
            A.GaussianBlur(sigma_limit=(0.5, 1.5), blur_limit=0, p=0.2),
            A.GaussNoise(std_range=(0.01, 0.05), p=0.2),
        ],
        seed=seed,
    )


def augmented_views(
    images: np.ndarray,
    n_views: int,
    seed: int,
    desc: str = "augment",
    kind: str = "seed",
    raw: np.ndarray | None = None,
    spec: PreprocessSpec | None = None,
):
    """Yield (view, batch of model inputs) for view 1..n_views-1; view 0 is the unaugmented image.

    `kind` "stain" augments `raw` (the images through `raw_spec(spec)`) and finishes each view with
    `spec`; "seed" augments `images` themselves."""
    if kind == "stain":
        if raw is None or spec is None:
            raise ValueError("stain augmentation needs the raw images and the preprocess spec")
        aug = build_stain_augmenter(images.shape[1], seed)
    else:
        aug = build_augmenter(images.shape[1], seed)
    for view in range(1, n_views):
        out = np.empty_like(images)
        for i in progress(range(len(images)), desc=f"{desc} view {view}/{n_views - 1}", leave=False):
            if kind == "stain":
                out[i] = finish(aug(image=raw[i])["image"], spec)
            else:
                out[i] = aug(image=images[i])["image"]
        yield view, out


def throughput(images: np.ndarray, seed: int = 0, repeats: int = 1) -> float:
    """Images per second of the augmentation pipeline on one core (for scripts/bench_augment.py)."""
    aug = build_augmenter(images.shape[1], seed)
    start = time.perf_counter()
    n = 0
    for _ in range(repeats):
        for img in images:
            aug(image=img)
            n += 1
    return n / (time.perf_counter() - start)
