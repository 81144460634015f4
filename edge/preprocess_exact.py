"""Preprocessing version 2: the same steps as version 1, each one bit-exact on every CPU, cut at a
physical size, and cheap enough to sit beside a 2.6 ms invoke().

Why each step is what it is (docs/design.md, "One preprocessing"; measured in docs/device.md):
- Resize: exact 2x INTER_AREA halvings, then INTER_LINEAR_EXACT. OpenCV's INTER_LINEAR and its
  general INTER_AREA give other bytes on arm64 than on x86-64; these two are integer arithmetic. The
  per-frame path resizes 4-channel BGRA pixels: the same B, G, R bytes (each channel is interpolated
  alone), in half the time of 3 channels, and the word the LAB lookup reads (docs/bench.md).
- White balance at the model's resolution, gains in integer fixed point, one lookup table. The
  background (the slide between the cells) is measured once per frame when the caller knows the
  frame (field mode), else on the cut window.
- CLAHE by OpenCV on tiles of a power-of-two side (224 / 7 = 32): its interpolation weights are then
  exact binary fractions, so no rounding differs between CPUs (with 28-pixel tiles, 0 of 25 images
  were identical on arm64). The LAB round trip around it is integer (edge.cielab).
- The window: `field_rbc` red-cell diameters of the microscope (edge.scale) around the cell, so a
  lymphocyte keeps a lymphocyte's size on every microscope; what lies beyond the image is filled with
  the slide's colour, never a reflection (a mirrored cell would be counted by a technician).
"""

from __future__ import annotations

import cv2
import numpy as np

from edge import cielab

# The background: the median colour of the brightest tenth of the pixels of a thumbnail at most this
# wide (halvings of the cut window or frame). Gains are bounded so a frame of nothing but stain cannot
# be turned inside out, as in version 1.
BACKGROUND_SHARE = 0.10
THUMBNAIL = 64
GAIN_BITS = 12
GAIN_LIMITS = (0.6, 1.8)


