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


def _stain_and_optics():
    """What differs between labs and microscopes once the cell is cut: stain (haematoxylin/eosin
    amounts in stain space, hue/saturation), lamp and camera (colour temperature, per-channel gain,
    gamma, brightness/contrast), optics (defocus, blur, a low-resolution camera), noise, JPEG."""
    import albumentations as A
    import cv2

    return [
        # Stronger stain settings turn cells red or black, which no lab's smear looks like.
        A.HEStain(
            method="random_preset", intensity_scale_range=(0.8, 1.2), intensity_shift_range=(-0.1, 0.1), p=0.4
        ),
        A.HueSaturationValue(hue_shift_limit=12, sat_shift_limit=35, val_shift_limit=15, p=0.6),
        A.PlanckianJitter(mode="blackbody", p=0.4),
        A.MultiplicativeNoise(multiplier=(0.85, 1.15), per_channel=True, elementwise=False, p=0.5),
        A.RandomGamma(gamma_limit=(75, 140), p=0.4),
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.25, p=0.5),
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
    ]


def build_stain_augmenter(size: int, seed: int):
    """Version 1: geometry (flips, rotations), magnification 0.5-2x, then `_stain_and_optics`."""
    import albumentations as A
    import cv2

    border = cv2.BORDER_REFLECT_101
    return A.Compose(
        [
            *_geometry(size, border),
            # keep_ratio: one zoom for both axes (independent ones squash a round cell into an oval)
            A.Affine(scale=SCALE_RANGE, keep_ratio=True, balanced_scale=True, border_mode=border, p=0.8),
            A.ElasticTransform(alpha=30, sigma=5, border_mode=border, p=0.1),
            *_stain_and_optics(),
        ],
        seed=seed,
    )


# Version 2 knows each microscope's scale, so magnification varies only as much as a scale measured
# from red cells does (+-15 %, docs/differential.md); the centre moves as a detector's box centre
# does; and a third of the views keep only a tight square around the cell with the slide's colour
# around it, as single-cell images from other microscopes come (tecom-wbc's are 120 px).
PHYSICAL_SCALE = (0.85, 1.18)
PHYSICAL_SHIFT = 0.04
TIGHT = (0.3, (0.45, 0.85))  # probability, kept fraction of the window's side


def build_physical_augmenter(seed: int):
    """Version 2: lossless geometry (flips, quarter turns: no corners to invent), then
    `_stain_and_optics` on the cut window."""
    import albumentations as A

    return A.Compose(
        [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5), *_stain_and_optics()],
        seed=seed,
    )


def physical_view(image_bgr, view, spec: PreprocessSpec, aug, rng: np.random.Generator) -> np.ndarray:
    """One augmented version-2 model input: the window jittered in scale and centre, sometimes
    tightened, stain and optics changed, then `edge.preprocess.finish` as on the device."""
    from edge.preprocess import View, cut, finish
    from edge.preprocess_exact import background_bgr

    h, w = image_bgr.shape[:2]
    centre = view.centre or (w / 2, h / 2)
    jitter = float(np.exp(rng.uniform(*np.log(PHYSICAL_SCALE))))
    rbc = view.rbc_px * jitter if view.rbc_px else None
    side = view.side(spec, image_bgr.shape) * jitter
    moved = (
        centre[0] + rng.uniform(-1, 1) * PHYSICAL_SHIFT * side,
        centre[1] + rng.uniform(-1, 1) * PHYSICAL_SHIFT * side,
    )
    raw = cut(image_bgr, spec, View(centre=moved, rbc_px=rbc, background=view.background))
    if rng.random() < TIGHT[0]:
        keep = int(round(raw.shape[0] * rng.uniform(*TIGHT[1])))
        start = (raw.shape[0] - keep) // 2
        tight = np.empty_like(raw)
        tight[:] = view.background or background_bgr(image_bgr)
        tight[start : start + keep, start : start + keep] = raw[start : start + keep, start : start + keep]
        raw = tight
    raw = np.ascontiguousarray(aug(image=raw[..., ::-1])["image"][..., ::-1])  # albumentations: RGB
    return finish(raw, spec, lambda: background_bgr(raw))


def physical_views(files, views, spec: PreprocessSpec, n_views: int, seed: int, desc: str, workers: int = 2):
    """Yield (view, batch) for view 1..n_views-1: each file decoded again and cut afresh. Worker k takes
    files k, k + workers, ... with an augmenter of its own, so a run is repeatable."""
    from concurrent.futures import ThreadPoolExecutor

    from edge.imagefile import load_image, to_bgr8

    size = int(spec.size)

    def share(v: int, k: int, out: np.ndarray, bar) -> None:
        aug = build_physical_augmenter(seed * 1000 + v * 10 + k)
        for i in range(k, len(files), workers):
            rng = np.random.default_rng([seed, v, i])
            out[i] = physical_view(to_bgr8(load_image(files[i])), views[i], spec, aug, rng)
            bar.update(1)

    for v in range(1, n_views):
        out = np.empty((len(files), size, size, 3), np.uint8)
        with progress(total=len(files), desc=f"{desc} view {v}/{n_views - 1}", leave=False) as bar:
            with ThreadPoolExecutor(workers) as pool:
                for done in [pool.submit(share, v, k, out, bar) for k in range(workers)]:
                    done.result()
        yield v, out


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

    `kind` "stain" augments `raw` (convert.pipeline.Raw: the images through `raw_spec(spec)`, or for
    version 2 the files and their views) and finishes each view with `spec`; "seed" augments
    `images` themselves."""
    if kind == "stain":
        if raw is None or spec is None:
            raise ValueError("stain augmentation needs the raw images and the preprocess spec")
        if getattr(raw, "files", None) is not None:  # version 2: every view cut afresh from its file
            yield from physical_views(raw.files, raw.views, spec, n_views, seed, desc)
            return
        aug = build_stain_augmenter(images.shape[1], seed)
        raw_images = raw if isinstance(raw, np.ndarray) else raw.images
    else:
        aug = build_augmenter(images.shape[1], seed)
    for view in range(1, n_views):
        out = np.empty_like(images)
        for i in progress(range(len(images)), desc=f"{desc} view {view}/{n_views - 1}", leave=False):
            if kind == "stain":
                out[i] = finish(aug(image=raw_images[i])["image"], spec)
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
