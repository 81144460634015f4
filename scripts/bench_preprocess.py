#!/usr/bin/env python3
"""Cost of edge.preprocess per frame, by input size and contrast method: CLAHE through the LAB
lookup tables (edge.labtables), CLAHE through cvtColor, none (a benchmark, not a test).

    python scripts/bench_preprocess.py [--runs 300]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import cv2
import numpy as np

from edge import labtables
from edge.preprocess import PreprocessSpec, preprocess
from edge.synthetic import render_field

SIZES = [(400, 400), (640, 480), (1280, 960), (1920, 1080)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{platform.processor() or platform.machine()}, OpenCV {cv2.__version__}, cv2 threads {cv2.getNumThreads()}")
    labtables.prepare()  # as edge run and edge bench do; EDGE_LAB_TABLES=0 below selects the cvtColor path
    print(f"{'input':>10} {'contrast':>18} {'p50 ms':>8} {'p90 ms':>8} {'frames/s':>9}")
    for w, h in SIZES:
        frame, _ = render_field(rng, w, h, center_class="lobed")
        for contrast, tables in (("clahe", "1"), ("clahe", "0"), ("none", "1")):
            os.environ["EDGE_LAB_TABLES"] = tables
            spec = PreprocessSpec(contrast=contrast)
            method = contrast + (" (cvtColor)" if contrast == "clahe" and tables == "0" else "")
            for _ in range(10):
                preprocess(frame, spec)
            times = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                preprocess(frame, spec)
                times.append((time.perf_counter() - t0) * 1000)
            p50, p90 = np.percentile(times, [50, 90])
            print(f"{w}x{h:<5} {method:>18} {p50:8.3f} {p90:8.3f} {1000 / np.mean(times):9.0f}")


if __name__ == "__main__":
    main()
