"""`edge` as a user starts it: a real subprocess (`edge_cli` for any command, `edge_run` for the daemon)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def edge_cli(
    *args, cwd: Path = ROOT, env: dict | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    """`python -m edge.cli ARGS` in `cwd` (the project by default), output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


def edge_run(
    *args, cwd: Path, entry: Path | None = None, env: dict | None = None
) -> subprocess.CompletedProcess:
    """`entry`: a script that calls edge.cli.main() itself (to plant a fault the daemon must survive);
    `env`: extra environment variables."""
    # Not under a service manager, and no token from the caller's environment.
    full_env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "EDGE_RUN_TOKEN")}
    full_env.update({"TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})})
    return subprocess.run(
        [sys.executable, *([str(entry)] if entry else ["-m", "edge.cli"]), "run", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=120,
    )


def replay_summary(
    bundle: Path, frames: Path, tmp_path: Path, *args
) -> tuple[subprocess.CompletedProcess, dict]:
    """`edge run --source replay:FRAMES` into tmp_path/r.db with no page, to the end of the folder; the
    run and its summary (tmp_path/s.json). It must exit 0."""
    r = edge_run(
        "--bundle",
        bundle,
        "--source",
        f"replay:{frames}",
        "--db",
        tmp_path / "r.db",
        "--http",
        "off",
        "--summary-json",
        tmp_path / "s.json",
        *args,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return r, json.loads((tmp_path / "s.json").read_text())
