"""`--compare OLD.json`: ratios of this run against an earlier one (new / old; < 1 is faster for times)."""

from __future__ import annotations

import json
from pathlib import Path

from edge.bench.table import grid
from edge.errors import EdgeError

# What must match for a comparison to mean "the same thing, changed"; differences are listed.
CONTEXT_KEYS = (
    "device",
    "cores",
    "governor",
    "backend",
    "runtime",
    "runtime_version",
    "delegate",
    "threads",
    "numpy",
    "opencv",
    "bundle_sha256",
)
_METRICS = [
    (f"{stage} {p}", ("stages", stage, f"{p}_ms"))
    for stage in ("capture", "preprocess", "invoke", "postprocess", "end_to_end")
    for p in ("p50", "p99")
]
_METRICS += [
    ("overhead ratio", ("overhead_ratio",)),
    ("throughput fps", ("throughput_fps",)),
    ("init ms", ("startup", "init_ms")),
    ("peak RSS MB", ("resources", "peak_rss_mb")),
]
HIGHER_IS_BETTER = {"throughput fps"}
NOTABLE = 0.10  # changes beyond ±10% get an arrow


class CompareError(EdgeError):
    exit_code = 2


def load_runs(path: str | Path) -> list[dict]:
    """The runs stored in a bench JSON (one run, or a matrix of them)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CompareError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CompareError(f"{path}: not a bench JSON ({exc})") from None
    runs = data.get("matrix") if isinstance(data, dict) and "matrix" in data else [data]
    runs = [r for r in runs if isinstance(r, dict) and "stages" in r]
    if not runs:
        raise CompareError(f"{path}: no benchmark results in it (expected `edge bench --json` output)")
    return runs


def run_key(r: dict) -> tuple:
    ctx = r.get("context", {})
    return (ctx.get("bundle_sha256"), ctx.get("backend"), ctx.get("runtime"), ctx.get("threads"))


def _get(r: dict, path: tuple):
    for key in path:
        if not isinstance(r, dict) or key not in r:
            return None
        r = r[key]
    return r


def compare(new: dict, old: dict) -> dict:
    rows = []
    for name, path in _METRICS:
        a, b = _get(old, path), _get(new, path)
        if a is None or b is None:
            continue
        rows.append({"metric": name, "old": a, "new": b, "ratio": round(b / a, 3) if a else None})
    diffs = {
        k: [old.get("context", {}).get(k), new.get("context", {}).get(k)]
        for k in CONTEXT_KEYS
        if old.get("context", {}).get(k) != new.get("context", {}).get(k)
    }
    return {"rows": rows, "context_differences": diffs}


def pair_runs(new_runs: list[dict], old_runs: list[dict]) -> list[tuple[dict, dict]]:
    """Match runs by (bundle, backend, runtime, threads); a single run pairs with a single run."""
    if len(new_runs) == 1 and len(old_runs) == 1:
        return [(new_runs[0], old_runs[0])]
    old_by_key = {run_key(r): r for r in old_runs}
    return [(r, old_by_key[run_key(r)]) for r in new_runs if run_key(r) in old_by_key]


def _arrow(name: str, ratio: float | None) -> str:
    if ratio is None or abs(ratio - 1) <= NOTABLE:
        return ""
    better = (ratio > 1) == (name in HIGHER_IS_BETTER)
    return "better" if better else "WORSE"


def format_comparison(cmp: dict, title: str) -> str:
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    rows = [
        [
            r["metric"],
            fmt(r["old"]),
            fmt(r["new"]),
            f"{r['ratio']:.2f}x" if r["ratio"] else "-",
            _arrow(r["metric"], r["ratio"]),
        ]
        for r in cmp["rows"]
    ]
    out = [title, grid(["metric", "old", "new", "new/old", ""], rows)]
    for key, (a, b) in cmp["context_differences"].items():
        out.append(f"note: {key} differs: {a} -> {b}")
    return "\n".join(out)
