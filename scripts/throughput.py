#!/usr/bin/env python3
"""Overlapped pipeline vs a plain sequential loop, on the same images, runtime and threads, in one run.

    python scripts/throughput.py BUNDLE IMAGES... [--threads N] [--workers W] [--loader thread|process]
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

from edge.batch import PipelineOptions, classify_paths, classify_sequential, default_workers, timed  # noqa: E402
from edge.bundle import Bundle  # noqa: E402
from edge.images import expand_paths  # noqa: E402
from edge.predict import Classifier  # noqa: E402
from edge.runtime import open_backend  # noqa: E402
from edge.runtime.cpu_tflite import usable_cores  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("images", nargs="+", help="image files or folders (recursive)")
    ap.add_argument("--runtime", default="auto")
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None, help="interpreter threads (default: all cores)")
    ap.add_argument("--workers", type=int, default=None, help="loader workers (default: free cores, at least 1)")
    ap.add_argument("--loader", choices=("thread", "process"), default="thread")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N images (0: all)")
    ap.add_argument("--json", dest="json_path", default=None, help="also write the numbers to this file")
    args = ap.parse_args(argv)

    bundle = Bundle.load(args.bundle)
    threads = args.threads or usable_cores()
    backend = open_backend(bundle, args.backend, runtime=args.runtime, threads=threads, device=args.device)
    classifier = Classifier(bundle, backend=backend)
    paths = expand_paths(args.images)
    if args.limit:
        paths = paths[: args.limit]
    for p in paths:  # warm the page cache for both sides alike
        try:
            p.read_bytes()
        except OSError:
            pass
    options = PipelineOptions(batch_size=args.batch, workers=args.workers or default_workers(threads), loader=args.loader)
    list(classify_sequential(classifier, paths[:8]))  # interpreter warm-up at batch 1 ...
    list(classify_paths(classifier, paths[: 2 * args.batch], options))  # ... and at the pipeline's batch

    seq, pipe = [], []
    for r in range(args.rounds):
        _, t_seq = timed(classify_sequential(classifier, paths))
        _, t_pipe = timed(classify_paths(classifier, paths, options))
        seq.append(t_seq.images_per_second)
        pipe.append(t_pipe.images_per_second)
        print(f"round {r + 1}: sequential {seq[-1]:7.1f} images/s   pipeline {pipe[-1]:7.1f} images/s"
              f"   ratio {pipe[-1] / seq[-1]:.2f}x", flush=True)
    s, p = statistics.median(seq), statistics.median(pipe)
    info = classifier.backend.describe()
    result = {
        "images": len(paths),
        "rounds": args.rounds,
        "sequential_images_per_second": round(s, 2),
        "pipeline_images_per_second": round(p, 2),
        "speedup": round(p / s, 3),
        "pipeline": {"loader": options.loader, "workers": options.workers, "batch_size": options.batch_size},
        "runtime": info,
        "machine": {"cpus": os.cpu_count(), "machine": platform.machine(), "load_average": os.getloadavg()},
    }
    print(f"median over {args.rounds} rounds, {len(paths)} images, {info['runtime']} {info['runtime_version']}, "
          f"{threads} interpreter thread(s), {options.workers} {options.loader} loader(s), batch {options.batch_size}:")
    print(f"  sequential {s:.1f} images/s   pipeline {p:.1f} images/s   ratio {p / s:.2f}x")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
