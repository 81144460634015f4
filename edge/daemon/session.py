"""Everything one run of `edge run` needs, assembled in one place.

`build_session(config)` loads and opens the parts in this order and returns them as a frozen
`Session`; when a step fails (a bad bundle, a database that cannot be opened, an archive folder that
cannot be made), what was opened before it is closed again and the error goes up: there is never a
half-built daemon. edge/daemon/app.py runs the pipeline on the Session and closes it.

    config
      -> telemetry (the uptime counts from here)
      -> bundles: the classifier's and the mode's (the detector), signatures checked
      -> classifier -> mode -> processor (warmed up)
      -> store, reviews -> session id -> source (resumed from the store) -> session row
      -> differential (restored from the store; a continued session keeps its gate's decision)
      -> archive (repaired) -> warnings
      -> MQTT publisher (not yet connected) -> telemetry, live view and the sink chain
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import threading
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from edge import golden, labtables
from edge.bundle import Bundle
from edge.catalogue import cell_class
from edge.daemon.archive import FlaggedArchive
from edge.daemon.config import ConfigError, DaemonConfig, without_secrets
from edge.daemon.differential import DifferentialCount
from edge.daemon.modes import MODES, CellMode, FieldMode
from edge.daemon.processor import FrameProcessor
from edge.daemon.sinks import (
    ArchiveSink,
    DifferentialSink,
    LiveView,
    SinkChain,
    SiteSink,
    StoreSink,
    TelemetrySink,
)
from edge.daemon.sources import FrameSource, open_source
from edge.daemon.status import ModelInfo, Status
from edge.daemon.telemetry import Telemetry
from edge.errors import BundleError
from edge.golden import GoldenResult
from edge.predict import Classifier
from edge.preprocess import set_max_pixels
from edge.results.reviews import ReviewBook
from edge.results.schema import ResultsError
from edge.results.store import ResultStore
from edge.signing import require_trusted
from edge.site import ALERT_WITHHELD, SiteState, site_state

if TYPE_CHECKING:
    from edge.daemon.mqtt.publisher import MqttPublisher
    from edge.daemon.mqtt.sink import MqttSink

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Session:
    config: DaemonConfig
    session_id: str
    bundle: Bundle
    classifier: Classifier
    mode: CellMode | FieldMode
    processor: FrameProcessor
    store: ResultStore
    reviews: ReviewBook  # the review page's queue and sign-off, on a connection of its own
    source: FrameSource  # built, resumed, not yet opened
    before: dict  # frames and cells this session had recorded before this start
    differential: DifferentialCount
    archive: FlaggedArchive
    warnings: list[str]
    mqtt: MqttPublisher | None  # when [mqtt] names a broker; started with the pipeline
    telemetry: Telemetry
    live: LiveView
    store_sink: StoreSink
    site_sink: SiteSink
    mqtt_sink: MqttSink | None
    sinks: SinkChain
    golden: tuple[GoldenResult, ...] = ()  # each bundle's golden check at start (edge/golden.py)

    def site(self) -> SiteState:
        return microscope(self.bundle, self.processor)

    def status(self, review: bool = True) -> Status:
        """The state now (edge/daemon/status.py renders it). `review`: also the review queue's summary,
        which reads the database (the page shows it; the summary and MQTT do not)."""
        telemetry = self.telemetry.snapshot()
        _, cells = self.live.snapshot()
        return Status(
            session_id=self.session_id,
            model=ModelInfo.of(self.bundle, self.classifier.backend),
            source=self.source.describe(),
            mode=self.mode.describe(),
            field=self.mode.status(self.differential),
            database=str(self.store.path),
            store=self.store_sink.health(),
            telemetry=telemetry,
            queue_size=self.config.source.queue_size,
            differential=self.differential.snapshot(),
            archive=self.archive.state(),
            archive_recent=list(self.archive.recent),
            last_result=cells[0] if cells else None,
            warnings=self.warnings,
            review=self._review() if review else None,
            mqtt=self.mqtt.snapshot() if self.mqtt else {"enabled": False},
            site=self.site(),
            golden=self.golden,
        )

    def _review(self) -> dict:
        return self.reviews.summary(self.session_id)

    def close(self) -> None:
        """After the pipeline: a last try at what waits for disk space, MQTT's drain (it marks what the
        broker acknowledged in the database, so before the store closes), then the database."""
        self.store_sink.retry(force=True)
        self.site_sink.finish()
        waiting = self.store_sink.health().waiting
        if waiting:
            log.warning(
                f"store: {waiting} frame(s) could not be written (disk full); they are in this summary only"
            )
        if self.mqtt:
            if self.mqtt_sink:
                self.mqtt_sink.finish()
            self.mqtt.stop()
        self.reviews.close()
        self.store.close()
        self.mode.close()  # its motion worker and (field mode) the detector's interpreter


def build_session(config: DaemonConfig, stop: threading.Event | None = None) -> Session:
    """Load and open everything a run needs (the module docstring gives the order). `stop` ends the
    hot folder's polling; errors are one line: BundleError (exit 3), ConfigError (exit 2)."""
    c = config
    stop = stop or threading.Event()
    telemetry = Telemetry()  # uptime counts from here
    with ExitStack() as undo:  # closes what was opened if a later step fails
        bundle, classifier, mode, processor = _open_models(c, undo)
        checked = _golden_checks(classifier, mode)
        store, reviews = _open_store(c, undo)
        session_id = c.store.session or new_session_id()
        source = open_source(c.source, stop_event=stop)
        source.resume(store)  # e.g. the files of a hot folder already taken
        store.start_session(
            session_id, bundle.sha256, str(bundle.path), source.name, mode.name, without_secrets(c)
        )
        before = _continued(store, session_id)
        differential = _open_differential(c, bundle, store, processor)
        archive = _open_archive(c, store, session_id)
        warnings = _warnings(c, bundle, differential, checked)
        mqtt = _open_mqtt(c, store, undo)
        live, store_sink = LiveView(), StoreSink(store, source.name)
        site_sink = SiteSink(partial(microscope, bundle, processor), store_sink, differential, bundle.sha256)
        chain = [
            # The image first, then the row: after a kill, an image whose row never committed is moved
            # aside at the next start (FlaggedArchive.repair); a committed row always has its image.
            ArchiveSink(archive, session_id, source.name, bundle.sha256, processor.gate),
            store_sink,
            TelemetrySink(telemetry),
            DifferentialSink(differential),
            site_sink,
            live,
        ]
        mqtt_sink = _mqtt_sink(mqtt, differential, session_id)
        undo.pop_all()  # built: from here Session.close closes them
    return Session(
        config=c,
        session_id=session_id,
        bundle=bundle,
        classifier=classifier,
        mode=mode,
        processor=processor,
        store=store,
        reviews=reviews,
        source=source,
        before=before,
        differential=differential,
        archive=archive,
        warnings=warnings,
        mqtt=mqtt,
        telemetry=telemetry,
        live=live,
        store_sink=store_sink,
        site_sink=site_sink,
        mqtt_sink=mqtt_sink,
        sinks=SinkChain([*chain, mqtt_sink] if mqtt_sink else chain),
        golden=checked,
    )


