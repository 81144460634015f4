"""Run an `edge` command as a person at a terminal would: stderr on a pseudo-terminal (so isatty() is
true and progress bars draw), stdout captured. For the progress-bar tests."""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import sys
import termios
from pathlib import Path


def edge_at_terminal(*args, cwd: Path, timeout: int = 300) -> tuple[int, str, str]:
    """(exit code, stdout, what the terminal showed on stderr)."""
    master, slave = os.openpty()
    # a terminal of 24 x 120: a pty starts at 0 x 0, where tqdm draws a bar of no width
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge.cli", *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=slave,
            cwd=cwd,
        )
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not data:
                break
            chunks.append(data)
        out = proc.stdout.read().decode()
        code = proc.wait(timeout)
    finally:
        os.close(master)
    return code, out, b"".join(chunks).decode(errors="replace")
