"""The one and only image preprocessing, shared by training and the device.

Training imports this module; the device reads the parameters from the bundle manifest
(its `preprocess` section, a `PreprocessSpec`) and calls the same `preprocess`. The output is always uint8 RGB
H x W x 3, so the model sees identical tensors on both sides (docs/design.md, "One preprocessing").
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Annotated, Literal, get_args

import cv2
import numpy as np
from pydantic import Field, field_serializer, field_validator, model_validator

from edge import cielab
from edge import preprocess_exact as exact

# re-exported for the call sites that still import them from here (moved to edge.imagefile)
from edge.imagefile import DEFAULT_MAX_PIXELS, decode_image, load_image, set_max_pixels, to_bgr8  # noqa: F401
from edge.schema import FrozenSpec

Interpolation = Literal["area", "linear", "cubic", "nearest"]
_INTERPOLATIONS = {name: getattr(cv2, f"INTER_{name.upper()}") for name in get_args(Interpolation)}

_Channel = Annotated[float, Field(ge=1.0, le=255.0)]


class PreprocessSpec(FrozenSpec):
    """Everything that decides the model input tensor. Stored verbatim in the bundle manifest and
    sealed in the model (edge/contract.py), so its serialised form (`to_dict`) never changes.

    Version 1 is the order of steps the first bundles were trained with; version 2
    (edge/preprocess_exact.py) gives the same bytes on every CPU, can cut the cell at a physical size,
    and does the per-image work at the model's resolution. A bundle keeps the version it was made with."""

    version: Literal[1, 2] = 1
    size: int = Field(default=224, ge=16, le=2048)
    # Bilinear after exact 2x area steps (`antialias`) is nearly as clean as INTER_AREA and several
    # times faster for non-integer ratios (docs/bench.md): it keeps preprocessing well under the
    # invoke() time on the device. "area" remains available.
    interpolation: Interpolation = "linear"
    antialias: bool = True
    # The seed paper "preserves the aspect ratio": we take the centred square (cells are centred
    # in single-cell images, and the daemon centres the region of interest), never stretch.
    aspect: Literal["center_crop", "pad", "stretch"] = "center_crop"
    color_order: Literal["RGB", "BGR"] = "RGB"
    # CLAHE on the L channel of LAB evens out stain and illumination without shifting hue.
    contrast: Literal["clahe", "none"] = "clahe"
    clahe_clip_limit: float = Field(default=2.0, gt=0, le=100)
    # OpenCV dies of a floating-point exception on a tile grid of 0.
    clahe_tile_grid: int = Field(default=8, ge=1, le=64)
    pad_value: int = Field(default=0, ge=0, le=255)
    # Colour standardisation before everything else (docs/differential.md): "white_balance" scales
    # each channel so the image's own background (its brightest pixels: the slide between the cells)
    # takes the colour `white_reference` (R, G, B), measured on the training images and stored in the
    # bundle. It removes the lamp's and camera's colour cast of another microscope, not the stain.
    color: Literal["none", "white_balance"] = "none"
    white_reference: tuple[_Channel, _Channel, _Channel] | None = None
    # Version 2: the model input spans this many red-cell diameters of the microscope (4.0 is about
    # 30 um), wherever the scale is known (edge.scale); None, or an unknown scale: the centred square.
    field_rbc: float | None = Field(default=None, ge=1.0, le=40.0)

    # absent means the default: specs sealed before these fields existed agree
    omitted_at_default = ("version", "color", "white_reference", "field_rbc")

    @field_validator("white_reference", mode="before")
    @classmethod
    def _three_values(cls, value):
        if isinstance(value, (list, tuple)) and len(value) != 3:
            raise ValueError("three values (R, G, B) in [1, 255]")
        return tuple(value) if isinstance(value, list) else value

    @field_validator("white_reference")
    @classmethod
    def _rounded(cls, value):
        return None if value is None else tuple(round(v, 2) for v in value)

    @field_serializer("white_reference")
    def _as_list(self, value):
        return None if value is None else list(value)

    @model_validator(mode="after")
    def _reference_with_white_balance(self):
        if (self.color == "white_balance") != (self.white_reference is not None):
            raise ValueError(
                "color white_balance and white_reference (three values in [1, 255]) go together, "
                f"not color {self.color!r} with white_reference {self.white_reference!r}"
            )
        if self.version == 1 and self.field_rbc is not None:
            raise ValueError("field_rbc needs preprocessing version 2")
        if self.version == 2:
            if self.interpolation != "linear" or not self.antialias:
                raise ValueError(
                    "version 2 resizes by exact 2x halvings and INTER_LINEAR_EXACT: "
                    "interpolation linear, antialias true"
                )
            if self.contrast == "clahe" and not exact.tile_is_exact(self.size, self.clahe_tile_grid):
                raise ValueError(
                    f"version 2 needs CLAHE tiles of a power-of-two side (exact on every CPU): size "
                    f"{self.size} / clahe_tile_grid {self.clahe_tile_grid} is not (224 / 7 = 32 is)"
                )
        return self


