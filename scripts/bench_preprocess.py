#!/usr/bin/env python3
"""Cost of edge.preprocess per frame, by input size and contrast method: CLAHE through the LAB
lookup tables (edge.labtables) with the C or the NumPy passes, CLAHE through cvtColor, none (a
benchmark, not a test).

    python scripts/bench_preprocess.py [--runs 300]
    python scripts/bench_preprocess.py --after-invoke models/mobilenetv2-int8 [--runs 1000]

The first form times each method alone, back to back (hot caches). `--after-invoke BUNDLE` times
them as `edge bench` and `edge run` see them: each frame right after an invoke() of the bundle
(cold caches), on the centred half of a 640x480 synthetic field, the methods taking turns frame by
frame so that a noisy machine slows them all alike.
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


# (contrast, EDGE_LAB_TABLES, EDGE_LAB_KERNELS, label)
METHODS = (
    ("clahe", "1", "1", "clahe (tables, C)"),
    ("clahe", "1", "0", "clahe (tables, NumPy)"),
    ("clahe", "0", "1", "clahe (cvtColor)"),
    ("none", "1", "1", "none"),
)


def _use(method: tuple) -> str:
    """Select the method through the environment, as a user would; returns its contrast."""
    contrast, tables, kernels, _ = method
    os.environ["EDGE_LAB_TABLES"], os.environ["EDGE_LAB_KERNELS"] = tables, kernels
    return contrast


def after_invoke(bundle_path: str, runs: int) -> None:
    from edge.bundle import Bundle
    from edge.daemon.modes import CellMode
    from edge.runtime import open_backend

    bundle = Bundle.load(bundle_path)
    backend = open_backend(bundle, "cpu")
    rng = np.random.default_rng(0)
    crops = [CellMode(0.5).crops(render_field(rng, 640, 480)[0])[0].image for _ in range(8)]
    tensor = preprocess(crops[0], bundle.preprocess_spec)[None]
    specs = [PreprocessSpec(**{**bundle.preprocess_spec.to_dict(), "contrast": m[0]}) for m in METHODS]
    times: list[list[float]] = [[] for _ in METHODS]
    for i in range(runs * len(METHODS) + 10 * len(METHODS)):
        k = i % len(METHODS)
        _use(METHODS[k])
        backend.invoke(tensor)
        t0 = time.perf_counter()
        preprocess(crops[i % len(crops)], specs[k])
        if i >= 10 * len(METHODS):  # the first rounds warm up
            times[k].append((time.perf_counter() - t0) * 1000)
    print(f"right after invoke() of {bundle.path.name}, centred 240x240 of a 640x480 field, {runs} frames each")
    print(f"{'contrast':>22} {'p50 ms':>8} {'p90 ms':>8}")
    for method, t in zip(METHODS, times, strict=True):
        p50, p90 = np.percentile(t, [50, 90])
        print(f"{method[3]:>22} {p50:8.3f} {p90:8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--after-invoke", metavar="BUNDLE", help="time each frame right after an invoke() of BUNDLE")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{platform.processor() or platform.machine()}, OpenCV {cv2.__version__}, cv2 threads {cv2.getNumThreads()}")
    labtables.prepare()  # as edge run and edge bench do; EDGE_LAB_TABLES=0 below selects the cvtColor path
    if args.after_invoke:
        after_invoke(args.after_invoke, args.runs)
        return
    print(f"{'input':>10} {'contrast':>22} {'p50 ms':>8} {'p90 ms':>8} {'frames/s':>9}")
    for w, h in SIZES:
        frame, _ = render_field(rng, w, h, center_class="lobed")
        for method in METHODS:
            spec = PreprocessSpec(contrast=_use(method))
            for _ in range(10):
                preprocess(frame, spec)
            times = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                preprocess(frame, spec)
                times.append((time.perf_counter() - t0) * 1000)
            p50, p90 = np.percentile(times, [50, 90])
            print(f"{w}x{h:<5} {method[3]:>22} {p50:8.3f} {p90:8.3f} {1000 / np.mean(times):9.0f}")


if __name__ == "__main__":
    main()
