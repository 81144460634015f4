"""`edge run` as a user starts it: a real subprocess, for the daemon tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def edge_run(*args, cwd: Path) -> subprocess.CompletedProcess:
    # Not under a service manager, and no token from the caller's environment.
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "EDGE_RUN_TOKEN")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", "run", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )
