"""The results database: SQLite in WAL mode, one transaction per frame.

Why WAL: readers (the page, `sqlite3` in a shell, a LIMS export) never block the writer, and a
process killed at any instant leaves the database consistent; the WAL is replayed on next open.

Why synchronous=FULL by default: in WAL mode NORMAL already survives a killed process, but on power
loss it may roll back the last few commits, and a microscope's Raspberry Pi loses power (someone
pulls the plug). FULL syncs the WAL at each commit, so a result reported is a result on disk. It
costs one fsync per frame (measured in docs/daemon.md); `store.synchronous = "normal"` trades that
back on slow SD cards.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 1

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
    UNIQUE (session_id, frame_id, crop_index),
    FOREIGN KEY (session_id, frame_id) REFERENCES frames(session_id, frame_id)
);
CREATE INDEX IF NOT EXISTS results_by_session ON results(session_id, label);
"""


@dataclass
class ResultRow:
    crop_index: int
    box: tuple[int, int, int, int]
    label: str
    confidence: float
    probabilities: dict[str, float]
    uncertain: bool
    timings_ms: dict[str, float]


class ResultStore:
    """Written by the pipeline thread only; the lock makes the odd read from another thread safe."""

    def __init__(self, path: str | Path, synchronous: str = "full"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
        self.lock = threading.Lock()
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
        self.db.execute("PRAGMA foreign_keys=ON")
        with self.lock:
            self.db.executescript("BEGIN;" + SCHEMA + f"PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")
        self.session_id: str | None = None
        self.model_sha = ""

    def journal_mode(self) -> str:
        return self.db.execute("PRAGMA journal_mode").fetchone()[0]

    def start_session(self, session_id: str, model_sha: str, bundle: str, source: str, mode: str, config: dict) -> None:
        """Create the session, or continue it (same slide after a restart): its counts carry on."""
        self.session_id, self.model_sha = session_id, model_sha
        with self.lock:
            self.db.execute(
                "INSERT INTO sessions(id, started, model_sha, bundle, source, mode, host, config) VALUES (?,?,?,?,?,?,?,?)"
                " ON CONFLICT(id) DO UPDATE SET ended = NULL",
                (session_id, time.time(), model_sha, bundle, source, mode, socket.gethostname(), json.dumps(config)),
            )

    def next_frame_id(self) -> int:
        row = self.db.execute("SELECT COALESCE(MAX(frame_id), -1) FROM frames WHERE session_id = ?", (self.session_id,)).fetchone()
        return int(row[0]) + 1

    def done_refs(self, source: str) -> set[str]:
        """Every source_ref already taken from `source`, in any session (hot-folder dedup)."""
        rows = self.db.execute("SELECT source_ref FROM frames WHERE source = ?", (source,)).fetchall()
        return {r[0] for r in rows}

    def session_counts(self) -> tuple[dict[str, int], int]:
        """Label counts and the uncertain count recorded so far in this session."""
        rows = self.db.execute(
            "SELECT label, COUNT(*), SUM(uncertain) FROM results WHERE session_id = ? GROUP BY label", (self.session_id,)
        ).fetchall()
        return {r[0]: int(r[1]) for r in rows}, sum(int(r[2] or 0) for r in rows)

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
                    " uncertain, model_sha, timings) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    [
                        (self.session_id, frame_id, r.crop_index, ts, json.dumps(list(r.box)), r.label,
                         round(r.confidence, 6), json.dumps({k: round(v, 6) for k, v in r.probabilities.items()}),
                         int(r.uncertain), self.model_sha, json.dumps({k: round(v, 3) for k, v in r.timings_ms.items()}))
                        for r in rows
                    ],
                )
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

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