@dataclass(frozen=True)
class View:
    """Where the cell is and the microscope's scale, for version 2: the model input is the square of
    spec.field_rbc red-cell diameters (`rbc_px` image pixels each) around `centre` (image pixels;
    None: the image's centre). Without a scale, the centred square, as version 1. `background` is the
    slide's colour (B, G, R) when the caller measured it once for the whole frame."""

    centre: tuple[float, float] | None = None
    rbc_px: float | None = None
    background: tuple[int, int, int] | None = None

    def side(self, spec: PreprocessSpec, shape: tuple[int, ...]) -> float:
        """The window's side in image pixels."""
        if self.rbc_px and spec.field_rbc:
            return float(spec.field_rbc) * float(self.rbc_px)
        return float(min(shape[:2]))


WHOLE_IMAGE = View()


def _square(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    h, w = image.shape[:2]
    if spec.aspect == "stretch" or h == w:
        return image
    if spec.aspect == "center_crop":
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        return image[top : top + side, left : left + side]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    v = int(spec.pad_value)
    return cv2.copyMakeBorder(
        image, top, side - h - top, left, side - w - left, cv2.BORDER_CONSTANT, value=(v, v, v)
    )


# OpenCV's fixed-point resizes, which give the same bytes on 3 and 4 channels (its float cubic and area
# paths differ in the last bit: tests/test_preprocess.py).
_CHANNEL_EXACT = ("linear", "nearest")


def _resize(image: np.ndarray, spec: PreprocessSpec, channels: int = 3) -> np.ndarray:
    """Square BGR -> spec.size x spec.size, BGR or (channels 4, as a LAB strategy may ask) BGRA."""
    size = int(spec.size)
    if spec.antialias and spec.interpolation != "area":
        # Halve with exact 2x INTER_AREA (OpenCV's fast path) while the image is >= 2x the target,
        # so the final interpolation never skips pixels (no aliasing of fine granules).
        image = exact.halve_until(image, size, size)
    early = channels == 4 and spec.interpolation in _CHANNEL_EXACT
    if early:  # converting before the last resize leaves one pass fewer over the model-size image
        image = cv2.cvtColor(image, cv2.COLOR_BGR2BGRA)
    if image.shape[0] != size or image.shape[1] != size:
        image = cv2.resize(image, (size, size), interpolation=_INTERPOLATIONS[spec.interpolation])
    if channels == 4 and not early:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2BGRA)
    return image


# White balance: the background is the median colour of the brightest BACKGROUND_SHARE of the
# pixels of a thumbnail (a white-cell image is mostly slide and red cells; the nucleus is dark), and
# each channel's gain is bounded so a frame of nothing but stain cannot be turned inside out.
BACKGROUND_SHARE = 0.10
_THUMBNAIL = 96
GAIN_LIMITS = (0.6, 1.8)


def background_rgb(image_bgr: np.ndarray) -> np.ndarray:
    """The background colour (R, G, B floats) of an 8-bit BGR image, as white balance measures it."""
    h, w = image_bgr.shape[:2]
    scale = _THUMBNAIL / max(h, w)
    small = (
        cv2.resize(
            image_bgr, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
        )
        if scale < 1
        else image_bgr
    )
    pixels = small.reshape(-1, 3).astype(np.float32)
    brightness = pixels.sum(axis=1)
    bright = pixels[brightness >= np.quantile(brightness, 1.0 - BACKGROUND_SHARE)]
    return np.median(bright, axis=0)[::-1]


