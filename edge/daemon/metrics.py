"""/metrics: the daemon's Status (edge/daemon/status.py) as Prometheus metrics, computed at scrape
time. Names say what they measure (frigate's habit); counters only ever grow within a run."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from edge.daemon.status import Status

ARCHIVE_STATES = ("active", "paused_low_disk", "disabled", "error")
Gauge, Counter = GaugeMetricFamily, CounterMetricFamily


class StatusCollector:
    """A prometheus_client collector over `status_fn()`."""

    def __init__(self, status_fn: Callable[[], Status]):
        self.status_fn = status_fn

    def collect(self) -> Iterator[Metric]:
        s = self.status_fn()
        for part in (pipeline_metrics, archive_metrics, differential_metrics, field_metrics, store_metrics):
            yield from part(s)
        yield from mqtt_metrics(s.mqtt)


def pipeline_metrics(s: Status) -> Iterator[Metric]:
    t = s.telemetry
    info = Gauge(
        "edge_model_info", "Model and source in use", labels=["sha256", "architecture", "source", "session"]
    )
    info.add_metric([s.model.sha256, s.model.architecture, s.source["source"], s.session_id], 1)
    yield info
    invoke = t.stages_ms.get("invoke")
    yield Gauge(
        "edge_inference_ms",
        "Mean invoke() time per frame over the recent window, ms",
        value=invoke.mean if invoke else 0.0,
    )
    stage = Gauge(
        "edge_stage_ms", "Mean time per pipeline stage over the recent window, ms", labels=["stage"]
    )
    for name, v in t.stages_ms.items():
        stage.add_metric([name], v.mean)
    yield stage
    yield Gauge("edge_camera_fps", "Frames read from the source per second (10 s window)", value=t.camera_fps)
    yield Gauge("edge_processed_fps", "Frames classified per second (10 s window)", value=t.processed_fps)
    yield Counter("edge_frames_captured", "Frames read from the source", value=t.frames.captured)
    yield Counter("edge_frames_processed", "Frames classified and committed", value=t.frames.processed)
    skipped = Counter("edge_frames_skipped", "Frames not classified", labels=["reason"])
    skipped.add_metric(["queue_full"], t.frames.dropped)
    skipped.add_metric(["corrupt"], t.frames.corrupt)
    yield skipped
    yield Counter("edge_source_errors", "Source failures (disconnects, device errors)", value=t.source.errors)
    yield Counter("edge_reconnects", "Successful reconnections to the source", value=t.source.reconnects)
    yield Gauge(
        "edge_uncertain_ratio", "Fraction of classified cells flagged uncertain", value=t.uncertain_rate
    )
    yield Gauge("edge_uptime_seconds", "Seconds since the daemon started", value=t.uptime_s)


def archive_metrics(s: Status) -> Iterator[Metric]:
    a = s.archive
    state = Gauge(
        "edge_archive_state", "Flagged-image archive state (1 for the current one)", labels=["state"]
    )
    for name in ARCHIVE_STATES:
        state.add_metric([name], float(a.state == name))
    yield state
    yield Gauge(
        "edge_archive_free_bytes",
        "Free space where the archive writes",
        value=max(0.0, a.free_mb or 0.0) * 1e6,
    )
    yield Counter("edge_archive_saved", "Flagged images saved", value=a.saved)
    yield Counter(
        "edge_archive_skipped_low_disk",
        "Flagged images not saved for lack of disk space",
        value=a.skipped_low_disk,
    )


def differential_metrics(s: Status) -> Iterator[Metric]:
    d = s.differential
    cells = Gauge("edge_differential_cells", "Cells counted this session per label", labels=["label"])
    for row in d.counts:
        cells.add_metric([row["label"]], row["count"])
    yield cells
    alert = Gauge("edge_alert_active", "Differential alert rule firing (1) or not (0)", labels=["rule"])
    for rule in d.alerts:
        alert.add_metric([rule.name], float(rule.active))
    yield alert
    fraction = Gauge(
        "edge_alert_fraction",
        "Fraction of confident, known cells in the rule's classes, with its 95% Wilson interval",
        labels=["rule", "bound"],
    )
    for rule in d.alerts:
        for bound, value in zip(("estimate", "low", "high"), (rule.fraction, *rule.interval), strict=True):
            fraction.add_metric([rule.name, bound], value)
    yield fraction
    yield Counter("edge_cells_unknown", "Cells rejected as unlike the training data", value=d.unknown)


def field_metrics(s: Status) -> Iterator[Metric]:
    """Field mode only."""
    f = s.field
    if f is None:
        return
    yield Gauge(
        "edge_field_cells_per_frame",
        "White cells detected per frame (recent frames)",
        value=f.cells_per_frame,
    )
    yield Gauge(
        "edge_field_cells_last_frame", "White cells detected in the latest frame", value=f.cells_last_frame
    )
    yield Counter(
        "edge_fields_seen",
        "Microscope fields seen (a jump or a drift of half the view starts one)",
        value=f.fields_seen,
    )
    yield Counter(
        "edge_field_cells_counted",
        "White cells counted: tracks started, once per cell",
        value=f.cells_counted,
    )
    yield Gauge(
        "edge_differential_progress",
        "Cells in the differential over its target (pipeline.field.target_cells)",
        value=f.differential_progress,
    )


def store_metrics(s: Status) -> Iterator[Metric]:
    store = s.store
    yield Gauge(
        "edge_store_full",
        "The results database refuses writes (disk or max_db_mb full)",
        value=float(store.state == "full"),
    )
    yield Gauge(
        "edge_store_waiting",
        "Frames classified but not yet written (waiting for disk space)",
        value=store.waiting,
    )
    yield Counter(
        "edge_store_lost", "Frames whose results could not be kept while the disk was full", value=store.lost
    )


def mqtt_metrics(m: dict) -> Iterator[Metric]:
    """The MQTT publisher's counters (none when [mqtt] is off)."""
    if not m.get("enabled"):
        return
    yield Gauge(
        "edge_mqtt_connected",
        "Connected to the MQTT broker (1) or not (0)",
        value=float(m["state"] == "connected"),
    )
    yield Gauge(
        "edge_mqtt_queued",
        "Results and alerts committed and not yet acknowledged by the broker",
        value=m["queued"],
    )
    yield Gauge("edge_mqtt_inflight", "Messages sent and awaiting PUBACK", value=m["inflight"])
    yield Counter(
        "edge_mqtt_sent",
        "Results and alerts acknowledged by the broker (PUBACK) since start",
        value=m["sent"],
    )
    yield Counter("edge_mqtt_reconnects", "Connections to the broker after the first", value=m["reconnects"])
    yield Counter(
        "edge_mqtt_refused",
        "Messages the broker refused (MQTT 5 reason code); sent again later",
        value=m["refused"],
    )
