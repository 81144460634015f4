#!/usr/bin/env python3
"""What each per-frame feature costs end to end: `edge bench`'s own measurement (edge.bench.runner.run)
as shipped and with features changed or left out, in turn, in one process (a benchmark, not a test).
The numbers behind docs/bench.md's "Round four: what each feature costs the ratio".

    python scripts/bench_costs.py [BUNDLE] [--variants shipped,no-motion,resize-only,resize-only+no-motion]
                                  [--rounds 3] [--runs 300] [--threads N]
                                  [--mode cell|field] [--source sim | replay:DIR]

A variant is `shipped` or changes joined by "+":
  motion-inline  the stage-motion check in the pipeline thread (MotionCheck told there is one core),
                 not beside the classification as `edge run` does on more than one core
  no-motion      no motion check at all: every frame shows the same cell (counting once is lost)
  resize-only    the classifier's preprocessing without white balance and CLAHE (the model then sees
                 inputs it was not trained on: its answers mean nothing)
The last two are timing only: what a pipeline without that feature could reach on this machine.

The machine's speed drifts, so each round measures every variant once, in turn, and the table gives
medians over the rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from pathlib import Path
from unittest.mock import patch

from edge.bench import runner
from edge.commands.detect import default_detector
from edge.daemon import fields
from edge.predict import Classifier

DEFAULT_BUNDLE = Path(__file__).resolve().parents[1] / "models" / "differential-int8"
DEFAULT_VARIANTS = "shipped,no-motion,resize-only,resize-only+no-motion"
COLUMNS = ("overhead ratio", "end to end p50 ms", "invoke p50 ms", "preprocess p50 ms", "threaded fps")


def _resize_only():
    made = Classifier.__init__

    def init(self, *args, **kwargs):  # the bench builds its Classifier inside run()
        made(self, *args, **kwargs)
        self.spec = self.spec.replace(contrast="none", color="none", white_reference=None)

    return patch.object(Classifier, "__init__", init)


def _no_motion():
    def same_view(self, *args, **kwargs):
        return fields.FieldStep((0.0, 0.0), False, False, max(1, self.fields), 1.0)

    return patch.object(fields.FieldWatch, "update", same_view)


CHANGES = {
    # what MotionCheck reads to choose: one core keeps the check in the pipeline thread
    "motion-inline": lambda: patch.object(fields, "usable_cores", lambda: 1),
    "no-motion": _no_motion,
    "resize-only": _resize_only,
}


def parse_variant(name: str) -> list[str]:
    changes = [] if name == "shipped" else name.split("+")
    unknown = [c for c in changes if c not in CHANGES]
    if unknown:
        raise SystemExit(
            f"error: --variants: unknown change {unknown[0]!r} (shipped, or {', '.join(CHANGES)} joined by +)"
        )
    return changes


def measure(config: runner.BenchConfig, changes: list[str]) -> tuple[float, ...]:
    with contextlib.ExitStack() as stack:
        for change in changes:
            stack.enter_context(CHANGES[change]())
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
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", nargs="?", type=Path, default=DEFAULT_BUNDLE)
    p.add_argument("--variants", default=DEFAULT_VARIANTS)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--mode", choices=("cell", "field"), default="cell")
    p.add_argument("--source", default="sim")
    a = p.parse_args()
    variants = {name: parse_variant(name) for name in a.variants.split(",")}
    detector = default_detector() if a.mode == "field" else None  # edge run's, as edge bench takes it
    config = runner.BenchConfig(
        bundle=a.bundle, runs=a.runs, threads=a.threads, mode=a.mode, source=a.source, detector=detector
    )
    results: dict[str, list[tuple[float, ...]]] = {name: [] for name in variants}
    width = max(map(len, variants))
    for i in range(a.rounds):
        for name, changes in variants.items():
            results[name].append(measure(config, changes))
            print(
                f"round {i + 1} {name:{width}s} " + "  ".join(f"{v:.3f}" for v in results[name][-1]),
                flush=True,
            )
    print(f"\n{a.mode} mode, {a.bundle.name}, threads {a.threads or 'default'}, medians of {a.rounds} rounds")
    print(f"| variant | {' | '.join(COLUMNS)} |\n|---|{'---|' * len(COLUMNS)}")
    for name, rows in results.items():
        medians = (statistics.median(r[k] for r in rows) for k in range(len(COLUMNS)))
        print(f"| {name} | " + " | ".join(f"{m:.3f}" for m in medians) + " |")


if __name__ == "__main__":
    main()
