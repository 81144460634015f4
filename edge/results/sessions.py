"""Recorded sessions and their cells, read by everyone but the daemon's writer (edge/results/store.py):
the review page, the report, FHIR and the export. Each reader has a connection of its own; in WAL
mode it never blocks the pipeline's writes.

Queries name their columns: other work adds columns to `results`.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

from edge.catalogue import UNKNOWN
from edge.results.schema import ResultsError, connect, upgrade_existing
from edge.results.sites import SiteRecord, read_site

_SESSION_COLUMNS = "id, started, ended, model_sha, bundle, source, mode, host, config"


@dataclass(frozen=True)
class SessionRecord:
    """A row of `sessions`: when, on which host, with which model, source and configuration."""

    id: str
    started: float
    ended: float | None
    model_sha: str
    bundle: str  # the bundle directory the daemon loaded
    source: str
    mode: str
    host: str
    config: dict  # as the daemon recorded it (without secrets)

    @classmethod
    def from_row(cls, row) -> SessionRecord:
        try:
            config = json.loads(row["config"] or "{}")
        except ValueError:
            config = {}
        return cls(**{**dict(row), "config": config})

    @property
    def alert_classes(self) -> list[str]:
        """The session's archive.alert_classes, as the daemon was configured when it recorded it."""
        return list((self.config.get("archive") or {}).get("alert_classes") or [])


class ResultsReader:
    """Sessions and cells of one results.db. `ResultsReader.existing(path)` for a database the daemon
    wrote (one line when it is not one, brought up to this schema); the daemon, which has just
    opened its store, constructs it directly."""

    def __init__(self, db: str | Path):
        self.path = Path(db)
        self.db = connect(self.path, rows=True)
        self.lock = threading.RLock()

    @classmethod
    def existing(cls, db: str | Path):
        upgrade_existing(db)
        return cls(db)

    def close(self) -> None:
        with self.lock:
            self.db.close()

    def session(self, session_id: str) -> SessionRecord:
        with self.lock:
            row = self.db.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = ?", (session_id,)
            ).fetchone()
        if row is None:
            raise ResultsError(f"session {session_id!r} is not in {self.path}", 404)
        return SessionRecord.from_row(row)

    def site(self, session_id: str) -> SiteRecord | None:
        """The session's microscope as the daemon recorded it (None: recorded before it was kept)."""
        with self.lock:
            return read_site(self.db, session_id)

    def session_ids(self) -> list[str]:
        """Every session, newest first."""
        with self.lock:
            return [r["id"] for r in self.db.execute("SELECT id FROM sessions ORDER BY started DESC")]

    def cell_counts(self) -> list[dict]:
        """Every session, newest first: id, started, ended and its number of cells."""
        with self.lock:
            rows = self.db.execute(
                "SELECT s.id AS id, s.started AS started, s.ended AS ended,"
                " (SELECT COUNT(*) FROM results r WHERE r.session_id = s.id) AS cells"
                " FROM sessions s ORDER BY s.started DESC"
            ).fetchall()
        return [dict(r) for r in rows]

    def model_labels(self, session_id: str) -> list[str]:
        """The labels of the model that recorded the session (every cell holds all their scores)."""
        with self.lock:
            row = self.db.execute(
                "SELECT probabilities FROM results WHERE session_id = ? ORDER BY id LIMIT 1", (session_id,)
            ).fetchone()
        return sorted(json.loads(row["probabilities"])) if row else []

    def labels(self, session_id: str) -> list[str]:
        """What a reviewer may choose for this session's cells: the model's labels and 'unknown'."""
        labels = self.model_labels(session_id)
        return labels + ([UNKNOWN] if UNKNOWN not in labels else [])

    def model_counts(self, session_id: str) -> dict[str, int]:
        """The model's cells per label in a session (a slide that is not the live one)."""
        with self.lock:
            rows = self.db.execute(
                "SELECT label, COUNT(*) AS n FROM results WHERE session_id = ? GROUP BY label", (session_id,)
            ).fetchall()
        return {r["label"]: r["n"] for r in rows}

    def alert_classes(self, session_id: str) -> list[str]:
        return self.session(session_id).alert_classes

    def cells(self, session_id: str, flagged_by: list[str] | None = None) -> list[dict]:
        """The session's cells in the order they were recorded: id, frame_id, crop_index, ts, label,
        confidence, uncertain. With `flagged_by` (alert classes), only the cells that need a look
        (uncertain, unknown or of an alert class: edge.results.reviews.needs_look) and those that
        were reviewed anyway."""
        where, args = "session_id = ?", [session_id]
        if flagged_by is not None:
            marks = ",".join("?" * len(flagged_by)) or "''"
            where += (
                f" AND (uncertain = 1 OR label = ? OR label IN ({marks})"
                " OR id IN (SELECT result_id FROM reviews WHERE session_id = ?))"
            )
            args += [UNKNOWN, *flagged_by, session_id]
        with self.lock:
            rows = self.db.execute(
                "SELECT id, frame_id, crop_index, ts, label, confidence, uncertain FROM results"
                f" WHERE {where} ORDER BY id",
                args,
            ).fetchall()
        return [dict(r) for r in rows]

    def session_of_cell(self, result_id: int) -> str | None:
        with self.lock:
            row = self.db.execute("SELECT session_id FROM results WHERE id = ?", (int(result_id),)).fetchone()
        return None if row is None else row["session_id"]

    def cells_after(self, session_id: str, result_id: int) -> int:
        """How many cells the session recorded after cell `result_id`."""
        with self.lock:
            return self.db.execute(
                "SELECT COUNT(*) FROM results WHERE session_id = ? AND id > ?", (session_id, result_id)
            ).fetchone()[0]
