"""Progress bars for long host-side work (convert, calibration): a live tqdm bar on a terminal, one
plain line in a log.

Here rather than in convert/ so that calibration can use it without importing convert (dependencies
run one way, docs/design.md). tqdm comes with the train extra and is imported only when a bar is made,
so the device never needs it; device commands draw click's bar (edge/commands/_device_options.py).

Nested or redrawn bars written to a file or a pipe leave escape codes (`\\x1b[A`) in the log, so
off a terminal each job prints what it is doing once instead.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger(__name__)


def progress(iterable=None, *, total: int | None = None, desc: str | None = None, unit: str = "img", **kw):
    """tqdm(iterable, ...) on a terminal; a disabled bar (same API) plus one line elsewhere.

    Without `desc` the work is silent everywhere (inner steps of a job that has its own bar)."""
    from tqdm import tqdm

    live = sys.stderr.isatty() and desc is not None
    if not live and desc:
        count = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        log.info(f"{desc}: {count} {unit}" if count is not None else f"{desc}...")
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not live, **kw)