def halve_until(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Exact 2x INTER_AREA halvings while the image is at least twice (width, height)."""
    while image.shape[1] >= 2 * width and image.shape[0] >= 2 * height:
        h, w = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
        image = cv2.resize(image[:h, :w], (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    return image


def resize(image: np.ndarray, width: int, height: int, channels: int = 3) -> np.ndarray:
    """Any size BGR -> (width, height) with bit-exact steps only; `channels` 4: BGRA out (alpha 255),
    the same B, G, R bytes."""
    image = halve_until(image, width, height)
    if channels == 4:  # after the halvings, where the image is smallest
        image = cv2.cvtColor(image, cv2.COLOR_BGR2BGRA)
    if image.shape[1] != width or image.shape[0] != height:
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR_EXACT)
    return image


def background_bgr(image_bgr: np.ndarray) -> tuple[int, int, int]:
    """The slide's colour (B, G, R integers) in an 8-bit BGR (or BGRA) image: the median of the
    brightest tenth of a thumbnail's pixels. Integer all the way."""
    small = halve_until(image_bgr, THUMBNAIL, THUMBNAIL)
    channels = [small[..., c].reshape(-1) for c in range(3)]
    brightness = channels[0].astype(np.uint16)
    brightness += channels[1]
    brightness += channels[2]
    keep = max(1, int(len(brightness) * BACKGROUND_SHARE))
    # the keep-th brightest value and the lower median of each channel above it, read off histograms
    # (the same integers as sorting, in a fraction of the time: preprocessing runs on every cell)
    threshold = _kth_smallest(np.bincount(brightness, minlength=766), len(brightness) - keep)
    bright = brightness >= threshold
    middle = (int(np.count_nonzero(bright)) - 1) // 2  # the lower median: an integer, no averaging
    return tuple(_kth_smallest(np.bincount(ch[bright], minlength=256), middle) for ch in channels)


def _kth_smallest(histogram: np.ndarray, k: int) -> int:
    """The k-th smallest value (0-based) of the values a histogram counts."""
    return int(np.searchsorted(np.cumsum(histogram), k, side="right"))


def white_balance_table(background: tuple[int, int, int], reference_rgb, channels: int = 3) -> np.ndarray:
    """The (256, 1, channels) lookup table of per-channel gains that take `background` (B, G, R) to
    `reference_rgb`, in fixed point (the same integers on every machine); a 4th channel (alpha) maps
    to 0."""
    one = 1 << GAIN_BITS
    low, high = (round(limit * one) for limit in GAIN_LIMITS)
    target = [round(float(v) * 100) for v in reversed(tuple(reference_rgb))]  # B, G, R in 1/100
    gains = [
        min(high, max(low, (t * one + 50 * max(b, 1)) // (100 * max(b, 1))))
        for t, b in zip(target, background, strict=True)
    ]
    codes = np.arange(256, dtype=np.int64)[:, None]
    table = np.zeros((256, 1, channels), np.uint8)
    table[:, 0, :3] = np.minimum((codes * np.array(gains) + (one >> 1)) >> GAIN_BITS, 255)
    return table


def fill_colour(reference_rgb) -> tuple[int, int, int]:
    """The slide's colour after white balance, B, G, R: what fills a window beyond the image."""
    return tuple(int(round(float(v))) for v in reversed(tuple(reference_rgb)))


def window(
    image_bgr: np.ndarray, centre: tuple[float, float], side: float, size: int, fill, channels: int = 3
) -> np.ndarray:
    """The square of `side` image pixels centred on `centre`, resized to size x size (BGR, or BGRA with
    `channels` 4); what lies beyond the image is `fill` (B, G, R, or a function giving it, called only
    when needed). Integer rectangles, bit-exact resizes."""
    h, w = image_bgr.shape[:2]
    s = max(1, int(round(side)))
    x0, y0 = int(round(centre[0] - s / 2)), int(round(centre[1] - s / 2))
    cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(w, x0 + s), min(h, y0 + s)
    if cx0 == x0 and cy0 == y0 and cx1 == x0 + s and cy1 == y0 + s:
        return resize(image_bgr[cy0:cy1, cx0:cx1], size, size, channels)
    canvas = np.empty((size, size, channels), np.uint8)
    canvas[:] = (*(fill() if callable(fill) else fill), 255)[:channels]
    if cx1 <= cx0 or cy1 <= cy0:
        return canvas
    # where the part inside the image lands in the output, in whole output pixels
    dx0, dy0 = (cx0 - x0) * size // s, (cy0 - y0) * size // s
    dx1, dy1 = -(-(cx1 - x0) * size // s), -(-(cy1 - y0) * size // s)
    if dx1 > dx0 and dy1 > dy0:
        canvas[dy0:dy1, dx0:dx1] = resize(image_bgr[cy0:cy1, cx0:cx1], dx1 - dx0, dy1 - dy0, channels)
    return canvas


def clahe_on_l(bgr: np.ndarray, clahe: cv2.CLAHE, tables: cielab.Tables, color_order: str) -> np.ndarray:
    """CLAHE on L of integer LAB (edge.cielab) through its lookup tables; uint8 H x W x 3 BGR (or 4,
    BGRA, which is overwritten) in, `color_order` out."""
    # one 32-bit word per pixel: B | G << 8 | R << 16
    bgra = bgr if bgr.shape[2] == 4 else cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)
    packed = bgra.view(np.uint32)
    np.bitwise_and(packed, (1 << 24) - 1, out=packed)
    lab = tables.forward.take(packed, mode="clip").view(np.uint8)  # L, then the (a, b) code
    cv2.insertChannel(clahe.apply(cv2.extractChannel(lab, 0)), lab, 0)
    rgbx = tables.inverse.take(lab.view(np.uint32), mode="clip").view(np.uint8)  # R, G, B, 0
    return cv2.cvtColor(rgbx, cv2.COLOR_BGRA2BGR if color_order == "RGB" else cv2.COLOR_BGRA2RGB)


def tile_is_exact(size: int, grid: int) -> bool:
    """CLAHE's interpolation is exact when the image divides into tiles of a power-of-two side."""
    tile, rest = divmod(int(size), int(grid))
    return rest == 0 and tile > 0 and tile & (tile - 1) == 0
