"""Taking turns: the A/B loop the in-process benchmark scripts share (bench_motion.py,
bench_colour_cost.py). The machine's speed drifts, so each round measures every variant once, in
turn, and the table gives medians over the rounds."""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path

DEFAULT_BUNDLE = Path(__file__).resolve().parents[1] / "models" / "differential-int8"


def parser(doc: str, rounds: int) -> argparse.ArgumentParser:
    """The arguments every A/B script takes: BUNDLE (edge run's default), --rounds, --runs, --threads."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("bundle", nargs="?", type=Path, default=DEFAULT_BUNDLE)
    p.add_argument("--rounds", type=int, default=rounds)
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--threads", type=int, default=None)
    return p


def alternate(
    variants: dict[str, Callable[[], tuple[float, ...]]], rounds: int
) -> dict[str, list[tuple[float, ...]]]:
    """Each round calls every variant once, in order, printing its figures as they come."""
    results: dict[str, list[tuple[float, ...]]] = {name: [] for name in variants}
    width = max(map(len, variants))
    for i in range(rounds):
        for name, measure in variants.items():
            results[name].append(measure())
            print(
                f"round {i + 1} {name:{width}s} " + "  ".join(f"{v:.3f}" for v in results[name][-1]),
                flush=True,
            )
    return results


def print_medians(
    results: dict[str, list[tuple[float, ...]]], title: str, first: str, columns: tuple[str, ...]
) -> None:
    """A markdown table, one row per variant: the median of each column over the rounds."""
    print(f"\n{title}, medians of {len(next(iter(results.values())))} rounds")
    print(f"| {first} | {' | '.join(columns)} |\n|---|{'---|' * len(columns)}")
    for name, rows in results.items():
        print(
            f"| {name} | "
            + " | ".join(f"{statistics.median(r[k] for r in rows):.3f}" for k in range(len(columns)))
            + " |"
        )
