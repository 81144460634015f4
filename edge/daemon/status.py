"""The daemon's state, declared once (`Status`), and how each reader sees it.

`Session.status()` (edge/daemon/session.py) takes one `Status`; it is rendered as

    page_json      /api/status: the live page (static/index.html) and anyone polling it
    summary_json   what `edge run` prints and writes (--summary-json) when it ends, with a `RunReport`
    /metrics       Prometheus text (edge/daemon/metrics.py)
    MQTT status    PREFIX/DEVICE/status (edge/daemon/mqtt/messages.py status_payload)

The JSON keys are the page's and the consumers' contract: a renderer may leave a field out, never
rename one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from edge.bundle import Bundle
from edge.daemon.archive import ArchiveState
from edge.daemon.differential import DifferentialSnapshot
from edge.daemon.modes import FieldStatus
from edge.daemon.sinks import StoreHealth
from edge.daemon.telemetry import RunTotals, TelemetrySnapshot
from edge.golden import GoldenResult
from edge.site import SiteState


def architecture(bundle: Bundle) -> str:
    return bundle.manifest.model.get("architecture", "?")


@dataclass(frozen=True)
class ModelInfo:
    sha256: str
    path: str
    labels: list[str]
    architecture: str
    runtime: dict  # the backend's description: runtime, version, delegate, threads
    signed_by: str | None

    @classmethod
    def of(cls, bundle: Bundle, backend) -> ModelInfo:
        signer = bundle.signature.signer if bundle.signature else None
        return cls(
            bundle.sha256, str(bundle.path), bundle.labels, architecture(bundle), backend.describe(), signer
        )


@dataclass(frozen=True)
class Status:
    session_id: str
    model: ModelInfo
    source: dict  # the source's own description (FrameSource.describe): "source" (its name), "live", ...
    mode: dict  # the mode's description (CellMode / FieldMode.describe)
    field: FieldStatus | None  # field mode only
    database: str
    store: StoreHealth
    telemetry: TelemetrySnapshot
    queue_size: int
    differential: DifferentialSnapshot
    archive: ArchiveState
    archive_recent: list[dict]  # the latest flagged cells, newest first
    last_result: dict | None  # the first cell of the latest frame
    warnings: list[str]
    # the review queue, what is verified and the sign-off (edge/results/reviews.py summary); left out
    # (None) where a reader does not need the database read
    review: dict | None
    mqtt: dict  # MqttPublisher.snapshot(), or {"enabled": False}
    site: SiteState  # the microscope: calibrated or not, its scale, the gate's decision (edge/site.py)
    golden: tuple[GoldenResult, ...] = ()  # each bundle's golden check at start (edge/golden.py)

    @property
    def active_alerts(self) -> list[str]:
        return [a.name for a in self.differential.alerts if a.active]


@dataclass(frozen=True)
class RunReport:
    """What only the end of a run knows, beside its last Status."""

    ended_by: str  # signal | duration | max_frames | source exhausted
    before_this_run: dict  # the session's frames and cells recorded before this start
    totals: RunTotals
    page: str | None
    layout: str  # the pipeline layout it ran in (edge/daemon/pipeline.py)
    trial_ms_per_frame: dict[str, float]
    lab: str  # the LAB strategy of the preprocessing


def site_json(site: SiteState) -> dict:
    """The microscope as /api/status, the summary and MQTT status give it: SiteState's fields, the
    same in words as the page header and the report say them, and the one line a technician must
    read (`banner`, None when there is nothing to say)."""
    words = {"microscope": site.microscope, "check": site.check, "scale": site.scale}
    return {**site.to_dict(), "words": words, "banner": site.banner}


def page_json(s: Status) -> dict:
    """/api/status."""
    t = s.telemetry
    return {
        "session_id": s.session_id,
        "site": site_json(s.site),
        "model": asdict(s.model),
        "source": {**s.source, **asdict(t.source)},
        "mode": s.mode,
        **({"field": asdict(s.field)} if s.field else {}),
        "database": s.database,
        "store": asdict(s.store),
        "uptime_s": t.uptime_s,
        "frames": asdict(t.frames),
        "camera_fps": t.camera_fps,
        "processed_fps": t.processed_fps,
        "uncertain": t.uncertain,
        "uncertain_rate": t.uncertain_rate,
        "stages_ms": {name: asdict(v) for name, v in t.stages_ms.items()},
        "queue": {"size": s.queue_size},
        "differential": asdict(s.differential),
        "archive": {**asdict(s.archive), "recent": s.archive_recent},
        "last_result": s.last_result,
        "warnings": s.warnings,
        "review": s.review,
        "mqtt": s.mqtt,
        "golden": [asdict(g) for g in s.golden],
    }


def summary_json(s: Status, run: RunReport) -> dict:
    """The end-of-run summary (edge/commands/run.py format_summary prints it)."""
    t, d = s.telemetry, s.differential
    return {
        "session_id": s.session_id,
        "site": site_json(s.site),
        "ended_by": run.ended_by,
        "before_this_run": run.before_this_run,
        "frames_captured": t.frames.captured,
        "frames_classified": t.frames.processed,
        "results": t.frames.results,
        "dropped": t.frames.dropped,
        "corrupt": t.frames.corrupt,
        "source_errors": t.source.errors,
        "reconnects": t.source.reconnects,
        "uncertain": d.uncertain,  # the whole slide, as the differential beside it
        "uncertain_this_run": t.uncertain,
        "sustained_fps": run.totals.sustained_fps,
        "latency_ms": {"p50": run.totals.latency_p50, "p95": run.totals.latency_p95},
        "processing_ms": {"p50": run.totals.processing_p50, "p95": run.totals.processing_p95},
        "source": s.source.get("source"),
        "source_s": run.totals.source_s,
        "latency_over_capture_plus_invoke_p50": run.totals.overhead_p50,
        "stages_ms_p50": {name: v.p50 for name, v in t.stages_ms.items()},
        "differential": {row["label"]: row["count"] for row in d.counts},
        "differential_table": d.counts,  # with each class's percentage (or count per 100 white cells)
        "white_cells_counted": {"n": d.total, "what": d.base},
        **({"field": asdict(s.field)} if s.field else {}),
        "unknown": d.unknown,
        "alerts": s.active_alerts,
        "alert_rules": [asdict(a) for a in d.alerts],
        "archive": asdict(s.archive),
        "database": s.database,
        "store": asdict(s.store),
        "page": run.page,
        "mqtt": s.mqtt,
        "review": s.review,
        "pipeline": {"layout": run.layout, "trial_ms_per_frame": run.trial_ms_per_frame, "lab": run.lab},
    }