def new_session_id() -> str:
    """A new session per start unless one is named; the random suffix keeps two starts within a second
    (a crash loop, a quick restart) from silently merging into one session."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)


def _continued(store: ResultStore, session_id: str) -> dict:
    """A session named again (the same slide after a restart) carries on: say how far it had got."""
    before = store.session_totals()
    if before["frames"]:
        log.info(
            f"session {session_id} continues: {before['frames']} frames and {before['cells']} "
            "cells were recorded before this start"
        )
    return before


def microscope(bundle: Bundle, processor: FrameProcessor) -> SiteState:
    """The microscope now: the bundle's site (if calibrated), the session's scale, the gate."""
    return site_state(bundle.manifest, processor.gate, processor.keeper.rbc_px, processor.keeper.source)


def _open_differential(
    c: DaemonConfig, bundle: Bundle, store: ResultStore, processor: FrameProcessor
) -> DifferentialCount:
    """The session's count, carried on from the database; and a continued session (the same slide, on
    the same microscope) keeps what its earlier run found: the gate's decision and a measured scale,
    when the model is the same."""
    white = [n for n in bundle.labels if cell_class(n).white_cell]
    differential = DifferentialCount(c.differential, bundle.labels, white)
    differential.restore(store.session_counts())
    record = store.site_record()
    if record is None or record.model_sha != bundle.sha256:
        return differential
    gate, keeper = processor.gate, processor.keeper
    gate.resume(record.decision, record.cells_checked, record.decided_at, record.median_score)
    if not keeper.known and record.scale_rbc_px and record.scale_source == "measured":
        keeper.rbc_px, keeper.source = record.scale_rbc_px, "measured"
    if gate.differs:
        differential.withhold(ALERT_WITHHELD)
        log.warning(
            f"microscope: the earlier run found it differs ({record.cells_checked} cells); it still does"
        )
    return differential


def _open_models(
    c: DaemonConfig, undo: ExitStack
) -> tuple[Bundle, Classifier, CellMode | FieldMode, FrameProcessor]:
    set_max_pixels(c.source.max_pixels)  # one limit for every file the source decodes
    bundle = Bundle.load(c.bundle_path())  # BundleError: one line, exit 3
    mode_class = MODES[c.mode]  # pipeline.mode, "auto" chosen by the source
    # the mode's own bundles (field: the detector) are verified before any interpreter starts (and talks)
    mode_bundles = mode_class.bundles(c.pipeline)
    if c.trusted_keys:  # a clinic that approves bundles approves its detector too
        for approved in (bundle, *mode_bundles):
            require_trusted(approved, c.trusted_keys)
    # Every frame is preprocessed, so the ~1 s for version 1's LAB lookup tables pays back at once
    # (built only when a bundle of version 1 reads them: edge.labtables.choose).
    classifier = Classifier.open(
        bundle,
        c.pipeline.backend,
        lab=labtables.choose(c.pipeline.lab, [b.preprocess_spec for b in (bundle, *mode_bundles)]),
        threads=mode_class.interpreter_threads(c.pipeline.threads),
    )
    undo.callback(classifier.backend.close)
    mode = mode_class.from_config(c.pipeline, mode_bundles, classifier.lab)
    undo.callback(mode.close)
    processor = FrameProcessor(mode, classifier)
    processor.warm_up()
    return bundle, classifier, mode, processor


def _golden_checks(classifier: Classifier, mode) -> tuple[GoldenResult, ...]:
    """Does this machine compute what the bundles were made with? Every golden input's preprocessing
    and one inference per bundle, on the backends the run uses (edge/golden.py); a failure becomes a
    warning (_warnings), on the page and in /api/status."""
    opened = [classifier]
    detector = getattr(mode, "detector", None)  # field mode's
    if detector is not None:
        opened.append(detector)
    results = []
    for model in opened:
        try:
            result = golden.check(model.bundle, model.backend, model.lab, inferences=1)
        except BundleError as exc:
            result = GoldenResult(model.bundle.path.name, golden.FAILED, f"golden check FAILED: {exc}")
        if result.state == golden.OK:
            log.info(f"golden check: {result.bundle}: {result.detail}")
        results.append(result)
    return tuple(results)


def _open_store(c: DaemonConfig, undo: ExitStack) -> tuple[ResultStore, ReviewBook]:
    try:
        store = ResultStore(c.store.db, c.store.synchronous, c.store.fsync_interval_s, c.store.max_db_mb)
    except (ResultsError, OSError) as exc:
        raise ConfigError(f"store.db: cannot open {c.store.db} ({exc})") from None
    undo.callback(store.close)
    reviews = ReviewBook(c.store.db)  # edge/results/reviews.py
    undo.callback(reviews.close)
    return store, reviews


def _open_archive(c: DaemonConfig, store: ResultStore, session_id: str) -> FlaggedArchive:
    try:
        archive = FlaggedArchive(c.archive, c.archive_dir, session_id)
        if c.archive.enabled:  # a kill can leave the archive and the database out of step
            _check_archive(c, archive, store)
    except OSError as exc:
        raise ConfigError(f"archive.dir: cannot use {c.archive_dir} ({exc.strerror or exc})") from None
    return archive


def _check_archive(c: DaemonConfig, archive: FlaggedArchive, store: ResultStore) -> None:
    """Repair this session's folder (a resumed slide), and every other session's that no clean stop
    marked: a killed run is followed by a start under a new session id, so its folder is found here,
    repaired once, and marked."""
    a = c.archive
    found = archive.repair(store.flagged_cells(set(a.alert_classes), a.uncertain))
    archive.reopen()
    if found.message():
        log.warning(found.message())
    for session in archive.unchecked_sessions():
        recorded_with = store.session_config(session)
        if recorded_with is None:
            continue  # a folder of another database's session: not ours to judge
        # the archive rule that session ran with decides which of its cells had an image
        rule = {**a.model_dump(), **recorded_with.get("archive", {})}
        cells = store.flagged_cells(set(rule["alert_classes"]), rule["uncertain"], session)
        message = archive.repair(cells, session).message(session)
        if message:
            log.warning(message)
        archive.mark_checked(session)


def _warnings(c: DaemonConfig, bundle: Bundle, differential: DifferentialCount, checked=()) -> list[str]:
    """What the page shows under Warnings, said in the log at start too."""
    warnings = list(differential.warnings)
    warnings += [f"{r.bundle}: {r.detail}" for r in checked if r.state in (golden.FAILED, golden.WARN)]
    if bundle.manifest.uncertainty.warning:
        warnings.append(f"bundle: {bundle.manifest.uncertainty.warning}")
    unknown = sorted(set(c.archive.alert_classes) - set(bundle.labels))
    if unknown:
        warnings.append(f"archive.alert_classes: {', '.join(unknown)} not labels of this model")
    for w in warnings:
        log.warning(f"warning: {w}")
    return warnings


def _open_mqtt(c: DaemonConfig, store: ResultStore, undo: ExitStack) -> MqttPublisher | None:
    """The MQTT publisher when [mqtt] names a broker (it connects once the pipeline runs)."""
    if not c.mqtt.enabled:
        return None
    from edge.daemon.mqtt.publisher import MqttPublisher  # paho-mqtt: the 'device' extra, [mqtt] only

    publisher = MqttPublisher(c.mqtt, store.path, c.store.synchronous)
    undo.callback(publisher.stop)
    log.info(f"mqtt: results to {c.mqtt.broker} under {publisher.topics.base}/")
    return publisher


def _mqtt_sink(publisher: MqttPublisher | None, differential: DifferentialCount, session_id: str):
    if publisher is None:
        return None
    from edge.daemon.mqtt.sink import MqttSink  # imports the publisher, so paho-mqtt too

    return MqttSink(publisher, differential, session_id)
