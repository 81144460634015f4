"""A session's microscope as results.db keeps it (table session_sites): what edge/site.py's SiteState
said while the daemon ran, so that the report and FHIR made later from the database say the same,
and the flag the gate puts on every cell of a microscope that differs.

Written by the daemon's store (edge/results/store.py), read by everyone through
edge/results/sessions.py; SiteState.from_record / to_record (edge/site.py) convert.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class SiteRecord:
    """A row of session_sites (the columns of the same names)."""

    model_sha: str
    calibrated: bool
    name: str | None
    calibrated_at: str | None
    held_back_accuracy: float | None
    scale_rbc_px: float | None
    scale_source: str | None
    decision: str  # checking | matches | differs | unavailable
    cells_checked: int
    decided_at: int | None = None
    median_score: float | None = None


_COLUMNS = [f.name for f in fields(SiteRecord)]


def write_site(db: sqlite3.Connection, session_id: str, record: SiteRecord) -> None:
    """Insert or replace the session's row (inside the caller's transaction)."""
    values = asdict(record)
    values["calibrated"] = int(record.calibrated)
    names = ["session_id", *_COLUMNS, "updated"]
    db.execute(
        f"INSERT INTO session_sites({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
        f" ON CONFLICT(session_id) DO UPDATE SET {', '.join(f'{n} = excluded.{n}' for n in names[1:])}",
        [session_id, *(values[n] for n in _COLUMNS), time.time()],
    )


def read_site(db: sqlite3.Connection, session_id: str) -> SiteRecord | None:
    """The session's row, or None (a session recorded before the site was kept, or by a model that
    never classified a cell)."""
    row = db.execute(
        f"SELECT {', '.join(_COLUMNS)} FROM session_sites WHERE session_id = ?", (session_id,)
    ).fetchone()
    if row is None:
        return None
    values = dict(zip(_COLUMNS, tuple(row), strict=True))
    return SiteRecord(**{**values, "calibrated": bool(values["calibrated"])})


def flag_cells(db: sqlite3.Connection, session_id: str, reason: str) -> int:
    """Every cell of the session needs a look for `reason` (uncertain, the reason added to any it
    had); the model's label and scores stay as they were. Returns the rows changed."""
    return db.execute(
        "UPDATE results SET uncertain = 1,"
        " reason = CASE WHEN reason IS NULL OR reason = '' THEN ? ELSE reason || '; ' || ? END"
        " WHERE session_id = ? AND (reason IS NULL OR instr(reason, ?) = 0)",
        (reason, reason, session_id, reason),
    ).rowcount
