#!/usr/bin/env python3
"""What the colour steps cost end to end: `edge bench`'s own measurement with the bundle's
preprocessing, and with the resize alone (no white balance, no CLAHE), in turn, in one process (a
benchmark, not a test). Timing only: with the resize alone the model sees inputs it was not trained
on, so its answers mean nothing; the figure is what a preprocessing version 3 without the colour
steps could reach on this machine before any retraining (docs/bench.md, "Round three").

    python scripts/bench_colour_cost.py [BUNDLE] [--rounds 3] [--runs 300] [--threads N]
"""

from __future__ import annotations

from ab_rounds import alternate, print_medians  # scripts/, beside this file
from ab_rounds import parser as ab_parser

from edge.bench import runner
from edge.predict import Classifier

COLUMNS = ("overhead ratio", "end to end p50 ms", "invoke p50 ms", "preprocess p50 ms", "postprocess p50 ms")


def measure(config: runner.BenchConfig, resize_only: bool) -> tuple[float, ...]:
    made = Classifier.__init__

    def init(self, *args, **kwargs):  # the bench builds its Classifier inside run()
        made(self, *args, **kwargs)
        self.spec = self.spec.replace(contrast="none", color="none", white_reference=None)

    if resize_only:
        Classifier.__init__ = init
    try:
        r = runner.run(config)
    finally:
        Classifier.__init__ = made
    s = r["stages"]
    return (
        r["overhead_ratio"],
        *(s[k]["p50_ms"] for k in ("end_to_end", "invoke", "preprocess", "postprocess")),
    )


def main() -> None:
    parser = ab_parser(__doc__, rounds=3)
    a = parser.parse_args()
    config = runner.BenchConfig(bundle=a.bundle, runs=a.runs, threads=a.threads)
    results = alternate(
        {
            "as shipped": lambda: measure(config, resize_only=False),
            "resize only": lambda: measure(config, resize_only=True),
        },
        a.rounds,
    )
    title = f"cell mode, {a.bundle.name}, threads {a.threads or 'default'}"
    print_medians(results, title, "preprocessing", COLUMNS)


if __name__ == "__main__":
    main()
