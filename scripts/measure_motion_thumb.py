#!/usr/bin/env python3
"""Would a smaller motion thumbnail count each cell once as well? (a measurement, not a test): the
numbers behind docs/bench.md's "Round four". For each thumbnail width, on real BCCD fields:

- the cost of one FieldWatch step (edge/motion.py `thumbnail` + `match`), median ms;
- how alike two different fields score (consecutive BCCD frames; a jump must score low);
- how alike one field scores against itself moved by up to --shift px with camera noise (the same
  cell must stay above cell mode's `min_similarity`, 0.92, or it is counted again), and the error of
  the measured shift in frame pixels.

    python scripts/measure_motion_thumb.py [--data ../shared/data] [--frames 120] [--widths 128,96,64]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import cv2
import numpy as np

from edge.daemon.config import CellOptions
from edge.imagefile import load_image
from edge.motion import match, thumbnail


def _step_ms(
    frames: list[np.ndarray], widths: list[int], rounds: int = 15, calls: int = 50
) -> dict[int, float]:
    """One FieldWatch step's cost at each width: the widths take turns, `calls` steps a round (this
    machine's speed drifts), the median over the rounds of the mean per step."""
    prev = {w: thumbnail(frames[0], w)[0] for w in widths}
    windows = {w: cv2.createHanningWindow(prev[w].shape[::-1], cv2.CV_32F) for w in widths}
    means: dict[int, list[float]] = {w: [] for w in widths}
    for _ in range(rounds):
        for w in widths:
            t0 = time.perf_counter()
            for i in range(calls):
                match(prev[w], thumbnail(frames[1 + i % (len(frames) - 1)], w)[0], windows[w])
            means[w].append((time.perf_counter() - t0) * 1000 / calls)
    return {w: float(np.median(m)) for w, m in means.items()}


def _moved(image: np.ndarray, dx: int, dy: int, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape[:2]
    moved = cv2.warpAffine(image, np.float32([[1, 0, dx], [0, 1, dy]]), (w, h), borderMode=cv2.BORDER_REFLECT)
    return np.clip(moved + rng.normal(0, 4, moved.shape), 0, 255).astype(np.uint8)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path(os.environ.get("EDGE_DATA_DIR", "../shared/data")))
    p.add_argument("--frames", type=int, default=120)
    p.add_argument("--widths", default="128,96,64")
    p.add_argument("--shift", type=int, default=40)
    a = p.parse_args()
    folder = a.data / "bccd-frames" / "JPEGImages"
    if not folder.is_dir():
        raise SystemExit(f"error: {folder}: no BCCD frames here (--data or EDGE_DATA_DIR)")
    frames = [load_image(f) for f in sorted(folder.glob("*.jpg"))[: a.frames]]
    if len(frames) < 2:
        raise SystemExit(f"error: {folder}: {len(frames)} frame(s); two fields at least (--frames)")
    threshold = CellOptions.model_fields["min_similarity"].default
    print(f"{len(frames)} BCCD frames from {folder}; cell mode counts again below similarity {threshold}")
    print(
        "| thumbnail px | step ms | two fields: p50, p99 | one field moved: min | below threshold | shift error max px |"
    )
    print("|---|---|---|---|---|---|")
    widths = [int(w) for w in a.widths.split(",")]
    cost = _step_ms(frames, widths)
    for width in widths:
        thumbs = [thumbnail(f, width)[0] for f in frames]
        window = cv2.createHanningWindow(thumbs[0].shape[::-1], cv2.CV_32F)
        two = [match(thumbs[i], thumbs[i + 1], window)[1] for i in range(len(thumbs) - 1)]
        rng = np.random.default_rng(0)
        same, errors = [], []
        for i in range(0, len(frames), 3):
            dx, dy = (int(v) for v in rng.integers(-a.shift, a.shift + 1, 2))
            moved, scale = thumbnail(_moved(frames[i], dx, dy, rng), width)
            (sx, sy), similarity = match(thumbs[i], moved, window)
            same.append(similarity)
            errors.append(max(abs(sx / scale - dx), abs(sy / scale - dy)))
        print(
            f"| {width} | {cost[width]:.3f} | {np.median(two):.2f}, {np.quantile(two, 0.99):.2f} | {min(same):.2f} | "
            f"{sum(s < threshold for s in same)} of {len(same)} | {max(errors):.1f} |"
        )


if __name__ == "__main__":
    main()
