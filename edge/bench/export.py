"""Writing results: the JSON document (one run, or {"matrix": [...]}) and a flat CSV, one row per stage."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from edge.bench import STAGES
from edge.bench.compare import CONTEXT_KEYS

# The comparison keys plus when it ran.
CSV_CONTEXT = (*CONTEXT_KEYS, "time")
CSV_STATS = ("count", "min_ms", "max_ms", "mean_ms", "std_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms")


def document(results: list[dict], matrix: bool) -> dict:
    """A single run is written as itself (stages, throughput_fps, ... at the top); a matrix as a list."""
    if not matrix and len(results) == 1:
        return results[0]
    return {"schema": "edge-bench-matrix/1", "matrix": results}


def write_json(path: str | Path, doc: dict) -> None:
    Path(path).write_text(json.dumps(doc, indent=2) + "\n")


def write_csv(path: str | Path, results: list[dict]) -> None:
    header = [
        "bundle",
        *CSV_CONTEXT,
        "source",
        "stage",
        *CSV_STATS,
        "overhead_ratio",
        "throughput_fps",
        "peak_rss_mb",
    ]
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for r in results:
            if "stages" not in r:
                continue
            ctx = r["context"]
            common = [r["bundle"]["name"], *(ctx.get(k) for k in CSV_CONTEXT), r["source"].get("kind")]
            for stage in STAGES:
                s = r["stages"][stage]
                writer.writerow(
                    [
                        *common,
                        stage,
                        *(s[k] for k in CSV_STATS),
                        r["overhead_ratio"],
                        r["throughput_fps"],
                        r["resources"]["peak_rss_mb"],
                    ]
                )
