"""The daemon's side of results.db: sessions, frames and cells written one transaction per frame, and
what the daemon reads back to carry on (a restarted session, a hot folder's files). Written by the
pipeline thread only; the schema and the connection are edge/results/schema.py's.

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

A full disk (or `store.max_db_mb` reached) never stops classification: a write that SQLite refuses
as full raises StoreFull with nothing half-written, the store sink keeps the frame's rows and
retries them in order when space returns (edge/daemon/sinks.py), and a store opened on a full disk
starts anyway, writing nothing until it can.
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

from edge.catalogue import UNKNOWN
from edge.results.schema import ResultsError, StoreFull, connect, full_disk_guard, prepare
from edge.results.sites import SiteRecord, flag_cells, read_site, write_site


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


@dataclass
class SessionCounts:
    """What a restarted daemon reads back from the database to continue a session's count."""

    counts: dict[str, int]  # known labels, all cells
    confident: dict[str, int]  # known labels, cells not flagged uncertain
    uncertain: int
    unknown: int


class ResultStore:
    """Written by the pipeline thread only; the lock makes the odd read from another thread safe.
    ResultsError (or OSError for its folder) when the database cannot be opened."""

    def __init__(
        self,
        path: str | Path,
        synchronous: str = "normal",
        fsync_interval_s: float = 1.0,
        max_db_mb: float = 0.0,
    ):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)  # OSError: the caller names the setting
        try:
            self.db = connect(self.path)
        except sqlite3.Error as exc:
            raise ResultsError(str(exc)) from None
        self.lock = threading.Lock()
        self.session_id: str | None = None
        self.model_sha = ""
        self.synchronous = synchronous
        self.fsync_interval_s = fsync_interval_s
        self._synced_at = time.monotonic()
        self._wal = None
        self._session_row: tuple | None = None  # a session start still to be written (full disk)
        self._site: SiteRecord | None = None  # the microscope's state still to be written
        self._flag: str | None = None  # a flag for every cell of the session still to be set
        self.max_db_mb = max_db_mb
        self.ready = False  # schema in place; False while a full disk keeps it from being written
        try:
            self._prepare()
        except StoreFull:
            pass  # start anyway: StoreSink retries, and nothing is classified the less
        except sqlite3.Error as exc:  # not a database, read-only, ...
            self.db.close()
            raise ResultsError(str(exc)) from None

    def _prepare(self) -> None:
        """WAL mode, settings and the schema (edge.results.schema.prepare: no write when current)."""
        with self.lock:
            with full_disk_guard(self.db):
                prepare(self.db, self.synchronous, self.max_db_mb)
            self.ready = True

    def _write(self, statements) -> None:
        """Run `statements(db)` in one transaction; StoreFull (and nothing written) when it is full."""
        with self.lock, full_disk_guard(self.db):
            self.db.execute("BEGIN IMMEDIATE")
            statements(self.db)
            self.db.execute("COMMIT")

    def flush_pending(self) -> None:
        """The schema, the session start, the microscope's state and the gate's flag, if a full disk
        kept them back (StoreFull while it still is). The flag is set before any later row is written:
        rows still waiting (edge/daemon/sinks.py StoreSink) carry it already."""
        if not self.ready:
            self._prepare()
        if self._session_row is not None:
            row = self._session_row
            self._write(
                lambda db: db.execute(
                    "INSERT INTO sessions(id, started, model_sha, bundle, source, mode, host, config) VALUES (?,?,?,?,?,?,?,?)"
                    " ON CONFLICT(id) DO UPDATE SET ended = NULL",
                    row,
                )
            )
            self._session_row = None
        if self._site is not None:
            site = self._site
            self._write(lambda db: write_site(db, self.session_id, site))
            self._site = None
        if self._flag is not None:
            reason = self._flag
            self._write(lambda db: flag_cells(db, self.session_id, reason))
            self._flag = None

    def record_site(self, record: SiteRecord) -> None:
        """The session's microscope as it is now (edge/site.py SiteState): written now, or with the
        next frame that fits on a full disk."""
        self._site = record
        try:
            self.flush_pending()
        except StoreFull:
            pass

    def flag_session(self, reason: str) -> None:
        """Every cell of this session recorded so far needs a look for `reason` (the gate found the
        microscope differs): set now, or before the next frame is written on a full disk."""
        self._flag = reason
        try:
            self.flush_pending()
        except StoreFull:
            pass

    def site_record(self) -> SiteRecord | None:
        """What this session's microscope was when it last ran (a continued slide)."""
        if not self.ready:
            return None
        return read_site(self.db, self.session_id)

    def journal_mode(self) -> str:
        return self.db.execute("PRAGMA journal_mode").fetchone()[0]

    def start_session(
        self, session_id: str, model_sha: str, bundle: str, source: str, mode: str, config: dict
    ) -> None:
        """Create the session, or continue it (same slide after a restart): its counts carry on."""
        self.session_id, self.model_sha = session_id, model_sha
        self._session_row = (
            session_id,
            time.time(),
            model_sha,
            bundle,
            source,
            mode,
            socket.gethostname(),
            json.dumps(config),
        )
        try:
            self.flush_pending()
        except StoreFull:
            pass  # written with the first rows that fit

    def next_frame_id(self) -> int:
        if not self.ready:
            return 0
        row = self.db.execute(
            "SELECT COALESCE(MAX(frame_id), -1) FROM frames WHERE session_id = ?", (self.session_id,)
        ).fetchone()
        return int(row[0]) + 1

    def done_refs(self, source: str) -> set[str]:
        """Every source_ref already taken from `source`, in any session (hot-folder dedup)."""
        if not self.ready:
            return set()
        rows = self.db.execute("SELECT source_ref FROM frames WHERE source = ?", (source,)).fetchall()
        return {r[0] for r in rows}

    def session_counts(self) -> SessionCounts:
        """The counts recorded so far in this session, to continue its differential after a restart."""
        if not self.ready:
            return SessionCounts({}, {}, 0, 0)
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
        """The frame and all its results in one transaction: after a crash, all of it or none.
        StoreFull when the disk is full (nothing written)."""
        self.flush_pending()

        def statements(db):
            db.execute(
                "INSERT INTO frames(session_id, frame_id, ts, source, source_ref, status, n_results) VALUES (?,?,?,?,?,?,?)",
                (self.session_id, frame_id, ts, source, ref, "classified", len(rows)),
            )
            db.executemany(
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

        self._write(statements)
        with self.lock:
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

    def write_skipped(
        self, frame_id: int, ts: float, source: str, ref: str, reason: str, file_stat: str = ""
    ) -> None:
        """A corrupt frame or file; `file_stat` (size and mtime) lets a hot folder retry it once it changes."""
        self.flush_pending()
        self._write(
            lambda db: db.execute(
                "INSERT INTO frames(session_id, frame_id, ts, source, source_ref, status, detail, n_results, file_stat)"
                " VALUES (?,?,?,?,?,?,?,0,?)",
                (self.session_id, frame_id, ts, source, ref, "corrupt", reason, file_stat),
            )
        )

    def session_totals(self) -> dict[str, int]:
        """Frames (classified and corrupt) and cells recorded so far in this session."""
        if not self.ready:
            return {"frames": 0, "corrupt": 0, "cells": 0}
        frames, corrupt = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(status = 'corrupt'), 0) FROM frames WHERE session_id = ?",
            (self.session_id,),
        ).fetchone()
        cells = self.db.execute(
            "SELECT COUNT(*) FROM results WHERE session_id = ?", (self.session_id,)
        ).fetchone()[0]
        return {"frames": int(frames), "corrupt": int(corrupt), "cells": int(cells)}

    def flagged_cells(
        self, alert_classes: set[str], uncertain: bool = True, session_id: str | None = None
    ) -> set[tuple[int, int]]:
        """(frame_id, crop_index) of the committed rows of this session (or `session_id`) the archive
        keeps an image of (edge.daemon.archive.FlaggedArchive.reason)."""
        if not self.ready:
            return set()
        rows = self.db.execute(
            "SELECT frame_id, crop_index, label, uncertain FROM results WHERE session_id = ?",
            (session_id or self.session_id,),
        ).fetchall()
        return {(f, c) for f, c, label, flag in rows if (flag and uncertain) or label in alert_classes}

    def session_config(self, session_id: str) -> dict | None:
        """The configuration a session was recorded with (as `without_secrets` wrote it), or None
        when `session_id` is not a session of this database."""
        if not self.ready:
            return None
        row = self.db.execute("SELECT config FROM sessions WHERE id = ?", (session_id,)).fetchone()
        if row is None:
            return None
        try:
            return json.loads(row[0])
        except ValueError:
            return {}

    def corrupt_refs(self, source: str) -> dict[str, str]:
        """source_ref -> file_stat of the files of `source` last recorded corrupt (hot-folder retry)."""
        if not self.ready:
            return {}
        rows = self.db.execute(
            "SELECT source_ref, file_stat, status FROM frames WHERE source = ? ORDER BY rowid", (source,)
        ).fetchall()
        last: dict[str, tuple[str, str]] = {}
        for ref, stat, status in rows:
            last[ref] = (status, stat or "")
        return {ref: stat for ref, (status, stat) in last.items() if status == "corrupt"}

    def close(self) -> None:
        """End the session and fold the WAL into the main file (so a copied .db is complete); on a
        full disk both may fail, and the next start replays the WAL as it is: nothing committed is lost."""
        try:
            if self.session_id and self.ready and self._session_row is None:
                now = time.time()
                self._write(
                    lambda db: db.execute(
                        "UPDATE sessions SET ended = ? WHERE id = ?", (now, self.session_id)
                    )
                )
            with self.lock:
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except (StoreFull, sqlite3.OperationalError):
            pass
        finally:
            with self.lock:
                self.db.close()
                if self._wal is not None:
                    self._wal.close()
