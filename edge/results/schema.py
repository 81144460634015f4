"""The tables of results.db, how an older database is brought up to them, and how every connection to
it is opened. The only module of edge that imports sqlite3's connect (tests/test_layout.py).

Why WAL: readers (the page, `sqlite3` in a shell, a LIMS export) never block the writer, and a
process killed at any instant leaves the database consistent; the WAL is replayed on next open.
Why synchronous=NORMAL by default: see edge/results/store.py.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edge.errors import EdgeError

# 3: results.track_id, results.detector_score (field mode); 4: session_sites, or reviews.seconds (two
# branches each made a version 4); 5: both, so a version 4 database of either kind is brought up to it.
SCHEMA_VERSION = 5

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id          TEXT PRIMARY KEY,
    started     REAL NOT NULL,
    ended       REAL,
    model_sha   TEXT NOT NULL,
    bundle      TEXT NOT NULL,
    source      TEXT NOT NULL,
    mode        TEXT NOT NULL,
    host        TEXT NOT NULL,
    config      TEXT NOT NULL
);
-- One row per frame taken from the source: classified or skipped (corrupt). The hot folder's
-- "already processed" memory is this table.
CREATE TABLE IF NOT EXISTS frames (
    session_id  TEXT NOT NULL REFERENCES sessions(id),
    frame_id    INTEGER NOT NULL,
    ts          REAL NOT NULL,
    source      TEXT NOT NULL,
    source_ref  TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('classified', 'corrupt')),
    detail      TEXT NOT NULL DEFAULT '',
    n_results   INTEGER NOT NULL,
    file_stat   TEXT,  -- a hot folder's corrupt file: "size:mtime_ns", to retry it once it changes
    PRIMARY KEY (session_id, frame_id)
);
CREATE INDEX IF NOT EXISTS frames_by_source ON frames(source, source_ref);
-- One row per classified crop (cell mode: one per frame; field mode: one per cell found).
CREATE TABLE IF NOT EXISTS results (
    id            INTEGER PRIMARY KEY,
    session_id    TEXT NOT NULL,
    frame_id      INTEGER NOT NULL,
    crop_index    INTEGER NOT NULL,
    ts            REAL NOT NULL,
    box           TEXT NOT NULL,
    label         TEXT NOT NULL,
    confidence    REAL NOT NULL,
    probabilities TEXT NOT NULL CHECK (json_valid(probabilities)),
    uncertain     INTEGER NOT NULL CHECK (uncertain IN (0, 1)),
    model_sha     TEXT NOT NULL,
    timings       TEXT NOT NULL CHECK (json_valid(timings)),
    reason        TEXT,  -- why it needs a look: unknown, low confidence, small margin (NULL: it does not)
    rejection_score REAL,  -- distance to the training cells, for bundles with rejection
    track_id      INTEGER,  -- field mode: the tracked cell (one row per cell, at its first sighting)
    detector_score REAL,  -- field mode: the detector's confidence in the box
    UNIQUE (session_id, frame_id, crop_index),
    FOREIGN KEY (session_id, frame_id) REFERENCES frames(session_id, frame_id)
);
CREATE INDEX IF NOT EXISTS results_by_session ON results(session_id, label);
-- A technician's look at one cell (edge/results/reviews.py): confirmed or reclassified. Append-only and
-- never written into `results`, so the model's answer stays as it was; a cell's latest review wins.
CREATE TABLE IF NOT EXISTS reviews (
    id          INTEGER PRIMARY KEY,
    result_id   INTEGER NOT NULL REFERENCES results(id),
    session_id  TEXT NOT NULL,
    label       TEXT NOT NULL,
    reviewer    TEXT NOT NULL,
    ts          REAL NOT NULL,
    seconds     REAL  -- how long the cell was shown before this decision (NULL: not timed)
);
CREATE INDEX IF NOT EXISTS reviews_by_session ON reviews(session_id, result_id);
-- Signing a slide, and re-opening it: an event log, the latest event of a session is its state. A
-- signature covers the session's cells up to last_result_id (a live slide may gain cells after it).
CREATE TABLE IF NOT EXISTS signoffs (
    id              INTEGER PRIMARY KEY,
    session_id      TEXT NOT NULL REFERENCES sessions(id),
    action          TEXT NOT NULL CHECK (action IN ('sign', 'reopen')),
    name            TEXT NOT NULL,
    ts              REAL NOT NULL,
    cells           INTEGER NOT NULL,
    last_result_id  INTEGER NOT NULL,
    note            TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS signoffs_by_session ON signoffs(session_id);
-- The microscope of a session (edge/site.py, edge/results/sites.py): the bundle calibrated to it or
-- not, the scale its cells were cut at, and the gate's decision on its first white cells; written
-- by the daemon whenever it changes, so a report made later says what the page said.
CREATE TABLE IF NOT EXISTS session_sites (
    session_id      TEXT PRIMARY KEY REFERENCES sessions(id),
    model_sha       TEXT NOT NULL,
    calibrated      INTEGER NOT NULL CHECK (calibrated IN (0, 1)),
    name            TEXT,     -- the calibrated site's name
    calibrated_at   TEXT,
    held_back_accuracy REAL,  -- the calibrated bundle's accuracy on the site's held-back cells
    scale_rbc_px    REAL,     -- the red-cell diameter the cells were cut at, pixels
    scale_source    TEXT,     -- site | measured | given (NULL: not cut at a physical size)
    decision        TEXT NOT NULL,  -- checking | matches | differs | unavailable (no gate)
    cells_checked   INTEGER NOT NULL,
    decided_at      INTEGER,  -- cells seen when the gate decided
    median_score    REAL,     -- the gate's statistic when it last looked
    updated         REAL NOT NULL
);
"""

