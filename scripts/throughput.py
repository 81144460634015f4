#!/usr/bin/env python3
"""Overlapped pipeline vs a plain sequential loop, on the same images, runtime and threads, in one run.

    python scripts/throughput.py BUNDLE IMAGES... [--threads N] [--workers W]
                                 [--batch B] [--rounds R] [--limit N] [--json FILE]

Each round runs the sequential loop (decode -> preprocess -> invoke, one image at a time) and then
the pipeline, so both see the same machine load; the medians of the rounds are reported. Files are
read once before timing so neither side pays for a cold disk cache.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.batch import (  # noqa: E402
    Inference,
    PipelineOptions,
    classify_paths,
    classify_sequential,
    default_workers,
    plan,
    timed,
)
from edge.bundle import Bundle  # noqa: E402
from edge.dataset import expand_paths  # noqa: E402
from edge.predict import Classifier  # noqa: E402
from edge.runtime import open_backend  # noqa: E402
from edge.runtime.tflite import usable_cores  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("images", nargs="+", help="image files or folders (recursive)")
    ap.add_argument("--runtime", default="auto")
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--device", default=None)
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads per interpreter (default as edge eval: 1 per interpreter, one interpreter per core)",
    )
    ap.add_argument(
        "--workers", type=int, default=None, help="loader workers (default: free cores, at least 1)"
    )
    ap.add_argument(
        "--replicas",
        type=int,
        default=None,
        help="interpreters working side by side (default: cores // threads, as edge eval does)",
    )
    ap.add_argument(
        "--all-cores-baseline",
        action="store_true",
        help="when interpreters have fewer threads than cores, also time the sequential loop with all cores",
    )
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N images (0: all)")
    ap.add_argument("--json", dest="json_path", default=None, help="also write the numbers to this file")
    args = ap.parse_args(argv)

    bundle = Bundle.load(args.bundle)
    paths = expand_paths(args.images)
    if args.limit:
        paths = paths[: args.limit]
    chosen = plan(
        Inference(args.backend, threads=args.threads, batch_size=args.batch, workers=args.workers), len(paths)
    )
    threads, replicas = chosen.threads, args.replicas or chosen.replicas
    classifiers = [
        Classifier(
            bundle,
            open_backend(bundle, args.backend, runtime=args.runtime, threads=threads, device=args.device),
        )
        for _ in range(replicas)
    ]
    classifier = classifiers[0]
    all_cores = None
    if args.all_cores_baseline and threads < usable_cores():
        all_cores = Classifier(
            bundle, open_backend(bundle, args.backend, runtime=args.runtime, device=args.device)
        )
    for p in paths:  # warm the page cache for both sides alike
        try:
            p.read_bytes()
        except OSError:
            pass
    options = PipelineOptions(batch_size=args.batch, workers=args.workers or default_workers(threads))
    for c in classifiers + ([all_cores] if all_cores else []):  # first invokes pack weights: not timed
        list(classify_sequential(c, paths[:4]))
        list(classify_paths(c, paths[: 2 * args.batch], options))

    seq, pipe, full = [], [], []
    for r in range(args.rounds):
        _, t_seq = timed(classify_sequential(classifier, paths))
        _, t_pipe = timed(classify_paths(classifiers, paths, options))
        seq.append(t_seq.images_per_second)
        pipe.append(t_pipe.images_per_second)
        line = (
            f"round {r + 1}: sequential {seq[-1]:7.1f} images/s   pipeline {pipe[-1]:7.1f} images/s"
            f"   ratio {pipe[-1] / seq[-1]:.2f}x"
        )
        if all_cores:
            full.append(timed(classify_sequential(all_cores, paths))[1].images_per_second)
            line += f"   (sequential, all cores {full[-1]:.1f} images/s: {pipe[-1] / full[-1]:.2f}x)"
        print(line, flush=True)
    s, p = statistics.median(seq), statistics.median(pipe)
    info = classifier.backend.describe()
    result = {
        "images": len(paths),
        "rounds": args.rounds,
        "sequential_images_per_second": round(s, 2),
        "pipeline_images_per_second": round(p, 2),
        "speedup": round(p / s, 3),
        "pipeline": {
            "replicas": replicas,
            "threads_per_interpreter": threads,
            "workers": options.workers if replicas == 1 else 0,
            "batch_size": options.batch_size,
        },
        "runtime": info,
        "machine": {"cpus": os.cpu_count(), "machine": platform.machine(), "load_average": os.getloadavg()},
    }
    loaders = f"{options.workers} loader thread(s)" if replicas == 1 else "each decoding its own batches"
    print(
        f"median over {args.rounds} rounds, {len(paths)} images, {info['runtime']} {info['runtime_version']}, "
        f"{replicas} interpreter(s) x {threads} thread(s), {loaders}, batch {options.batch_size}:"
    )
    print(f"  sequential {s:.1f} images/s   pipeline {p:.1f} images/s   ratio {p / s:.2f}x")
    if full:
        f = statistics.median(full)
        result["sequential_all_cores_images_per_second"] = round(f, 2)
        result["speedup_vs_all_cores"] = round(p / f, 3)
        print(f"  sequential with all {usable_cores()} cores {f:.1f} images/s: pipeline ratio {p / f:.2f}x")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
