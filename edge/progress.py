"""Progress bars for every long command: a live tqdm bar on a terminal (stderr); off a terminal, one
plain line in a log for host-side work (convert, calibration), nothing for device commands.

Here rather than in convert/ so that calibration can use it without importing convert (dependencies
run one way, docs/design.md). tqdm (pure Python, in the device extra and the train extra) is imported
only when a bar is made.

Nested or redrawn bars written to a file or a pipe leave escape codes (`\\x1b[A`) in the log, so
off a terminal a training job prints what it is doing once instead; a device command (eval, classify,
adapt, bench, report, review export) prints nothing, because its output there is data or a log.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger(__name__)


def progress(
    iterable=None,
    *,
    total: int | None = None,
    desc: str | None = None,
    unit: str = "img",
    note: bool = True,
    **kw,
):
    """tqdm(iterable, ...) on a terminal; a disabled bar (same API) elsewhere, plus one line in the log
    when `note` (host-side jobs; device commands pass note=False: their stdout may be data).

    Without `desc` the work is silent everywhere (inner steps of a job that has its own bar)."""
    from tqdm import tqdm

    live = sys.stderr.isatty() and desc is not None
    if not live and desc and note:
        count = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        log.info(f"{desc}: {count} {unit}" if count is not None else f"{desc}...")
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not live, **kw)
