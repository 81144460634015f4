#!/usr/bin/env python3
"""What each per-frame step of preprocessing version 2 and the motion check costs, alone (a benchmark,
not a test): the numbers behind docs/bench.md's "Wave 3" per-step figures.

    python scripts/bench_steps.py [BUNDLE] [--rounds 15] [--calls 80]
    PYTHONPATH=OTHER_TREE python scripts/bench_steps.py     # the same steps in another checkout's code

On 8 synthetic 640x480 fields (edge.synthetic, seed 0) and their centred 240 px squares, as
`edge bench` feeds cell mode. Each round times every step `--calls` times in turn, so a noisy machine
slows them alike; the table gives the median over the rounds of the mean per call, in ms.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

import edge
from edge import cielab
from edge import preprocess as pp
from edge import preprocess_exact as exact
from edge.bundle import Bundle
from edge.daemon.fields import FieldWatch
from edge.motion import match, thumbnail
from edge.synthetic import render_field

ROOT = Path(__file__).resolve().parents[1]


def steps(spec, frames: list[np.ndarray]) -> dict[str, object]:
    """name -> f(i) doing the step on input i."""
    squares = [np.ascontiguousarray(f[120:360, 200:440]) for f in frames]
    raws = [pp.cut(s, spec, pp.WHOLE_IMAGE) for s in squares]
    backgrounds = [exact.background_bgr(r) for r in raws]
    reference = spec.white_reference or (255.0, 255.0, 255.0)
    tables = [exact.white_balance_table(b, reference) for b in backgrounds]
    balanced = [cv2.LUT(r, t) for r, t in zip(raws, tables, strict=True)]
    clahe = pp.clahe_object(float(spec.clahe_clip_limit), int(spec.clahe_tile_grid))
    lab = cielab.tables()
    thumbs = [thumbnail(f)[0] for f in frames]
    window = cv2.createHanningWindow(thumbs[0].shape[::-1], cv2.CV_32F)
    watch = FieldWatch()
    n = len(frames)
    return {
        "preprocess (whole, 240 px square)": lambda i: pp.preprocess(squares[i % n], spec),
        "  cut: exact resize to 224": lambda i: pp.cut(squares[i % n], spec, pp.WHOLE_IMAGE),
        "  slide colour of the 224 px cut": lambda i: exact.background_bgr(raws[i % n]),
        "  white balance (table + LUT)": lambda i: cv2.LUT(
            raws[i % n], exact.white_balance_table(backgrounds[i % n], reference)
        ),
        "  CLAHE on integer LAB": lambda i: exact.clahe_on_l(balanced[i % n], clahe, lab, spec.color_order),
        "slide colour of a 640x480 frame": lambda i: exact.background_bgr(frames[i % n]),
        "motion: thumbnail of a 640x480 frame": lambda i: thumbnail(frames[i % n]),
        "motion: match two thumbnails": lambda i: match(thumbs[i % n], thumbs[(i + 1) % n], window),
        "motion: FieldWatch.update (both)": lambda i: watch.update(frames[i % n]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?", default=str(ROOT / "models" / "differential-int8"))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=80)
    a = parser.parse_args()
    spec = Bundle.load(a.bundle).preprocess_spec
    rng = np.random.default_rng(0)
    frames = [render_field(rng, 640, 480)[0] for _ in range(8)]
    chosen = steps(spec, frames)
    for f in chosen.values():  # warm-up: first calls allocate (CLAHE's buffers, the LAB tables' pages)
        for i in range(10):
            f(i)
    times: dict[str, list[float]] = {name: [] for name in chosen}
    for _ in range(a.rounds):
        for name, f in chosen.items():
            t0 = time.perf_counter()
            for i in range(a.calls):
                f(i)
            times[name].append((time.perf_counter() - t0) / a.calls * 1000)
    print(f"edge from {Path(edge.__file__).parent}; OpenCV {cv2.__version__}; {Path(a.bundle).name}")
    print(f"{'step':40s} {'ms':>7}")
    for name, t in times.items():
        print(f"{name:40s} {statistics.median(t):7.3f}")


if __name__ == "__main__":
    main()
