"""/metrics: the daemon's Status (edge/daemon/status.py) as Prometheus metrics, computed at scrape
time. Every metric is one row of a table below: its type, its name (what it measures, frigate's
habit), its help text and where its value is in the Status. Counters only grow within a run."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from edge.daemon.status import Status
from edge.daemon.telemetry import TelemetrySnapshot

G, C = GaugeMetricFamily, CounterMetricFamily
ARCHIVE_STATES = ("active", "paused_low_disk", "disabled", "error")
BOUNDS = ("estimate", "low", "high")


def _invoke_ms(t: TelemetrySnapshot) -> float:
    invoke = t.stages_ms.get("invoke")
    return invoke.mean if invoke else 0.0


# (type, name, help, its value in the part of the Status the table is about)
TELEMETRY = [
    (G, "edge_inference_ms", "Mean invoke() time per frame over the recent window, ms", _invoke_ms),
    (G, "edge_camera_fps", "Frames read from the source per second (10 s window)", lambda t: t.camera_fps),
    (G, "edge_processed_fps", "Frames classified per second (10 s window)", lambda t: t.processed_fps),
    (C, "edge_frames_captured", "Frames read from the source", lambda t: t.frames.captured),
    (C, "edge_frames_processed", "Frames classified and committed", lambda t: t.frames.processed),
    (C, "edge_source_errors", "Source failures (disconnects, device errors)", lambda t: t.source.errors),
    (C, "edge_reconnects", "Successful reconnections to the source", lambda t: t.source.reconnects),
    (G, "edge_uncertain_ratio", "Fraction of classified cells flagged uncertain", lambda t: t.uncertain_rate),
    (G, "edge_uptime_seconds", "Seconds since the daemon started", lambda t: t.uptime_s),
]
ARCHIVE = [
    (
        G,
        "edge_archive_free_bytes",
        "Free space where the archive writes",
        lambda a: max(0.0, a.free_mb or 0.0) * 1e6,
    ),
    (C, "edge_archive_saved", "Flagged images saved", lambda a: a.saved),
    (
        C,
        "edge_archive_skipped_low_disk",
        "Flagged images not saved for lack of disk space",
        lambda a: a.skipped_low_disk,
    ),
]
DIFFERENTIAL = [
    (C, "edge_cells_unknown", "Cells rejected as unlike the training data", lambda d: d.unknown),
]
STORE = [
    (
        G,
        "edge_store_full",
        "The results database refuses writes (disk or max_db_mb full)",
        lambda h: float(h.state == "full"),
    ),
    (
        G,
        "edge_store_waiting",
        "Frames classified but not yet written (waiting for disk space)",
        lambda h: h.waiting,
    ),
    (
        C,
        "edge_store_lost",
        "Frames whose results could not be kept while the disk was full",
        lambda h: h.lost,
    ),
]

# (type, name, help, label names, (label values, value) rows of the Status)
LABELLED: list[tuple[type, str, str, list[str], Callable[[Status], Iterable[tuple[list[str], float]]]]] = [
    (
        G,
        "edge_model_info",
        "Model and source in use",
        ["sha256", "architecture", "source", "session"],
        lambda s: [([s.model.sha256, s.model.architecture, s.source["source"], s.session_id], 1)],
    ),
    (
        G,
        "edge_stage_ms",
        "Mean time per pipeline stage over the recent window, ms",
        ["stage"],
        lambda s: [([name], v.mean) for name, v in s.telemetry.stages_ms.items()],
    ),
    (
        C,
        "edge_frames_skipped",
        "Frames not classified",
        ["reason"],
        lambda s: [(["queue_full"], s.telemetry.frames.dropped), (["corrupt"], s.telemetry.frames.corrupt)],
    ),
    (
        G,
        "edge_archive_state",
        "Flagged-image archive state (1 for the current one)",
        ["state"],
        lambda s: [([name], float(s.archive.state == name)) for name in ARCHIVE_STATES],
    ),
    (
        G,
        "edge_differential_cells",
        "Cells counted this session per label",
        ["label"],
        lambda s: [([row["label"]], row["count"]) for row in s.differential.counts],
    ),
    (
        G,
        "edge_alert_active",
        "Differential alert rule firing (1) or not (0)",
        ["rule"],
        lambda s: [([a.name], float(a.active)) for a in s.differential.alerts],
    ),
    (
        G,
        "edge_alert_fraction",
        "Fraction of the white cells counted in the rule's classes, with its 95% Wilson interval",
        ["rule", "bound"],
        lambda s: [
            ([a.name, bound], value)
            for a in s.differential.alerts
            for bound, value in zip(BOUNDS, (a.fraction, *a.interval), strict=True)
        ],
    ),
]

# field mode only: (type, name, help, value of Status.field)
FIELD = [
    (
        G,
        "edge_field_cells_per_frame",
        "White cells detected per frame (recent frames)",
        lambda f: f.cells_per_frame,
    ),
    (
        G,
        "edge_field_cells_last_frame",
        "White cells detected in the latest frame",
        lambda f: f.cells_last_frame,
    ),
    (
        C,
        "edge_fields_seen",
        "Microscope fields seen (a jump or a drift of half the view starts one)",
        lambda f: f.fields_seen,
    ),
    (
        C,
        "edge_field_cells_counted",
        "White cells counted: tracks started, once per cell",
        lambda f: f.cells_counted,
    ),
    (
        G,
        "edge_differential_progress",
        "Cells in the differential over its target (pipeline.field.target_cells)",
        lambda f: f.differential_progress,
    ),
]

# with [mqtt] only: (type, name, help, value of MqttPublisher.snapshot())
MQTT = [
    (
        G,
        "edge_mqtt_connected",
        "Connected to the MQTT broker (1) or not (0)",
        lambda m: float(m["state"] == "connected"),
    ),
    (
        G,
        "edge_mqtt_queued",
        "Results and alerts committed and not yet acknowledged by the broker",
        lambda m: m["queued"],
    ),
    (G, "edge_mqtt_inflight", "Messages sent and awaiting PUBACK", lambda m: m["inflight"]),
    (
        C,
        "edge_mqtt_sent",
        "Results and alerts acknowledged by the broker (PUBACK) since start",
        lambda m: m["sent"],
    ),
    (C, "edge_mqtt_reconnects", "Connections to the broker after the first", lambda m: m["reconnects"]),
    (
        C,
        "edge_mqtt_refused",
        "Messages the broker refused (MQTT 5 reason code); sent again later",
        lambda m: m["refused"],
    ),
]


def _scalars(table, source) -> Iterator[Metric]:
    for family, name, help_text, value in table:
        yield family(name, help_text, value=value(source))


class StatusCollector:
    """A prometheus_client collector over `status_fn()`."""

    def __init__(self, status_fn: Callable[[], Status]):
        self.status_fn = status_fn

    def collect(self) -> Iterator[Metric]:
        s = self.status_fn()
        for family, name, help_text, labels, rows in LABELLED:
            metric = family(name, help_text, labels=labels)
            for label_values, value in rows(s):
                metric.add_metric(label_values, value)
            yield metric
        yield from _scalars(TELEMETRY, s.telemetry)
        yield from _scalars(ARCHIVE, s.archive)
        yield from _scalars(DIFFERENTIAL, s.differential)
        yield from _scalars(STORE, s.store)
        if s.field is not None:
            yield from _scalars(FIELD, s.field)
        if s.mqtt.get("enabled"):
            yield from _scalars(MQTT, s.mqtt)
