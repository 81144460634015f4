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
# (name, path in the result, unit); the unit picks the noise floor below.
_METRICS = [
    (f"{stage} {p}", ("stages", stage, f"{p}_ms"), "ms")
    for stage in ("capture", "preprocess", "invoke", "postprocess", "end_to_end")
    for p in ("p50", "p95", "p99")
]
_METRICS += [
    ("overhead ratio", ("overhead_ratio",), "x"),
    ("throughput fps", ("throughput_fps",), "fps"),
    ("init ms", ("startup", "init_ms"), "ms"),
    ("peak RSS MB", ("resources", "peak_rss_mb"), "MB"),
]
HIGHER_IS_BETTER = {"throughput fps"}
# What counts as a change, declared once: beyond RELATIVE of the old value AND beyond the unit's
# absolute floor. Below either it is noise (a busy machine, the timer, scheduling), so 6 -> 7 us of
# postprocessing (+17 %, but 0.001 ms) is not called worse.
RELATIVE = 0.10
NOISE_FLOOR = {"ms": 0.1, "fps": 1.0, "x": 0.05, "MB": 2.0}


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


def verdict(name: str, unit: str, old: float, new: float) -> str:
    """ "better", "WORSE", or "" for a change within the noise (RELATIVE and NOISE_FLOOR)."""
    if abs(new - old) <= NOISE_FLOOR[unit] or (old and abs(new / old - 1) <= RELATIVE):
        return ""
    return "better" if (new > old) == (name in HIGHER_IS_BETTER) else "WORSE"


def noise_note() -> str:
    floors = ", ".join(f"{v:g} {u}" for u, v in NOISE_FLOOR.items())
    return f"better / WORSE: a change of more than {RELATIVE:.0%} and more than {floors}; less is noise"


def compare(new: dict, old: dict) -> dict:
    rows = []
    for name, path, unit in _METRICS:
        a, b = _get(old, path), _get(new, path)
        if a is None or b is None:
            continue
        rows.append(
            {
                "metric": name,
                "old": a,
                "new": b,
                "ratio": round(b / a, 3) if a else None,
                "verdict": verdict(name, unit, a, b),
            }
        )
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


def format_comparison(cmp: dict, title: str) -> str:
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    rows = [
        [
            r["metric"],
            fmt(r["old"]),
            fmt(r["new"]),
            f"{r['ratio']:.2f}x" if r["ratio"] else "-",
            r.get("verdict", ""),
        ]
        for r in cmp["rows"]
    ]
    out = [title, grid(["metric", "old", "new", "new/old", ""], rows), noise_note()]
    for key, (a, b) in cmp["context_differences"].items():
        out.append(f"note: {key} differs: {a} -> {b}")
    return "\n".join(out)


def describe_run(r: dict) -> str:
    """Which run a result is: its bundle's name, backend, runtime and threads, as that run recorded them."""
    ctx = r.get("context", {})
    name = (r.get("bundle") or {}).get("name", "?")
    return f"{name}, {ctx.get('backend')} {ctx.get('runtime')}, {ctx.get('threads')} threads"
