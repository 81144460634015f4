"""Seed 000's augmentation list with albumentations, each transform with a probability.

Applied after the split, to the training split only, on the preprocessed uint8 images (the model
input), so augmented views never leave the value range the device produces.
"""

from __future__ import annotations

import time

import numpy as np

AUGMENTS = ("seed", "none")


def build_augmenter(size: int, seed: int):
    """albumentations pipeline: flips, rotations 15/30/45/90 deg, colour channels +-10 %, sharpness
    1.5, contrast 0.8-1.2, Gaussian blur sigma 0.5-1.5, Gaussian noise sigma 0.01-0.05, random crop
    80-100 % of the side, elastic deformation (alpha 30, sigma 5)."""
    import albumentations as A
    import cv2

    # Reflect, not black: black corners would be a cue the device images never have.
    border = cv2.BORDER_REFLECT_101
    rotations = A.OneOf(
        [A.Rotate(limit=(a, a), border_mode=border, p=1.0) for a in (-45, -30, -15, 15, 30, 45)]
        + [A.RandomRotate90(p=1.0)],
        p=0.5,
    )
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            rotations,
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


def augmented_views(images: np.ndarray, n_views: int, seed: int, desc: str = "augment"):
    """Yield (view, batch of images) for view 1..n_views-1; view 0 is the unaugmented image itself."""
    from convert.progress import progress

    aug = build_augmenter(images.shape[1], seed)
    for view in range(1, n_views):
        out = np.empty_like(images)
        for i in progress(range(len(images)), desc=f"{desc} view {view}/{n_views - 1}", leave=False):
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
