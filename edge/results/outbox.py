"""What the MQTT broker has acknowledged, kept in results.db beside the results themselves (the
tables: edge/results/schema.py, OUTBOX_SCHEMA; the publisher: edge/daemon/mqtt/publisher.py).

The results table is already the outbox: every committed row is a message to send. What this
module adds is, per stream, a watermark: `acked_through`, the row id up to which every row was
acknowledged by the broker (PUBACK, QoS 1). The publisher reads rows after it in id order, a batch
at a time (memory stays bounded however long the broker is away), and moves it forward only over
rows whose PUBACK arrived. Why a watermark and not a `sent` flag per row: the results table
belongs to the store (other work adds columns to it), one small row per stream is all the state,
and "what is not yet sent" is one range scan on the primary key.

Row ids grow in commit order because one thread writes the results (the pipeline), so a row with
a smaller id is never committed after a larger one has been read.

Alerts and other events that are not rows of `results` go into `mqtt_events`, a second stream
with the same watermark.

A crash between a PUBACK and the write of the watermark sends those rows again at the next start
(QoS 1 is "at least once"); every message carries a stable `msg_id` for the receiver to drop the
repeat. The publisher writes the watermark 0.2 s after a PUBACK at the latest, or as soon as
`max_inflight` more rows were acknowledged, so a kill -9 repeats at most about twice `max_inflight`
messages: those acknowledged but not yet marked, and those in flight.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from edge.results.schema import OUTBOX_SCHEMA, connect, set_synchronous

STREAMS = ("events", "cells")  # events first: an alert should not wait behind an hour of cells

# Each stream's rows, selected by column name so that columns other work adds to `results`
# are published too. The frame's source_ref says which image or camera frame the cell came from.
_ROWS = {
    "cells": "SELECT r.*, f.source_ref AS source_ref FROM results r"
    " LEFT JOIN frames f ON f.session_id = r.session_id AND f.frame_id = r.frame_id",
    "events": "SELECT id, msg_id, topic, payload FROM mqtt_events",
}
_TABLE = {"cells": "results", "events": "mqtt_events"}


class Outbox:
    """One connection of its own, shared by the publisher thread (reads, watermarks) and the
    pipeline thread (`add_event`) under a lock. It only ever reads committed rows."""

    def __init__(self, path: str | Path, backfill: bool = True, synchronous: str = "normal"):
        self.db = connect(path, rows=True)
        self.lock = threading.Lock()
        set_synchronous(self.db, synchronous)
        now = time.time()
        # The first start with MQTT either sends what the database already holds (backfill) or
        # starts after it; later starts carry on from the watermark either way.
        start = 0 if backfill else "(SELECT COALESCE(MAX(id), 0) FROM results)"
        with self.lock:
            self.db.executescript(
                "BEGIN IMMEDIATE;"
                + OUTBOX_SCHEMA
                + f"INSERT OR IGNORE INTO mqtt_outbox VALUES ('cells', {start}, {now});"
                + f"INSERT OR IGNORE INTO mqtt_outbox VALUES ('events', 0, {now});"
                + "COMMIT;"
            )

    def acked_through(self, stream: str) -> int:
        with self.lock:
            row = self.db.execute(
                "SELECT acked_through FROM mqtt_outbox WHERE stream = ?", (stream,)
            ).fetchone()
        return int(row[0])

    def set_acked_through(self, stream: str, row_id: int) -> None:
        """Move the watermark forward (never back)."""
        with self.lock:
            self.db.execute(
                "UPDATE mqtt_outbox SET acked_through = ?, updated = ? WHERE stream = ? AND acked_through < ?",
                (row_id, time.time(), stream, row_id),
            )

    def rows_after(self, stream: str, after_id: int, limit: int) -> list[dict]:
        table = "r" if stream == "cells" else "mqtt_events"
        with self.lock:
            rows = self.db.execute(
                f"{_ROWS[stream]} WHERE {table}.id > ? ORDER BY {table}.id LIMIT ?", (after_id, limit)
            ).fetchall()
        return [dict(r) for r in rows]

    def rows_by_id(self, stream: str, ids: list[int]) -> list[dict]:
        table = "r" if stream == "cells" else "mqtt_events"
        marks = ",".join("?" * len(ids))
        with self.lock:
            rows = self.db.execute(
                f"{_ROWS[stream]} WHERE {table}.id IN ({marks}) ORDER BY {table}.id", ids
            ).fetchall()
        return [dict(r) for r in rows]

    def pending(self, stream: str, after_id: int) -> int:
        """Rows after `after_id`: committed and not yet acknowledged."""
        with self.lock:
            return self.db.execute(
                f"SELECT COUNT(*) FROM {_TABLE[stream]} WHERE id > ?", (after_id,)
            ).fetchone()[0]

    def add_event(self, msg_id: str, topic: str, payload: dict) -> None:
        """Commit an event for the publisher; the same msg_id twice is one event."""
        with self.lock:
            self.db.execute(
                "INSERT OR IGNORE INTO mqtt_events(msg_id, topic, payload, created) VALUES (?,?,?,?)",
                (msg_id, topic, json.dumps(payload), time.time()),
            )

    def close(self) -> None:
        with self.lock:
            self.db.close()