# What the MQTT publisher adds (edge/results/outbox.py), created when it first starts: a database
# that never had MQTT has no outbox, and the first start chooses whether to send what is already there.
OUTBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS mqtt_outbox (
    stream        TEXT PRIMARY KEY,   -- 'cells': rows of results; 'events': rows of mqtt_events
    acked_through INTEGER NOT NULL,   -- every row id <= this was acknowledged by the broker
    updated       REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS mqtt_events (
    id      INTEGER PRIMARY KEY,
    msg_id  TEXT NOT NULL UNIQUE,
    topic   TEXT NOT NULL,            -- below PREFIX/DEVICE/, e.g. 'alerts'
    payload TEXT NOT NULL CHECK (json_valid(payload)),
    created REAL NOT NULL
);
"""

# Columns added since schema 1, with their types: an older results.db gains them at the next start.
_ADDED_COLUMNS = {
    "results": {"reason": "TEXT", "rejection_score": "REAL", "track_id": "INTEGER", "detector_score": "REAL"},
    "frames": {"file_stat": "TEXT"},
    "reviews": {"seconds": "REAL"},
}


class ResultsError(EdgeError):
    """A results database, a session or a change to it that cannot be used or made; `status` is what
    the review page's HTTP answer says."""

    exit_code = 2

    def __init__(self, message: str, status: int = 409):
        super().__init__(message)
        self.status = status


class StoreFull(Exception):
    """SQLite refused a write because the disk (or store.max_db_mb) is full; nothing was written."""


def connect(path: str | Path, rows: bool = False) -> sqlite3.Connection:
    """A connection of its own to results.db, usable from any thread under its owner's lock, in
    autocommit mode (each owner says where its transactions begin). Read-write even for a reader:
    SQLite then uses the WAL of a database the daemon is still writing. `rows`: rows by column name."""
    db = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
    if rows:
        db.row_factory = sqlite3.Row
    return db


def set_synchronous(db: sqlite3.Connection, synchronous: str) -> None:
    db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")


def is_full(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.OperationalError):
        return "full" in str(exc).lower() or "disk i/o error" in str(exc).lower()
    return isinstance(exc, OSError) and exc.errno == errno.ENOSPC


@contextmanager
def full_disk_guard(db: sqlite3.Connection) -> Iterator[None]:
    """On any failure inside: roll back what was begun; a full disk becomes StoreFull."""
    try:
        yield
    except BaseException as exc:
        if db.in_transaction:
            db.execute("ROLLBACK")
        if is_full(exc):
            raise StoreFull(str(exc)) from None
        raise


def _migrations(db: sqlite3.Connection) -> str:
    """ALTER TABLE statements that bring an older results.db up to this schema (nothing is lost)."""
    statements = []
    for table, columns in _ADDED_COLUMNS.items():
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if not have:
            continue  # a new database: CREATE TABLE has every column
        statements += [
            f"ALTER TABLE {table} ADD COLUMN {name} {kind};"
            for name, kind in columns.items()
            if name not in have
        ]
    return "".join(statements)


def prepare(db: sqlite3.Connection, synchronous: str = "normal", max_db_mb: float = 0.0) -> None:
    """WAL mode, settings and the schema; writes only when the schema is not already current, so a
    database on a full disk that is up to date opens without writing. Call under full_disk_guard."""
    db.execute("PRAGMA journal_mode=WAL")
    set_synchronous(db, synchronous)
    db.execute("PRAGMA foreign_keys=ON")
    if max_db_mb:
        page = db.execute("PRAGMA page_size").fetchone()[0]
        # SQLite keeps at least the pages the database has: it never shrinks it.
        db.execute(f"PRAGMA max_page_count={max(1, int(max_db_mb * 1e6 / page))}")
    current = db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    migrations = _migrations(db)
    if not current or migrations:
        db.executescript("BEGIN;" + SCHEMA + migrations + f"PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")


def upgrade_existing(path: str | Path) -> None:
    """A results.db opened outside the daemon (report, export): one line when it is not one, and
    brought up to this schema, so a database from before reviews gains the (empty) tables it lacks.
    A full disk leaves it as it is: what it holds can still be read."""
    if not Path(path).is_file():
        raise ResultsError(f"{path}: no such database")
    db = connect(path)
    try:
        try:
            db.execute("SELECT 1 FROM sessions LIMIT 1")
        except sqlite3.Error as exc:
            raise ResultsError(f"{path}: not a results database ({exc})") from None
        try:
            with full_disk_guard(db):
                prepare(db)
        except StoreFull:
            pass
    finally:
        db.close()
