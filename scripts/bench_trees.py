#!/usr/bin/env python3
"""Before/after: `edge bench` on two source trees in one session, taking turns.

    python scripts/bench_trees.py BEFORE [AFTER] [--rounds 3] [--threads default,1,2]
                                  [--data ../shared/data] [--out DIR] [--only cell,reference,field]

BEFORE and AFTER are git revisions (checked out once as detached worktrees under --out) or folders
holding a checkout; AFTER defaults to this checkout as it is on disk. Each tree benchmarks its own
bundles (`models/`) with its own code, run by this Python with the tree first on sys.path, so both
see the same runtime, NumPy and OpenCV. The machine's speed drifts, so every round runs each
configuration on BEFORE, then at once on AFTER, and the table gives medians over the rounds of each
run's own ratio (docs/bench.md, "Wave 3").

Configurations (issue 25's goal table), each at every --threads value ("default": what each tree's
`edge run` would use):
  cell       edge bench models/differential-int8 --runs 300
  reference  edge bench models/mobilenetv2-int8 --runs 300
  field      edge bench models/differential-int8 --mode field --source replay:DATA/bccd-frames/JPEGImages --runs 200
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def configurations(data: Path) -> dict[str, list[str]]:
    return {
        "cell": ["models/differential-int8", "--runs", "300"],
        "reference": ["models/mobilenetv2-int8", "--runs", "300"],
        "field": [
            "models/differential-int8",
            "--mode",
            "field",
            "--source",
            f"replay:{data / 'bccd-frames' / 'JPEGImages'}",
            "--runs",
            "200",
        ],
    }


def checkout(rev_or_dir: str | None, out: Path) -> Path:
    """A folder holding the tree: this checkout (None), a folder, or a revision checked out once."""
    if rev_or_dir is None:
        return ROOT
    if Path(rev_or_dir).is_dir():
        return Path(rev_or_dir).resolve()
    sha = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{rev_or_dir}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    tree = out / f"tree-{sha[:10]}"
    if not tree.is_dir():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), sha], check=True)
    return tree


def tree_env(tree: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    env.pop("EDGE_MODELS", None)  # each tree's own models/
    return env


def check_imports_from(tree: Path) -> None:
    where = subprocess.run(
        [sys.executable, "-c", "import edge; print(edge.__file__)"],
        cwd=tree,
        env=tree_env(tree),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(where).resolve().is_relative_to(tree.resolve()):
        sys.exit(f"{tree}: `import edge` found {where}, not the tree's own package")


def bench(tree: Path, args: list[str], threads: str, json_path: Path) -> dict:
    command = [sys.executable, "-m", "edge.cli", "bench", *args, "--json", str(json_path)]
    if threads != "default":
        command += ["--threads", threads]
    r = subprocess.run(command, cwd=tree, env=tree_env(tree), capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{tree}: {' '.join(command[2:])} failed:\n{r.stderr[-2000:]}")
    return json.loads(json_path.read_text())


def figures(result: dict) -> dict[str, float]:
    """What the goal table reads from one run: field mode's ratio is over both models' invokes."""
    stages = result["stages"]
    ratio = result["field"]["overhead_ratio"] if "field" in result else result["overhead_ratio"]
    return {
        "ratio": ratio,
        "end_to_end_p50_ms": stages["end_to_end"]["p50_ms"],
        "invoke_p50_ms": stages["invoke"]["p50_ms"],
        "preprocess_p50_ms": stages["preprocess"]["p50_ms"],
        "throughput_fps": result["throughput_fps"],
        "serial_fps": result["serial_fps"],
        "threaded_fps": result["threaded_fps"],
        "peak_rss_mb": result["resources"]["peak_rss_mb"],
        "threads": result["backend"].get("threads"),
    }


def median_of(runs: list[dict]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in runs if r[key] is not None) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("before")
    parser.add_argument("after", nargs="?")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", default="default,1")
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("EDGE_DATA_DIR", ROOT.parent / "shared" / "data"))
    )
    parser.add_argument("--out", type=Path, default=Path("bench-trees"))
    parser.add_argument("--only", default="cell,reference,field")
    a = parser.parse_args()
    a.out = a.out.resolve()
    a.out.mkdir(parents=True, exist_ok=True)
    trees = {"before": checkout(a.before, a.out), "after": checkout(a.after, a.out)}
    for tree in trees.values():
        check_imports_from(tree)
    wanted = a.only.split(",")
    configs = {k: v for k, v in configurations(a.data.resolve()).items() if k in wanted}
    threads = a.threads.split(",")
    runs: dict[tuple[str, str, str], list[dict]] = {}
    for round_ in range(1, a.rounds + 1):
        for name, args in configs.items():
            for t in threads:
                for side, tree in trees.items():  # before, then at once after: the same machine state
                    path = a.out / f"{name}-threads{t}-{side}-round{round_}.json"
                    got = figures(bench(tree, args, t, path))
                    runs.setdefault((name, t, side), []).append(got)
                    print(
                        f"round {round_} {name:9s} threads {t:7s} {side:6s} ratio {got['ratio']:.2f}  "
                        f"e2e {got['end_to_end_p50_ms']:.2f} ms  invoke {got['invoke_p50_ms']:.2f} ms  "
                        f"{got['throughput_fps']:.1f} fps",
                        flush=True,
                    )
    summary = {
        "before": str(trees["before"]),
        "after": str(trees["after"]),
        "rounds": a.rounds,
        "rows": [
            {"config": name, "threads": t, "side": side, "median": median_of(r), "runs": r}
            for (name, t, side), r in runs.items()
        ],
    }
    (a.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nmedians of {a.rounds} rounds (before -> after); {a.out / 'summary.json'}\n")
    print(
        "| what | threads | ratio | end to end p50 ms | invoke p50 ms | preprocess p50 ms | fps (layout kept) | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in configs:
        for t in threads:
            b, f = median_of(runs[(name, t, "before")]), median_of(runs[(name, t, "after")])
            cells = [
                f"{b[k]:.2f} → {f[k]:.2f}"
                for k in ("ratio", "end_to_end_p50_ms", "invoke_p50_ms", "preprocess_p50_ms")
            ]
            cells += [
                f"{b['throughput_fps']:.0f} → {f['throughput_fps']:.0f}",
                f"{b['peak_rss_mb']:.0f} → {f['peak_rss_mb']:.0f}",
            ]
            print(f"| {name} | {t} ({b['threads']:.0f} → {f['threads']:.0f}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
