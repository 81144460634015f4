"""`edge run` around one Session (edge/daemon/session.py): signals, the page, systemd notifications,
the capture and the per-frame pipeline, then the shutdown and the summary.
`Daemon(config).run()` returns the summary dict (edge/daemon/status.py summary_json)."""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import threading
import time

from edge.daemon import early_signals
from edge.daemon.capture import Capturer
from edge.daemon.config import ConfigError, DaemonConfig, HttpConfig, parse_listen
from edge.daemon.notify import SystemdNotifier
from edge.daemon.pipeline import Pipeline
from edge.daemon.session import Session, build_session
from edge.daemon.sources import SourceError
from edge.daemon.status import RunReport, architecture, summary_json
from edge.errors import MissingExtraError

log = logging.getLogger(__name__)


class Daemon:
    def __init__(self, config: DaemonConfig, out=print):
        self.config = config
        self.out = out
        self.stop = threading.Event()
        self.notifier = SystemdNotifier()

    def run(self) -> dict:
        # The capture thread, the page and the pipeline share the GIL; a 1 ms switch interval (default 5)
        # lets the pipeline thread get it back quickly after invoke() and decode calls that release it.
        sys.setswitchinterval(0.001)
        install_signals(self.stop)  # first: a stop while the model loads is a clean stop after it
        session = build_session(self.config, self.stop)
        web = None
        try:
            web = start_web(session, self.config.http)
            pipeline = self._pipeline(session)
            signed = session.bundle.signature  # a clinic's approval (edge sign), shown where it starts
            log.info(
                f"edge run: session {session.session_id}, model {session.bundle.sha256[:12]} "
                f"({architecture(session.bundle)}{f', signed by {signed.signer!r}' if signed else ''}), "
                f"source {session.source.name}, db {session.store.path}"
            )
            if web:
                self.out(f"page: {web.url}")
            self.notifier.ready(f"classifying {session.source.name}")
            if session.mqtt:  # the review's summary is cached: the page and the publisher share it
                session.mqtt.start(session.status)
            reason = pipeline.run()
            review = session.reviews.summary(session.session_id, max_age_s=0)  # before the book closes
        finally:
            self.notifier.stopping()
            session.close()
            if web:
                web.stop()
        # A clean stop with every row written: the archive agrees with the database, and later starts
        # need not read this session's folder (FlaggedArchive.unchecked_sessions).
        store = session.store_sink.health()
        if self.config.archive.enabled and not (store.waiting or store.lost):
            session.archive.mark_checked()
        final = dataclasses.replace(session.status(review=False), review=review)
        return summary_json(final, run_report(session, pipeline, reason, web))

    def _pipeline(self, session: Session) -> Pipeline:
        c = self.config
        opened = open_source_first_time(session)
        capturer = Capturer(
            session.source,
            session.telemetry,
            self.stop,
            c.source.reconnect_max_s,
            first_frame_id=session.store.next_frame_id(),
            opened=opened,
            limit=c.pipeline.max_frames,
        )
        pipeline = Pipeline(
            capturer,
            session.processor,
            session.sinks,
            self.stop,
            c.source.queue_size,
            c.pipeline.max_frames,
            c.pipeline.duration_s,
            c.pipeline.layout,
            tick=lambda: self._tick(pipeline),
        )
        return pipeline

    def _tick(self, pipeline: Pipeline) -> None:
        """Called by the pipeline loop several times a second: watchdog pings while healthy."""
        if not self.notifier.enabled:
            return
        # A capture stuck in a driver call stops the pings, and systemd restarts us.
        stalled = time.monotonic() - pipeline.heartbeat > max(
            10.0, (self.notifier.watchdog_interval or 5) * 1.5
        )
        capture = pipeline.capture
        if not stalled or (capture is not None and capture.finished.is_set()):
            self.notifier.watchdog()


def install_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set `stop`: the pipeline drains and the daemon exits 0."""

    def on_signal(signum, _frame):
        if not stop.is_set():
            log.info(f"{signal.Signals(signum).name}: draining and stopping")
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for signum in early_signals.received:  # stopped while the model was still loading
        on_signal(signum, None)
    early_signals.received.clear()


def open_source_first_time(session: Session) -> bool:
    """Open in the main thread so a missing dependency fails at start; a camera that is not there yet
    is retried by the capture thread."""
    try:
        session.source.open()
    except SourceError as exc:
        session.telemetry.on_source_error(str(exc))
        log.warning(f"source: {exc}; will keep retrying")
        return False
    session.telemetry.on_source_open(reconnect=False)
    return True


def start_web(session: Session, http: HttpConfig):
    """The page, /api/status and /metrics, serving (None with `http.listen = off`)."""
    listen = parse_listen(http.listen)
    if listen is None:
        return None
    try:
        from edge.daemon.web import WebServer  # flask, waitress, prometheus_client: the 'device' extra
    except ImportError as exc:
        raise MissingExtraError(
            "edge run (page and metrics; or --http off)", "device", exc.name or str(exc)
        ) from None
    try:
        web = WebServer(session, *listen, token=http.token)
    except OSError as exc:
        raise ConfigError(f"http.listen: cannot listen on {http.listen} ({exc.strerror or exc})") from None
    web.start()
    return web


def run_report(session: Session, pipeline: Pipeline, reason: str, web) -> RunReport:
    return RunReport(
        ended_by=reason,
        before_this_run=session.before,
        totals=session.telemetry.run_totals(),
        page=web.url if web else None,
        layout=pipeline.layout if pipeline.layout != "ended" else pipeline.requested,
        trial_ms_per_frame={k: round(v * 1000, 3) for k, v in pipeline.trial.items()},
        lab=getattr(session.classifier.lab, "name", "cvtcolor"),
    )
