"""Wires the daemon together: bundle + classifier, source, store, archive, differential, page,
systemd notifications and signals. `Daemon(config).run()` returns the summary dict."""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
import signal
import sys
import threading
import time

import numpy as np

from edge import labtables
from edge.bundle import Bundle
from edge.catalogue import cell_class
from edge.daemon import early_signals
from edge.daemon.archive import FlaggedArchive
from edge.daemon.capture import Capturer
from edge.daemon.config import ConfigError, DaemonConfig, parse_listen, without_secrets
from edge.daemon.differential import DifferentialCount
from edge.daemon.modes import CellMode, FieldMode
from edge.daemon.notify import SystemdNotifier
from edge.daemon.pipeline import Pipeline
from edge.daemon.processor import FrameProcessor
from edge.daemon.sinks import ArchiveSink, DifferentialSink, LiveView, SinkChain, StoreSink, TelemetrySink
from edge.daemon.sources import SourceError, open_source
from edge.daemon.telemetry import Telemetry
from edge.errors import MissingExtraError
from edge.predict import Classifier
from edge.preprocess import set_max_pixels
from edge.results.reviews import ReviewBook
from edge.results.schema import ResultsError
from edge.results.store import ResultStore
from edge.signing import require_trusted


def log(message: str) -> None:
    stamp = dt.datetime.now().strftime("%H:%M:%S")
    print(f"{stamp} {message}", file=sys.stderr, flush=True)