def white_balance(image_bgr: np.ndarray, reference_rgb) -> np.ndarray:
    """von Kries white balance: per-channel gains (one lookup table) that move the image's
    background to `reference_rgb`."""
    gains = np.clip(
        np.asarray(reference_rgb, np.float32)[::-1] / np.maximum(background_rgb(image_bgr)[::-1], 1.0),
        *GAIN_LIMITS,
    )
    table = np.clip(np.rint(np.arange(256, dtype=np.float32)[:, None] * gains[None, :]), 0, 255)
    return cv2.LUT(image_bgr, table.astype(np.uint8).reshape(256, 1, 3))


_per_thread = threading.local()


def clahe_object(clip_limit: float, grid: int) -> cv2.CLAHE:
    """One CLAHE object per thread and setting, reused: a new one allocates its buffers on first
    apply (docs/bench.md). Per thread, because apply() writes into those buffers."""
    cache = getattr(_per_thread, "clahe", None)
    if cache is None:
        cache = _per_thread.clahe = {}
    key = (clip_limit, grid)
    if key not in cache:
        cache[key] = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(grid, grid))
    return cache[key]


class CvtColorLab:
    """CLAHE on L of LAB with OpenCV's own colour conversions: the reference way, and the default.

    A preprocessing strategy is any object with this `clahe_on_l` and `channels` (3: it takes BGR,
    4: BGRA); edge.labtables.LabTables gives the same bytes faster, for the per-frame pipelines that
    build it at start-up and pass it in."""

    name = "cvtcolor"
    channels = 3

    def clahe_on_l(self, bgr: np.ndarray, clahe: cv2.CLAHE, color_order: str) -> np.ndarray:
        lab = cv2.cvtColor(bgr, cv2.COLOR_BGR2LAB)
        cv2.insertChannel(clahe.apply(cv2.extractChannel(lab, 0)), lab, 0)
        return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB if color_order == "RGB" else cv2.COLOR_LAB2BGR)


CVTCOLOR = CvtColorLab()


def preprocess(
    image: np.ndarray,
    spec: PreprocessSpec | None = None,
    order: str = "BGR",
    lab=None,
    view: View = WHOLE_IMAGE,
) -> np.ndarray:
    """Frame or decoded file -> model input: uint8, spec.size x spec.size x 3, in spec.color_order.

    Steps: 8-bit BGR -> centred square (or pad) -> colour standardisation (white balance, when the
    spec asks) -> resize (2x area steps, then bilinear) -> CLAHE on L of LAB -> colour order. `lab` is the strategy for the LAB round trip (CVTCOLOR by default;
    the same bytes whichever is passed).
    Deterministic: the same input gives the same bytes on every call and every machine with the
    same OpenCV build. CLAHE runs after the resize, so its cost does not grow with camera resolution.
    """
    spec = spec or PreprocessSpec()
    if spec.version == 2:
        raw = cut(to_bgr8(image, order), spec, view, channels=4)  # BGRA: the faster resize, same bytes
        return finish(raw, spec, view.background or (lambda: exact.background_bgr(raw)))
    square = _square(to_bgr8(image, order), spec)
    if spec.color == "white_balance":
        square = white_balance(square, spec.white_reference)
    if spec.contrast == "clahe":
        lab = lab or CVTCOLOR
        clahe = clahe_object(float(spec.clahe_clip_limit), int(spec.clahe_tile_grid))
        out = lab.clahe_on_l(_resize(square, spec, lab.channels), clahe, spec.color_order)
    else:
        bgr = _resize(square, spec)
        out = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if spec.color_order == "RGB" else bgr
    return np.ascontiguousarray(out, dtype=np.uint8)


