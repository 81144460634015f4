"""SIGTERM and SIGINT caught from the first moment `edge run` starts, before the daemon exists.

systemd (or a user) may stop the service while it is still loading the model. The default action
would end the process at once (exit 143, no database, no summary); instead the signal is noted here
and the daemon, once loaded, starts its shutdown straight away: it opens the database, records the
session and exits 0 like any other SIGTERM.
"""

from __future__ import annotations

import signal

received: list[int] = []


def _note(signum, _frame) -> None:
    received.append(signum)


def catch() -> None:
    """Called by the CLI before anything slow is imported."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _note)
