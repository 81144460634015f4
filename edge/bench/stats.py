"""Summary statistics of a list of durations, in milliseconds, named as benchmark_model names them."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class StageStats:
    count: int
    min_ms: float
    max_ms: float
    mean_ms: float
    std_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def summarize(samples_ms) -> StageStats:
    """count, min, max, mean, population std and linear-interpolated p50/p90/p95/p99 of `samples_ms`."""
    values = np.asarray(list(samples_ms), dtype=np.float64)
    if values.size == 0:
        raise ValueError("no samples to summarize")
    p50, p90, p95, p99 = np.percentile(values, [50, 90, 95, 99])
    return StageStats(
        count=int(values.size),
        min_ms=float(values.min()),
        max_ms=float(values.max()),
        mean_ms=float(values.mean()),
        std_ms=float(values.std()),
        p50_ms=float(p50),
        p90_ms=float(p90),
        p95_ms=float(p95),
        p99_ms=float(p99),
    )


def histogram(samples_ms, bins: int = 40) -> dict:
    """Counts of `samples_ms` in `bins` equal bins from the minimum to the 99.5th percentile; slower
    samples are counted in `above` (one stall must not squeeze every other bar into one column)."""
    values = np.asarray(list(samples_ms), dtype=np.float64)
    low, high = float(values.min()), float(np.percentile(values, 99.5))
    high = high if high > low else low + 1e-3
    counts, edges = np.histogram(values[values <= high], bins=bins, range=(low, high))
    return {
        "edges_ms": [round(float(e), 4) for e in edges],
        "counts": [int(c) for c in counts],
        "above": int((values > high).sum()),
    }
