"""The results database: SQLite in WAL mode, one transaction per frame.

Why WAL: readers (the page, `sqlite3` in a shell, a LIMS export) never block the writer, and a
process killed at any instant leaves the database consistent; the WAL is replayed on next open.

Why synchronous=NORMAL (+ a WAL fsync every second) by default, not FULL:
- a killed or crashed process loses nothing either way: in WAL mode every COMMIT is in the OS's
  hands before it returns (tested with kill -9);
- FULL adds an fsync to every frame, several times a NORMAL commit (docs/daemon.md has the numbers),
  half of MobileNetV2's invoke() time, and on a Raspberry Pi's SD card it is slower and wears the card
  (10 frames/s all day is ~860,000 flushes a day);
- on power loss NORMAL keeps the database consistent but may roll back the commits since the last
  sync. The store fsyncs the WAL at most every `fsync_interval_s` (1 s), bounding that window to about
  a second of frames, whose cells are still on the slide under the objective.
`store.synchronous = "full"` gives per-commit durability for those who want it.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edge.daemon.differential import SessionCounts
from edge.predict import UNKNOWN

SCHEMA_VERSION = 3  # 3: results.track_id, results.detector_score (field mode)

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
"""


# Columns added since schema 1, with their types: an older results.db gains them at the next start.
_ADDED_COLUMNS = {
    "results": {"reason": "TEXT", "rejection_score": "REAL", "track_id": "INTEGER", "detector_score": "REAL"}
}


@dataclass
class ResultRow:
    crop_index: int
    box: tuple[int, int, int, int]
    label: str
    confidence: float
    probabilities: dict[str, float]
    uncertain: bool
    timings_ms: dict[str, float]
    reason: str | None = None
    rejection_score: float | None = None
    track_id: int | None = None
    detector_score: float | None = None


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


class ResultStore:
    """Written by the pipeline thread only; the lock makes the odd read from another thread safe."""

    def __init__(self, path: str | Path, synchronous: str = "normal", fsync_interval_s: float = 1.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
        self.lock = threading.Lock()
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
        self.db.execute("PRAGMA foreign_keys=ON")
        with self.lock:
            self.db.executescript(
                "BEGIN;" + SCHEMA + _migrations(self.db) + f"PRAGMA user_version={SCHEMA_VERSION}; COMMIT;"
            )
        self.session_id: str | None = None
        self.model_sha = ""
        self.synchronous = synchronous
        self.fsync_interval_s = fsync_interval_s
        self._synced_at = time.monotonic()
        self._wal = None

    def journal_mode(self) -> str:
        return self.db.execute("PRAGMA journal_mode").fetchone()[0]

    def start_session(
        self, session_id: str, model_sha: str, bundle: str, source: str, mode: str, config: dict
    ) -> None:
        """Create the session, or continue it (same slide after a restart): its counts carry on."""
        self.session_id, self.model_sha = session_id, model_sha
        with self.lock:
            self.db.execute(
                "INSERT INTO sessions(id, started, model_sha, bundle, source, mode, host, config) VALUES (?,?,?,?,?,?,?,?)"
                " ON CONFLICT(id) DO UPDATE SET ended = NULL",
                (
                    session_id,
                    time.time(),
                    model_sha,
                    bundle,
                    source,
                    mode,
                    socket.gethostname(),
                    json.dumps(config),
                ),
            )

    def next_frame_id(self) -> int:
        row = self.db.execute(
            "SELECT COALESCE(MAX(frame_id), -1) FROM frames WHERE session_id = ?", (self.session_id,)
        ).fetchone()
        return int(row[0]) + 1

    def done_refs(self, source: str) -> set[str]:
        """Every source_ref already taken from `source`, in any session (hot-folder dedup)."""
        rows = self.db.execute("SELECT source_ref FROM frames WHERE source = ?", (source,)).fetchall()
        return {r[0] for r in rows}

    def session_counts(self) -> SessionCounts:
        """The counts recorded so far in this session, to continue its differential after a restart."""
        rows = self.db.execute(
            "SELECT label, COUNT(*), SUM(uncertain) FROM results WHERE session_id = ? GROUP BY label",
            (self.session_id,),
        ).fetchall()
        known = [r for r in rows if r[0] != UNKNOWN]
        return SessionCounts(
            counts={r[0]: int(r[1]) for r in known},
            confident={r[0]: int(r[1]) - int(r[2] or 0) for r in known if int(r[1]) > int(r[2] or 0)},
            uncertain=sum(int(r[2] or 0) for r in rows),
            unknown=sum(int(r[1]) for r in rows if r[0] == UNKNOWN),
        )

    def write_frame(self, frame_id: int, ts: float, source: str, ref: str, rows: list[ResultRow]) -> None:
        """The frame and all its results in one transaction: after a crash, all of it or none."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.execute(
                    "INSERT INTO frames(session_id, frame_id, ts, source, source_ref, status, n_results) VALUES (?,?,?,?,?,?,?)",
                    (self.session_id, frame_id, ts, source, ref, "classified", len(rows)),
                )
                self.db.executemany(
                    "INSERT INTO results(session_id, frame_id, crop_index, ts, box, label, confidence, probabilities,"
                    " uncertain, model_sha, timings, reason, rejection_score, track_id, detector_score)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    [
                        (
                            self.session_id,
                            frame_id,
                            r.crop_index,
                            ts,
                            json.dumps(list(r.box)),
                            r.label,
                            round(r.confidence, 6),
                            json.dumps({k: round(v, 6) for k, v in r.probabilities.items()}),
                            int(r.uncertain),
                            self.model_sha,
                            json.dumps({k: round(v, 3) for k, v in r.timings_ms.items()}),
                            r.reason,
                            None if r.rejection_score is None else round(r.rejection_score, 4),
                            r.track_id,
                            None if r.detector_score is None else round(r.detector_score, 4),
                        )
                        for r in rows
                    ],
                )
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self._sync_wal_if_due()

    def _sync_wal_if_due(self) -> None:
        """NORMAL mode: flush the WAL to the device now and then, bounding what a power cut can take."""
        if self.synchronous == "full" or not self.fsync_interval_s:
            return
        now = time.monotonic()
        if now - self._synced_at < self.fsync_interval_s:
            return
        self._synced_at = now
        try:
            if self._wal is None:
                self._wal = open(f"{self.path}-wal", "rb")  # noqa: SIM115 - kept open for the run
            os.fsync(self._wal.fileno())
        except OSError:
            self._wal = None  # the WAL was checkpointed away and recreated: reopen next time

    def write_skipped(self, frame_id: int, ts: float, source: str, ref: str, reason: str) -> None:
        with self.lock:
            self.db.execute(
                "INSERT INTO frames(session_id, frame_id, ts, source, source_ref, status, detail, n_results)"
                " VALUES (?,?,?,?,?,?,?,0)",
                (self.session_id, frame_id, ts, source, ref, "corrupt", reason),
            )

    def close(self) -> None:
        with self.lock:
            if self.session_id:
                self.db.execute("UPDATE sessions SET ended = ? WHERE id = ?", (time.time(), self.session_id))
            # A checkpoint folds the WAL back into the main file so a copied .db is complete.
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self.db.close()
            if self._wal is not None:
                self._wal.close()
