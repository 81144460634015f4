"""The topic layout and the JSON payloads (frigate's layout: PREFIX/available, PREFIX/events, ...).

    PREFIX/DEVICE/available                      "online" / "offline"; retained; the last will says offline
    PREFIX/DEVICE/status                         health, retained, every status_interval_s    (best effort)
    PREFIX/DEVICE/cells                          one message per classified cell   (QoS 1 through the outbox)
    PREFIX/DEVICE/alerts                         an alert rule that started firing (QoS 1 through the outbox)
    PREFIX/DEVICE/sessions/SESSION/differential  the running count, retained       (best effort, latest wins)

Every outbox message has a `msg_id` that stays the same when it is sent again (after a lost PUBACK
or a restart): DEVICE:SESSION:FRAME:CROP for a cell, DEVICE:SESSION:alert:RULE:CELLS for an alert.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from dataclasses import dataclass

from edge.daemon.differential import AlertState, DifferentialCount
from edge.daemon.status import Status, site_json

# Columns of `results` that hold JSON text: published as JSON values, not as strings.
JSON_COLUMNS = ("box", "probabilities", "timings")
BOOL_COLUMNS = ("uncertain",)


def topic_level(text: str) -> str:
    """`text` as one topic level: MQTT's separator and wildcards become '_'."""
    return re.sub(r"[/+#\x00]", "_", text) or "_"


@dataclass(frozen=True)
class Topics:
    prefix: str
    device: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.device}"

    def below(self, relative: str) -> str:
        return f"{self.base}/{relative}"

    # The fixed topics, one level below base each (the module's docstring lists them).
    available = property(lambda self: self.below("available"))
    status = property(lambda self: self.below("status"))
    cells = property(lambda self: self.below("cells"))

    def differential(self, session_id: str) -> str:
        return f"{self.base}/sessions/{topic_level(session_id)}/differential"


def encode(payload: dict) -> bytes:
    return json.dumps(payload, separators=(",", ":"), default=str).encode()


def cell_msg_id(device: str, row: dict) -> str:
    return f"{device}:{row['session_id']}:{row['frame_id']}:{row['crop_index']}"


def cell_payload(device: str, row: dict) -> dict:
    """A row of `results` (with the frame's source_ref) as the lab receives it: every column that is
    there, JSON columns decoded, `id` as `result_id`."""
    out = {"msg_id": cell_msg_id(device, row), "device": device}
    for key, value in row.items():
        if key == "id":
            out["result_id"] = value
        elif key in JSON_COLUMNS and isinstance(value, str):
            try:
                out[key] = json.loads(value)
            except ValueError:
                out[key] = value
        elif key in BOOL_COLUMNS and value in (0, 1):
            out[key] = bool(value)
        else:
            out[key] = value
    return out


def count_row(row: dict, white_cells: int) -> dict:
    """One label of the differential as the lab reads it. A white cell has `percent` of the white cells
    and its 95 % Wilson interval `percent_95ci`; a class that is not a white cell (erythroblasts,
    platelets) is counted per 100 white cells, which may pass 100, so it has `per_100_white` instead and
    no `percent` (a lab summing `percent` gets 100); null while no white cell is counted."""
    if row["white_cell"]:
        return {**row, "percent_95ci": row["interval_percent"]}
    return {**row, "per_100_white": row["per_100_white"] if white_cells else None}


def differential_payload(device: str, session_id: str, d: DifferentialCount, ended: bool = False) -> dict:
    """The session's count per label (count_row: edge/daemon/differential.py table, a white-cell class's
    percentage of the white cells counted with its 95 % Wilson interval, any other class per 100 white
    cells), what the white cells counted are, and its alerts (withheld, and why, on a microscope that
    differs)."""
    total = d.total
    counts = [count_row(row, total) for row in d.table()]
    return {
        "device": device,
        "session_id": session_id,
        "ts": time.time(),
        "total": d.total,
        "white_cells_counted": {"n": d.total, "what": d.base},
        "uncertain": d.uncertain,
        "counts": counts,
        "alerts": [dataclasses.asdict(a) for a in d.alerts()],
        "withheld": d.withheld,
        "ended": ended,
    }


def alert_event(device: str, session_id: str, alert: AlertState, frame_id: int):
    """(msg_id, payload) of an alert that started firing with frame `frame_id`: its fraction of
    confident, known cells with the 95 % Wilson interval the differential computed."""
    lo, hi = alert.interval
    msg_id = f"{device}:{session_id}:alert:{alert.name}:{alert.cells}"
    return msg_id, {
        "msg_id": msg_id,
        "device": device,
        "session_id": session_id,
        "rule": alert.name,
        "classes": alert.classes,
        "fraction": alert.fraction,
        "fraction_95ci": [round(lo, 4), round(hi, 4)],
        "percent": alert.percent,  # the figure the page, the report and FHIR give
        "of": alert.words(),
        "min_fraction": alert.min_fraction,
        "cells": alert.cells,
        "min_cells": alert.min_cells,
        "frame_id": frame_id,
        "ts": time.time(),
    }


def status_payload(device: str, status: Status, state: str = "running") -> dict:
    """The daemon's health: a few fields of its Status (edge/daemon/status.py), under the page's names."""
    t = status.telemetry
    return {
        "device": device,
        "ts": time.time(),
        "state": state,
        "session_id": status.session_id,
        "model_sha256": status.model.sha256,
        "source": status.source.get("source"),
        "source_state": t.source.state,
        "frames": dataclasses.asdict(t.frames),
        "camera_fps": t.camera_fps,
        "processed_fps": t.processed_fps,
        "uncertain_rate": t.uncertain_rate,
        "archive_state": status.archive.state,
        "alerts_active": status.active_alerts,
        "uptime_s": t.uptime_s,
        "mqtt": {k: status.mqtt.get(k) for k in ("queued", "sent", "reconnects")},
        "site": site_json(status.site),
        **({"review": review_part(status.review)} if status.review else {}),
    }


def review_part(review: dict) -> dict:
    """The slide's review (edge/results/verification.py): verified per label (cells a technician
    decided), reviewed N of the M queued, too fast, and the sign state."""
    keys = ("verified", "reviewed", "queued", "pending", "too_fast")
    return {**{k: review[k] for k in keys}, "sign": review["sign"]["status"]}
