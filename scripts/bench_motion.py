#!/usr/bin/env python3
"""The stage-motion check beside the classification or in the pipeline thread: an A/B in one process
(a benchmark, not a test), the numbers behind docs/bench.md's figure for MotionCheck.

    python scripts/bench_motion.py [BUNDLE] [--rounds 6] [--runs 300] [--threads N] [--mode cell|field]
                                   [--source sim | replay:DIR]

Each round runs `edge bench`'s own measurement (edge.bench.runner.run) twice, once with the check in
the pipeline thread (MotionCheck told there is one core) and once beside (as `edge run` does on more
than one), in turn, so a drifting machine slows both alike; the table gives medians over the rounds.
"""

from __future__ import annotations

from ab_rounds import alternate, print_medians  # scripts/, beside this file
from ab_rounds import parser as ab_parser

from edge.bench import runner
from edge.commands.detect import default_detector
from edge.daemon import fields

COLUMNS = ("overhead ratio", "end to end p50 ms", "invoke p50 ms", "preprocess p50 ms", "threaded fps")


def measure(config: runner.BenchConfig, beside: bool) -> tuple[float, ...]:
    # what MotionCheck reads to choose: one core keeps the check in the pipeline thread
    fields.usable_cores = (lambda: 2) if beside else (lambda: 1)
    r = runner.run(config)
    s = r["stages"]
    return (
        r["overhead_ratio"],
        s["end_to_end"]["p50_ms"],
        s["invoke"]["p50_ms"],
        s["preprocess"]["p50_ms"],
        r["threaded_fps"],
    )


def main() -> None:
    parser = ab_parser(__doc__, rounds=6)
    parser.add_argument("--mode", choices=("cell", "field"), default="cell")
    parser.add_argument("--source", default="sim")
    a = parser.parse_args()
    detector = default_detector() if a.mode == "field" else None  # edge run's, as edge bench takes it
    config = runner.BenchConfig(
        bundle=a.bundle, runs=a.runs, threads=a.threads, mode=a.mode, source=a.source, detector=detector
    )
    results = alternate(
        {
            "pipeline thread": lambda: measure(config, beside=False),
            "beside": lambda: measure(config, beside=True),
        },
        a.rounds,
    )
    title = f"{a.mode} mode, {a.bundle.name}, threads {a.threads or 'default'}"
    print_medians(results, title, "motion check", COLUMNS)


if __name__ == "__main__":
    main()