def cut(bgr: np.ndarray, spec: PreprocessSpec, view: View, channels: int = 3) -> np.ndarray:
    """Version 2, geometry: 8-bit BGR image -> spec.size square BGR (BGRA with `channels` 4, the same
    B, G, R bytes): the view's window (beyond the image, the slide's colour), or the whole image by
    spec.aspect when the scale is unknown. Training augments this, before `finish`."""
    size = int(spec.size)
    h, w = bgr.shape[:2]
    if view.rbc_px and spec.field_rbc:
        centre = view.centre or (w / 2, h / 2)
        fill = view.background or (lambda: exact.background_bgr(bgr))  # measured only when needed
        return exact.window(bgr, centre, view.side(spec, bgr.shape), size, fill, channels)
    if spec.aspect == "stretch" or h == w:
        return exact.resize(bgr, size, size, channels)
    if spec.aspect == "center_crop":
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        return exact.resize(bgr[top : top + side, left : left + side], size, size, channels)
    side = max(h, w)  # pad: the whole image, letterboxed in pad_value
    fitted = exact.resize(bgr, max(1, w * size // side), max(1, h * size // side), channels)
    canvas = np.full((size, size, channels), int(spec.pad_value), np.uint8)
    top, left = (size - fitted.shape[0]) // 2, (size - fitted.shape[1]) // 2
    canvas[top : top + fitted.shape[0], left : left + fitted.shape[1]] = fitted
    return canvas


def finish(raw_bgr: np.ndarray, spec: PreprocessSpec, background) -> np.ndarray:
    """Version 2, colour: a spec.size square BGR (or BGRA) from `cut` -> the model input: white balance
    from the slide's colour `background` (B, G, R; the frame's, or `preprocess_exact.background_bgr` of
    the window) to the bundle's reference, CLAHE on integer LAB, colour order. `background` may be a
    function giving it: it is measured only by a bundle that white-balances."""
    channels = raw_bgr.shape[2]
    if spec.color == "white_balance":
        background = background() if callable(background) else background
        raw_bgr = cv2.LUT(raw_bgr, exact.white_balance_table(background, spec.white_reference, channels))
    if spec.contrast == "clahe":
        clahe = clahe_object(float(spec.clahe_clip_limit), int(spec.clahe_tile_grid))
        out = exact.clahe_on_l(raw_bgr, clahe, cielab.tables(), spec.color_order)
    elif channels == 4:
        out = cv2.cvtColor(raw_bgr, cv2.COLOR_BGRA2RGB if spec.color_order == "RGB" else cv2.COLOR_BGRA2BGR)
    else:
        out = cv2.cvtColor(raw_bgr, cv2.COLOR_BGR2RGB) if spec.color_order == "RGB" else raw_bgr
    return np.ascontiguousarray(out, dtype=np.uint8)


def preprocess_file(
    path: str | os.PathLike, spec: PreprocessSpec | None = None, view: View = WHOLE_IMAGE
) -> np.ndarray:
    """`load_image` + `preprocess`: the path that both training and `edge classify` take."""
    return preprocess(load_image(path), spec, view=view)


def center_region(frame: np.ndarray, fraction: float) -> np.ndarray:
    """The centred square covering `fraction` of the frame's shorter side (daemon `cell` mode)."""
    h, w = frame.shape[:2]
    side = max(1, int(round(min(h, w) * float(fraction))))
    top, left = (h - side) // 2, (w - side) // 2
    return frame[top : top + side, left : left + side]


def input_geometry(shape: tuple[int, ...], spec: PreprocessSpec) -> tuple[float, float, float, float]:
    """Where the model input lies in an image of `shape`: (sx, sy, left, top) with
    x_image = x_input * sx + left and y_image = y_input * sy + top (input pixels, 0..spec.size).

    Detectors map their boxes back with it. With `pad` (letterbox) left/top are minus the padding,
    with `center_crop` the offset of the square, with `stretch` both are 0."""
    h, w = shape[:2]
    size = float(spec.size)
    if spec.aspect == "stretch" or h == w:
        return w / size, h / size, 0.0, 0.0
    if spec.aspect == "center_crop":
        side = min(h, w)
        return side / size, side / size, float((w - side) // 2), float((h - side) // 2)
    side = max(h, w)
    return side / size, side / size, -float((side - w) // 2), -float((side - h) // 2)
