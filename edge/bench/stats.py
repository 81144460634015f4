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
    p99_ms: float

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def summarize(samples_ms) -> StageStats:
    """count, min, max, mean, population std and linear-interpolated p50/p90/p99 of `samples_ms`."""
    values = np.asarray(list(samples_ms), dtype=np.float64)
    if values.size == 0:
        raise ValueError("no samples to summarize")
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return StageStats(
        count=int(values.size),
        min_ms=float(values.min()),
        max_ms=float(values.max()),
        mean_ms=float(values.mean()),
        std_ms=float(values.std()),
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
    )