class Daemon:
    def __init__(self, config: DaemonConfig, out=print):
        self.config = config
        self.out = out
        self.stop = threading.Event()
        self.telemetry = Telemetry()
        self.live = LiveView()
        self.notifier = SystemdNotifier()
        self.web = None
        self.url = None
        self.mqtt = None

    # -- setup -------------------------------------------------------------------------------
    def _load(self) -> None:
        c = self.config
        set_max_pixels(c.source.max_pixels)  # one limit for every file the source decodes
        self.bundle = Bundle.load(c.bundle_path())  # BundleError: one line, exit 3
        # field mode: the detector bundle is verified before any interpreter starts (and talks)
        detector_bundle = (
            Bundle.load(c.pipeline.field.detector_path()) if c.pipeline.mode == "field" else None
        )
        if c.trusted_keys:  # a clinic that approves bundles approves its detector too
            for approved in filter(None, (self.bundle, detector_bundle)):
                require_trusted(approved.path, c.trusted_keys)
        # Every frame is preprocessed, so the ~1 s for the LAB lookup tables pays back at once.
        self.classifier = Classifier.open(
            self.bundle,
            c.pipeline.backend,
            lab=labtables.choose(c.pipeline.lab),
            threads=c.pipeline.threads or None,
        )
        self.mode = (
            self._field_mode(detector_bundle)
            if detector_bundle is not None
            else CellMode(c.pipeline.region, c.pipeline.region_px)
        )
        self.processor = FrameProcessor(self.mode, self.classifier)
        self.processor.warm_up()
        try:
            self.store = ResultStore(
                c.store.db, c.store.synchronous, c.store.fsync_interval_s, c.store.max_db_mb
            )
        except (ResultsError, OSError) as exc:
            raise ConfigError(f"store.db: cannot open {c.store.db} ({exc})") from None
        # A new session per start unless one is named; the random suffix keeps two starts within a
        # second (a crash loop, a quick restart) from silently merging into one session.
        # Reviews and sign-off from the page, on a connection of their own (edge/results/reviews.py).
        self.reviews = ReviewBook(c.store.db)
        self.session_id = c.store.session or (
            dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)
        )
        self.source = open_source(c.source, stop_event=self.stop)
        if self.source.kind == "folder":  # the database remembers which files were already taken
            self.source.remember(
                self.store.done_refs(self.source.name), self.store.corrupt_refs(self.source.name)
            )
        self.store.start_session(
            self.session_id,
            self.bundle.sha256,
            str(self.bundle.path),
            self.source.name,
            self.mode.name,
            without_secrets(c),
        )
        # A session named again (the same slide after a restart) carries on: say how far it had got.
        self.before = self.store.session_totals()
        if self.before["frames"]:
            log(
                f"session {self.session_id} continues: {self.before['frames']} frames and {self.before['cells']} "
                "cells were recorded before this start"
            )
        self.differential = DifferentialCount(
            c.differential, self.bundle.labels, [n for n in self.bundle.labels if cell_class(n).white_cell]
        )
        self.differential.restore(self.store.session_counts())
        try:
            self.archive = FlaggedArchive(c.archive, c.archive_dir, self.session_id)
            if c.archive.enabled:  # a kill can leave the archive and the database out of step
                self._check_archive()
        except OSError as exc:
            raise ConfigError(f"archive.dir: cannot use {c.archive_dir} ({exc.strerror or exc})") from None
        unknown = sorted(set(c.archive.alert_classes) - set(self.bundle.labels))
        self.warnings = list(self.differential.warnings)
        if self.bundle.manifest.uncertainty.warning:
            self.warnings.append(f"bundle: {self.bundle.manifest.uncertainty.warning}")
        if unknown:
            self.warnings.append(f"archive.alert_classes: {', '.join(unknown)} not labels of this model")
        for w in self.warnings:
            log(f"warning: {w}")
        self.mqtt = self._open_mqtt()

    def _check_archive(self) -> None:
        """Repair this session's folder (a resumed slide), and every other session's that no clean
        stop marked: a killed run is followed by a start under a new session id, so its folder is
        found here, repaired once, and marked."""
        a = self.config.archive
        found = self.archive.repair(self.store.flagged_cells(set(a.alert_classes), a.uncertain))
        self.archive.reopen()
        if found.message():
            log(found.message())
        for session in self.archive.unchecked_sessions():
            recorded_with = self.store.session_config(session)
            if recorded_with is None:
                continue  # a folder of another database's session: not ours to judge
            # the archive rule that session ran with decides which of its cells had an image
            rule = {**dataclasses.asdict(a), **recorded_with.get("archive", {})}
            cells = self.store.flagged_cells(set(rule["alert_classes"]), rule["uncertain"], session)
            message = self.archive.repair(cells, session).message(session)
            if message:
                log(message)
            self.archive.mark_checked(session)

    def _open_mqtt(self):
        """The MQTT publisher when [mqtt] names a broker (it connects once the pipeline runs)."""
        c = self.config
        if not c.mqtt.enabled:
            return None
        from edge.daemon.mqtt.publisher import MqttPublisher  # paho-mqtt: the 'device' extra

        publisher = MqttPublisher(c.mqtt, self.store.path, c.store.synchronous, self.status, log)
        log(f"mqtt: results to {c.mqtt.broker} under {publisher.topics.base}/")
        return publisher

    def _field_mode(self, bundle: Bundle) -> FieldMode:
        """The detector bundle (verified like the classifier's), its tracker and the field watch."""
        from edge.daemon.fields import FieldWatch
        from edge.daemon.tracker import IoUTracker
        from edge.detect.detector import Detector

        c, f = self.config, self.config.pipeline.field
        detector = Detector.open(
            bundle,
            c.pipeline.backend,
            lab=self.classifier.lab,
            threads=c.pipeline.threads or None,
        )
        return FieldMode(
            detector,
            IoUTracker(f.track_iou, f.max_age_frames, f.max_age_s),
            FieldWatch(f.min_similarity, f.new_field_shift),
            threshold=f.threshold or None,
            target_cells=f.target_cells,
        )

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
    def _sinks(self) -> SinkChain:
        self.store_sink = StoreSink(self.store, self.source.name, log)
        sinks = [
            # The image first, then the row: after a kill, an image whose row never committed is moved
            # aside at the next start (FlaggedArchive.repair); a committed row always has its image.
            ArchiveSink(self.archive, self.session_id, self.source.name, self.bundle.sha256),
            self.store_sink,
            TelemetrySink(self.telemetry),
            DifferentialSink(self.differential, log),
            self.live,
        ]
        if self.mqtt:
            from edge.daemon.mqtt.sink import MqttSink

            self.mqtt_sink = MqttSink(self.mqtt, self.differential, self.session_id)
            sinks.append(self.mqtt_sink)
        return SinkChain(sinks)

    def tick(self) -> None:
        """Called by the pipeline loop several times a second: watchdog pings while healthy."""
        if not self.notifier.enabled:
            return
        # A capture stuck in a driver call stops the pings, and systemd restarts us.
        stalled = time.monotonic() - self.pipeline.heartbeat > max(
            10.0, (self.notifier.watchdog_interval or 5) * 1.5
        )
        capture = self.pipeline.capture
        if not stalled or (capture is not None and capture.finished.is_set()):
            self.notifier.watchdog()

    # -- status -------------------------------------------------------------------------------
    def status(self) -> dict:
        snap = self.telemetry.snapshot()
        _, cells = self.live.snapshot()
        last = cells[0] if cells else None
        archive = dataclasses.asdict(self.archive.state())
        return {
            "session_id": self.session_id,
            "model": {
                "sha256": self.bundle.sha256,
                "path": str(self.bundle.path),
                "labels": self.bundle.labels,
                "architecture": self.bundle.manifest.model.get("architecture", "?"),
                "runtime": self.classifier.backend.describe(),
                "signed_by": self.bundle.signature.signer if self.bundle.signature else None,
            },
            "source": {**self.source.describe(), **snap.pop("source")},
            "mode": {"name": self.mode.name, "region": self.mode.region, "region_px": self.mode.region_px}
            if self.mode.name == "cell"
            else {"name": self.mode.name},
            **({"field": self._field_status()} if self.mode.name == "field" else {}),
            "database": str(self.store.path),
            "store": self.store_sink.state()
            if hasattr(self, "store_sink")
            else {"state": "ok", "waiting": 0, "lost": 0, "last_error": ""},
            **snap,
            "queue": {"size": self.config.source.queue_size},
            "differential": {
                "total": self.differential.total,
                "uncertain": self.differential.uncertain,
                "unknown": self.differential.unknown,
                "confident": self.differential.confident_total,
                "counts": self.differential.table(),
                "alerts": [dataclasses.asdict(a) for a in self.differential.alerts()],
            },
            "archive": {**archive, "recent": list(self.archive.recent)},
            "last_result": last,
            "warnings": self.warnings,
            "review": self.reviews.summary(
                self.session_id, dict(self.differential.counts), self.config.differential.count_uncertain
            ),
            "mqtt": self.mqtt.snapshot() if self.mqtt else {"enabled": False},
        }

    def _field_status(self) -> dict:
        """Cells per frame, fields seen, and how far the differential is towards its target."""
        stats = self.mode.stats()
        counted = self.differential.total
        return {
            **stats,
            "differential_cells": counted,
            "differential_confident": self.differential.confident_total,
            "differential_progress": round(min(1.0, counted / stats["target_cells"]), 4),
        }

    # -- lifecycle ----------------------------------------------------------------------------
    def _install_signals(self) -> None:
        def on_signal(signum, _frame):
            if not self.stop.is_set():
                log(f"{signal.Signals(signum).name}: draining and stopping")
            self.stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        for signum in early_signals.received:  # stopped while the model was still loading
            on_signal(signum, None)
        early_signals.received.clear()

    def run(self) -> dict:
        # The capture thread, the page and the pipeline share the GIL; a 1 ms switch interval (default 5)
        # lets the pipeline thread get it back quickly after invoke() and decode calls that release it.
        sys.setswitchinterval(0.001)
        self._install_signals()  # first: a stop while the model loads is a clean stop after it
        self._load()
        c = self.config
        try:
            self._start_web()
            opened = self._open_source_first_time()
            capturer = Capturer(
                self.source,
                self.telemetry,
                self.stop,
                c.source.reconnect_max_s,
                first_frame_id=self.store.next_frame_id(),
                opened=opened,
                log=log,
                limit=c.pipeline.max_frames,
            )
            self.pipeline = Pipeline(
                capturer,
                self.processor,
                self._sinks(),
                self.stop,
                c.source.queue_size,
                c.pipeline.max_frames,
                c.pipeline.duration_s,
                c.pipeline.layout,
                tick=self.tick,
                log=log,
            )
            log(
                f"edge run: session {self.session_id}, model {self.bundle.sha256[:12]} "
                f"({self.bundle.manifest.model.get('architecture', '?')}), source {self.source.name}, db {self.store.path}"
            )
            if self.url:
                self.out(f"page: {self.url}")
            self.notifier.ready(f"classifying {self.source.name}")
            if self.mqtt:
                self.mqtt.start()
            reason = self.pipeline.run()
        finally:
            self.notifier.stopping()
            if hasattr(self, "store_sink"):
                self.store_sink.retry(force=True)  # the last chance for what waits on a full disk
                waiting = self.store_sink.state()["waiting"]
                if waiting:
                    log(
                        f"store: {waiting} frame(s) could not be written (disk full); they are in this summary only"
                    )
            self.reviews.close()
            if self.mqtt:  # before the store closes: it drains for mqtt.drain_s, then marks what was acked
                if getattr(self, "mqtt_sink", None):
                    self.mqtt_sink.finish()
                self.mqtt.stop()
            self.store.close()
            if self.web:
                self.web.stop()
        # A clean stop with every row written: the archive agrees with the database, and later starts
        # need not read this session's folder (FlaggedArchive.unchecked_sessions).
        store = self.store_sink.state()
        if self.config.archive.enabled and not (store["waiting"] or store["lost"]):
            self.archive.mark_checked()
        return self.summary(reason)

    def summary(self, reason: str) -> dict:
        t = self.telemetry
        lat = np.array(t.all_latency) if t.all_latency else np.zeros(1)
        stages = t.stage_ms()
        return {
            "session_id": self.session_id,
            "ended_by": reason,
            "before_this_run": self.before,
            "frames_captured": t.captured,
            "frames_classified": t.processed,
            "results": t.results,
            "dropped": t.dropped,
            "corrupt": t.corrupt,
            "source_errors": t.source_errors,
            "reconnects": t.reconnects,
            "uncertain": self.differential.uncertain,  # the whole slide, as the differential beside it
            "uncertain_this_run": t.uncertain,
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
            **({"field": self._field_status()} if self.mode.name == "field" else {}),
            "unknown": self.differential.unknown,
            "alerts": [a.name for a in self.differential.alerts() if a.active],
            "alert_rules": [dataclasses.asdict(a) for a in self.differential.alerts()],
            "archive": dataclasses.asdict(self.archive.state()),
            "database": str(self.store.path),
            "store": self.store_sink.state()
            if hasattr(self, "store_sink")
            else {"state": "ok", "waiting": 0, "lost": 0, "last_error": ""},
            "page": self.url,
            "mqtt": self.mqtt.snapshot() if self.mqtt else {"enabled": False},
            "pipeline": {
                "layout": self.pipeline.layout
                if self.pipeline.layout != "ended"
                else self.pipeline.requested,
                "trial_ms_per_frame": {k: round(v * 1000, 3) for k, v in self.pipeline.trial.items()},
                "lab": getattr(self.classifier.lab, "name", "cvtcolor"),
            },
        }
