"""Wires the daemon together: bundle + classifier, source, store, archive, differential, page,
systemd notifications and signals. `Daemon(config).run()` returns the summary dict."""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
import signal
import sqlite3
import sys
import threading
import time

import numpy as np

from edge import labtables
from edge.bundle import Bundle
from edge.daemon.archive import FlaggedArchive
from edge.daemon.config import ConfigError, DaemonConfig, parse_listen
from edge.daemon.differential import DifferentialCount
from edge.daemon.modes import CellMode, scale_box
from edge.daemon.notify import SystemdNotifier
from edge.daemon.pipeline import CaptureThread, DropOldestQueue, Pipeline, Skipped
from edge.daemon.sources import Frame, SourceError, open_source
from edge.daemon.store import ResultRow, ResultStore
from edge.daemon.telemetry import Telemetry
from edge.errors import MissingExtraError
from edge.predict import Classifier
from edge.runtime import open_backend


def log(message: str) -> None:
    stamp = dt.datetime.now().strftime("%H:%M:%S")
    print(f"{stamp} {message}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class LiveView:
    """The latest frame and its predictions, for the page. Encoded only when someone asks."""

    frame: Frame | None = None
    crops: list[dict] = dataclasses.field(default_factory=list)


class Daemon:
    def __init__(self, config: DaemonConfig, out=print):
        self.config = config
        self.out = out
        self.stop = threading.Event()
        self.telemetry = Telemetry()
        self.live = LiveView()
        self.live_lock = threading.Lock()
        self.notifier = SystemdNotifier()
        self.web = None
        self.url = None

    # -- setup -------------------------------------------------------------------------------
    def _load(self) -> None:
        c = self.config
        self.bundle = Bundle.load(c.bundle)  # BundleError: one line, exit 3
        options = {"threads": c.pipeline.threads} if c.pipeline.threads else {}
        self.classifier = Classifier(
            self.bundle, backend=open_backend(self.bundle, c.pipeline.backend, **options)
        )
        # Every frame is preprocessed, so the ~1 s for the LAB lookup tables pays back at once.
        labtables.prepare()
        # One throw-away inference: the first invoke() and the first CLAHE cost 10-100x a normal one,
        # and would otherwise land on the first real frame's latency.
        self.classifier.classify_frames([np.zeros((64, 64, 3), np.uint8)])
        self.mode = CellMode(c.pipeline.region, c.pipeline.region_px)
        try:
            self.store = ResultStore(c.store.db, c.store.synchronous, c.store.fsync_interval_s)
        except (sqlite3.Error, OSError) as exc:
            raise ConfigError(f"store.db: cannot open {c.store.db} ({exc})") from None
        # A new session per start unless one is named; the random suffix keeps two starts within a
        # second (a crash loop, a quick restart) from silently merging into one session.
        self.session_id = c.store.session or (
            dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)
        )
        self.source = open_source(c.source, stop_event=self.stop)
        if self.source.kind == "folder":  # the database remembers which files were already taken
            self.source.done |= self.store.done_refs(self.source.name)
        self.store.start_session(
            self.session_id,
            self.bundle.sha256,
            str(self.bundle.path),
            self.source.name,
            self.mode.name,
            dataclasses.asdict(c),
        )
        self.differential = DifferentialCount(c.differential, self.bundle.labels)
        self.differential.restore(*self.store.session_counts())
        try:
            self.archive = FlaggedArchive(c.archive, c.archive_dir, self.session_id)
        except OSError as exc:
            raise ConfigError(f"archive.dir: cannot use {c.archive_dir} ({exc.strerror or exc})") from None
        unknown = sorted(set(c.archive.alert_classes) - set(self.bundle.labels))
        self.warnings = list(self.differential.warnings)
        if unknown:
            self.warnings.append(f"archive.alert_classes: {', '.join(unknown)} not labels of this model")
        for w in self.warnings:
            log(f"warning: {w}")

    def _open_source_first_time(self) -> bool:
        """Open in the main thread so a missing dependency fails at start; a camera that is not
        there yet is retried by the capture thread."""
        try:
            self.source.open()
        except SourceError as exc:
            self.telemetry.on_source_error(str(exc))
            log(f"source: {exc}; will keep retrying")
            return False
        self.telemetry.on_source_open(reconnect=False)
        return True

    def _start_web(self) -> None:
        listen = parse_listen(self.config.http.listen)
        if listen is None:
            return
        try:
            from edge.daemon.web import WebServer
        except ImportError as exc:  # flask, waitress, prometheus_client: the 'device' extra
            raise MissingExtraError(
                "edge run (page and metrics; or --http off)", "device", exc.name or str(exc)
            ) from None

        try:
            self.web = WebServer(self, *listen, token=self.config.http.token)
        except OSError as exc:
            raise ConfigError(
                f"http.listen: cannot listen on {self.config.http.listen} ({exc.strerror or exc})"
            ) from None
        self.web.start()
        self.url = self.web.url

    # -- per frame ----------------------------------------------------------------------------
    def process_frame(self, frame: Frame) -> None:
        t_dequeued = time.perf_counter()
        crops = self.mode.crops(frame.image)
        t0 = time.perf_counter()
        preds = self.classifier.classify_frames([c.image for c in crops]) if crops else []
        t_result = time.perf_counter()
        base = {
            "capture": (frame.t_captured - frame.t_capture_start) * 1000,
            "queue": (t_dequeued - frame.t_captured) * 1000,
            "preprocess": (preds[0].timings_ms["preprocess"] * len(preds)) if preds else 0.0,
            "invoke": (preds[0].timings_ms["invoke"] * len(preds)) if preds else 0.0,
            "result": (t_result - frame.t_capture_start) * 1000,
            "mode": (t0 - t_dequeued) * 1000,
        }
        rows = [
            ResultRow(i, c.box, p.label, p.confidence, p.probabilities, p.uncertain, base)
            for i, (c, p) in enumerate(zip(crops, preds, strict=True))
        ]
        self.store.write_frame(frame.frame_id, frame.timestamp, self.source.name, frame.ref, rows)
        t_stored = time.perf_counter()
        timings = {
            **base,
            "store": (t_stored - t_result) * 1000,
            "latency": (t_stored - frame.t_capture_start) * 1000,
        }
        self.telemetry.on_processed(len(rows), sum(r.uncertain for r in rows), timings)
        live_crops = []
        for crop, row, pred in zip(crops, rows, preds, strict=True):
            for alert in self.differential.add(row.label, row.uncertain):
                log(
                    f"ALERT {alert.name}: {alert.fraction:.0%} of {alert.cells} cells are {'/'.join(alert.classes)}"
                    f" (threshold {alert.min_fraction:.0%})"
                )
            box = scale_box(crop.box, frame.image.shape, frame.view.shape)
            info = {
                "frame_id": frame.frame_id,
                "crop_index": row.crop_index,
                "label": row.label,
                "confidence": round(row.confidence, 4),
                "uncertain": row.uncertain,
                "box": list(box),
            }
            reason = self.archive.reason(row.label, row.uncertain)
            if reason:
                x, y, w, h = box
                meta = {
                    **info,
                    "reason": reason,
                    "session_id": self.session_id,
                    "source": self.source.name,
                    "source_ref": frame.ref,
                    "timestamp": frame.timestamp,
                    "model_sha": self.bundle.sha256,
                    "top_k": [[n, round(v, 4)] for n, v in pred.top_k],
                    "probabilities": {k: round(v, 4) for k, v in pred.probabilities.items()},
                }
                self.archive.save(frame.view[y : y + h, x : x + w], meta)
            live_crops.append(info)
        with self.live_lock:
            self.live.frame, self.live.crops = frame, live_crops

    def record_skipped(self, item: Skipped) -> None:
        log(f"skipped corrupt frame {item.ref}: {item.reason}")
        self.store.write_skipped(item.frame_id, item.timestamp, self.source.name, item.ref, item.reason)

    def tick(self) -> None:
        """Called by the pipeline loop several times a second: watchdog pings while healthy."""
        if not self.notifier.enabled:
            return
        # A capture thread stuck in a driver call stops the pings, and systemd restarts us.
        stalled = time.monotonic() - self.capture.heartbeat > max(
            10.0, (self.notifier.watchdog_interval or 5) * 1.5
        )
        if not stalled or self.capture.finished.is_set():
            self.notifier.watchdog()

    # -- status -------------------------------------------------------------------------------
    def status(self) -> dict:
        snap = self.telemetry.snapshot()
        with self.live_lock:
            last = self.live.crops[0] if self.live.crops else None
        archive = dataclasses.asdict(self.archive.state())
        return {
            "session_id": self.session_id,
            "model": {
                "sha256": self.bundle.sha256,
                "path": str(self.bundle.path),
                "labels": self.bundle.labels,
                "architecture": self.bundle.manifest.model.get("architecture", "?"),
                "runtime": self.classifier.backend.describe(),
            },
            "source": {**self.source.describe(), **snap.pop("source")},
            "mode": {"name": self.mode.name, "region": self.mode.region, "region_px": self.mode.region_px},
            "database": str(self.store.path),
            **snap,
            "queue": {"size": self.config.source.queue_size},
            "differential": {
                "total": self.differential.total,
                "uncertain": self.differential.uncertain,
                "counts": self.differential.table(),
                "alerts": [dataclasses.asdict(a) for a in self.differential.alerts()],
            },
            "archive": {**archive, "recent": list(self.archive.recent)},
            "last_result": last,
            "warnings": self.warnings,
        }

    # -- lifecycle ----------------------------------------------------------------------------
    def _install_signals(self) -> None:
        def on_signal(signum, _frame):
            if not self.stop.is_set():
                log(f"{signal.Signals(signum).name}: draining and stopping")
            self.stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def run(self) -> dict:
        # The capture thread, the page and the pipeline share the GIL; a 1 ms switch interval (default 5)
        # lets the pipeline thread get it back quickly after invoke() and decode calls that release it.
        sys.setswitchinterval(0.001)
        self._load()
        c = self.config
        try:
            self._start_web()
            opened = self._open_source_first_time()
            self.queue = DropOldestQueue(c.source.queue_size)
            self.capture = CaptureThread(
                self.source,
                self.queue,
                self.telemetry,
                self.stop,
                c.source.reconnect_max_s,
                first_frame_id=self.store.next_frame_id(),
                opened=opened,
                log=log,
            )
            self._install_signals()
            log(
                f"edge run: session {self.session_id}, model {self.bundle.sha256[:12]} "
                f"({self.bundle.manifest.model.get('architecture', '?')}), source {self.source.name}, db {self.store.path}"
            )
            if self.url:
                self.out(f"page: {self.url}")
            self.notifier.ready(f"classifying {self.source.name}")
            pipeline = Pipeline(
                self.capture,
                self.queue,
                self.process_frame,
                self.record_skipped,
                self.stop,
                c.pipeline.max_frames,
                c.pipeline.duration_s,
                tick=self.tick,
            )
            reason = pipeline.run()
        finally:
            self.notifier.stopping()
            self.store.close()
            if self.web:
                self.web.stop()
        return self.summary(reason)

    def summary(self, reason: str) -> dict:
        t = self.telemetry
        lat = np.array(t.all_latency) if t.all_latency else np.zeros(1)
        stages = t.stage_ms()
        return {
            "session_id": self.session_id,
            "ended_by": reason,
            "frames_captured": t.captured,
            "frames_classified": t.processed,
            "results": t.results,
            "dropped": t.dropped,
            "corrupt": t.corrupt,
            "source_errors": t.source_errors,
            "reconnects": t.reconnects,
            "uncertain": t.uncertain,
            "sustained_fps": round(t.sustained_fps(), 2),
            "latency_ms": {
                "p50": round(float(np.percentile(lat, 50)), 2),
                "p95": round(float(np.percentile(lat, 95)), 2),
            },
            "latency_over_capture_plus_invoke_p50": round(float(np.median(t.all_overhead_ratio)), 3)
            if t.all_overhead_ratio
            else None,
            "stages_ms_p50": {k: v["p50"] for k, v in stages.items()},
            "differential": {r["label"]: r["count"] for r in self.differential.table()},
            "alerts": [a.name for a in self.differential.alerts() if a.active],
            "archive": dataclasses.asdict(self.archive.state()),
            "database": str(self.store.path),
            "page": self.url,
        }
