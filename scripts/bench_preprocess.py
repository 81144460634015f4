#!/usr/bin/env python3
"""Cost of edge.preprocess per frame, by input size and LAB strategy: CLAHE through the lookup tables
(edge.labtables), CLAHE through cvtColor, no contrast step (a benchmark, not a test).

    python scripts/bench_preprocess.py [--runs 300]
    python scripts/bench_preprocess.py --after-invoke models/differential-int8 [--runs 1000]

The first form times each method alone, back to back (hot caches). `--after-invoke BUNDLE` times
them as `edge bench` and `edge run` see them: each frame right after an invoke() of the bundle
(cold caches), on the centred half of a 640x480 synthetic field, the methods taking turns frame by
frame so that a noisy machine slows them all alike. For a bundle of preprocessing version 2 (its LAB
is edge.cielab's, whatever the strategy) the methods are its own spec as shipped (the BGRA resize),
the same bytes through the 3-channel resize that training uses, without CLAHE, and without CLAHE or
white balance: what a cheaper version 3 could save.
"""

from __future__ import annotations

import argparse
import platform
import time

import cv2
import numpy as np

from edge import labtables
from edge.preprocess import CVTCOLOR, PreprocessSpec, preprocess
from edge.synthetic import render_field

SIZES = [(400, 400), (640, 480), (1280, 960), (1920, 1080)]


def methods() -> list[tuple[str, object, str]]:
    """(contrast, LAB strategy, label)."""
    return [
        ("clahe", labtables.build(), "clahe (tables)"),
        ("clahe", CVTCOLOR, "clahe (cvtColor)"),
        ("none", CVTCOLOR, "none"),
    ]


def after_invoke(bundle_path: str, runs: int) -> None:
    from edge import preprocess_exact as exact
    from edge.bundle import Bundle
    from edge.daemon.modes import CellMode
    from edge.preprocess import WHOLE_IMAGE, cut, finish
    from edge.runtime import open_backend

    bundle = Bundle.load(bundle_path)
    backend = open_backend(bundle, "cpu")
    rng = np.random.default_rng(0)
    crops = [CellMode(0.5).cut(render_field(rng, 640, 480)[0]).image for _ in range(8)]
    spec = bundle.preprocess_spec
    backend.set_input(preprocess(crops[0], spec)[None])

    def shipped(s, lab=CVTCOLOR):
        return lambda image: preprocess(image, s, lab=lab)

    if spec.version == 2:

        def three_channels(image):  # training's 3-channel resize: BGR, not BGRA (the same bytes)
            raw = cut(image, spec, WHOLE_IMAGE)
            return finish(raw, spec, lambda: exact.background_bgr(raw))

        plain = {"contrast": "none"}
        chosen = [
            ("as shipped", shipped(spec)),
            ("3-channel resize", three_channels),
            ("without clahe", shipped(spec.replace(**plain))),
        ]
        if spec.color != "none":
            bare = spec.replace(**plain, color="none", white_reference=None)
            chosen.append(("without clahe or wb", shipped(bare)))
    else:
        chosen = [(label, shipped(spec.replace(contrast=c), lab)) for c, lab, label in methods()]
    times: list[list[float]] = [[] for _ in chosen]
    for i in range(runs * len(chosen) + 10 * len(chosen)):
        k = i % len(chosen)
        backend.invoke()
        t0 = time.perf_counter()
        chosen[k][1](crops[i % len(crops)])
        if i >= 10 * len(chosen):  # the first rounds warm up
            times[k].append((time.perf_counter() - t0) * 1000)
    print(
        f"right after invoke() of {bundle.path.name}, centred 240x240 of a 640x480 field, {runs} frames each"
    )
    print(f"{'preprocessing':>22} {'p50 ms':>8} {'p90 ms':>8}")
    for (label, _), t in zip(chosen, times, strict=True):
        p50, p90 = np.percentile(t, [50, 90])
        print(f"{label:>22} {p50:8.3f} {p90:8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument(
        "--after-invoke", metavar="BUNDLE", help="time each frame right after an invoke() of BUNDLE"
    )
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(
        f"{platform.processor() or platform.machine()}, OpenCV {cv2.__version__}, cv2 threads {cv2.getNumThreads()}"
    )
    if args.after_invoke:
        after_invoke(args.after_invoke, args.runs)
        return
    print(f"{'input':>10} {'contrast':>22} {'p50 ms':>8} {'p90 ms':>8} {'frames/s':>9}")
    chosen = methods()
    for w, h in SIZES:
        frame, _ = render_field(rng, w, h, center_class="lobed")
        for contrast, lab, label in chosen:
            spec = PreprocessSpec(contrast=contrast)
            for _ in range(10):
                preprocess(frame, spec, lab=lab)
            times = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                preprocess(frame, spec, lab=lab)
                times.append((time.perf_counter() - t0) * 1000)
            p50, p90 = np.percentile(times, [50, 90])
            print(f"{w}x{h:<5} {label:>22} {p50:8.3f} {p90:8.3f} {1000 / np.mean(times):9.0f}")


if __name__ == "__main__":
    main()
