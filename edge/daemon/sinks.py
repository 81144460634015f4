"""Where a FrameResult goes: small sinks with one interface, called in order by a SinkChain.

The daemon's chain, as edge/daemon/session.py builds it:

    ArchiveSink       flagged cells (uncertain, alert classes) saved as JPEG + JSON; before the row, so
                      a committed row always has its image (after a kill, an image whose row never
                      committed is moved aside at the next start: FlaggedArchive.repair)
    StoreSink         the results database (the commit: a frame and all its cells, or none)
    TelemetrySink     counters and stage times for the page, /metrics and the summary
    DifferentialSink  the session's running count and its alert rules
    SiteSink          the microscope's state recorded; once the gate finds it differs, every cell of the
                      session flagged (those stored before too) and the alerts withheld (edge/site.py)
    LiveView          the latest frame and its cells, for the page
    MqttSink          with [mqtt] only (edge/daemon/mqtt/sink.py): after the commit, wakes the publisher

`edge bench` runs the same FrameProcessor and Pipeline with one sink of its own instead, which keeps
each frame's timings (edge/bench/runner.py Recorder).

In field mode a frame holds every white cell in view, and the tracker says which are new: only a new
cell is stored, counted and archived (once per cell); the live view shows them all.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass

from edge.daemon.archive import FlaggedArchive
from edge.daemon.capture import Skipped
from edge.daemon.differential import DifferentialCount
from edge.daemon.processor import FrameResult
from edge.daemon.sources import Frame
from edge.daemon.telemetry import Telemetry
from edge.results.store import ResultRow, ResultStore, StoreFull
from edge.site import ALERT_WITHHELD, CHECKING, UNCALIBRATED_REASON, GateWatch, SiteState

log = logging.getLogger(__name__)


class Sink:
    name = "sink"
    commits = False  # the chain records `latency` (frame start -> here) after a committing sink

    def on_frame(self, result: FrameResult) -> None:
        raise NotImplementedError

    def on_skipped(self, item: Skipped, source: str) -> None:  # noqa: B027 - optional hook
        pass


class SinkChain:
    """Calls every sink in order and times those that write (`store`)."""

    def __init__(self, sinks: list[Sink]):
        self.sinks = list(sinks)

    def on_frame(self, result: FrameResult) -> None:
        for sink in self.sinks:
            t0 = time.perf_counter()
            sink.on_frame(result)
            if sink.commits:
                now = time.perf_counter()
                result.timings[sink.name] = (now - t0) * 1000
                result.timings["latency"] = (now - result.frame.t_capture_start) * 1000

    def on_skipped(self, item: Skipped, source: str) -> None:
        for sink in self.sinks:
            sink.on_skipped(item, source)


@dataclass(frozen=True)
class StoreHealth:
    state: str  # ok | full (the database refuses writes)
    waiting: int  # frames classified, waiting in memory for disk space
    lost: int  # frames that overflowed that backlog
    last_error: str


class StoreSink(Sink):
    """Commits each frame. When the disk is full, classification goes on: the frame's rows wait in
    a bounded backlog, in order, and are written as soon as a retry succeeds; only what overflows the
    backlog is lost, and it is counted. Frames are never written out of order."""

    name = "store"
    commits = True
    RETRY_S = 5.0
    BACKLOG = 50_000  # frames kept while the disk is full (~25 MB of rows in cell mode)

    def __init__(self, store: ResultStore, source: str):
        self.store, self.source = store, source
        self.backlog: deque[tuple] = deque()
        self.lost = 0
        self.last_error = ""
        self._retry_at = 0.0

    def on_frame(self, result: FrameResult) -> None:
        f = result.frame
        rows = [
            ResultRow(
                c.index,
                c.box,
                c.prediction.label,
                c.prediction.confidence,
                c.prediction.probabilities,
                c.prediction.uncertain,
                result.timings,
                c.prediction.reason,
                c.prediction.rejection_score,
                c.track_id,
                c.score,
            )
            for c in result.cells
            if c.new
        ]
        self._commit(("frame", f.frame_id, f.timestamp, self.source, f.ref, rows))

    def on_skipped(self, item: Skipped, source: str) -> None:
        log.warning(f"skipped corrupt frame {item.ref}: {item.reason}")
        self._commit(
            ("skipped", item.frame_id, item.timestamp, source, item.ref, item.reason, item.file_stat)
        )

    def _commit(self, entry: tuple) -> None:
        if self.backlog:  # order is kept: nothing new goes in before what waits
            self._keep(entry)
            self.retry()
            return
        try:
            self._write(entry)
        except StoreFull as exc:
            self.last_error = str(exc)
            log.warning(f"store: {exc}: keeping results in memory, writing them when there is room")
            self._retry_at = time.monotonic() + self.RETRY_S
            self._keep(entry)

    def flag_session(self, reason: str) -> None:
        """Every cell of the session needs a look (the gate): the rows waiting for disk space here,
        and those in the database (now, or before the next frame once there is room)."""
        for kind, *args in self.backlog:
            if kind == "frame":
                for row in args[-1]:
                    row.uncertain = True
                    if not row.reason:
                        row.reason = reason
                    elif reason not in row.reason:
                        row.reason = f"{row.reason}; {reason}"
        self.store.flag_session(reason)

    def _write(self, entry: tuple) -> None:
        kind, *args = entry
        (self.store.write_frame if kind == "frame" else self.store.write_skipped)(*args)

    def _keep(self, entry: tuple) -> None:
        if len(self.backlog) >= self.BACKLOG:
            self.backlog.popleft()
            self.lost += 1
        self.backlog.append(entry)

    def retry(self, force: bool = False) -> None:
        """Write what waits, oldest first, at most every RETRY_S (or now, when `force`)."""
        if not self.backlog or (not force and time.monotonic() < self._retry_at):
            return
        self._retry_at = time.monotonic() + self.RETRY_S
        try:
            while self.backlog:
                self._write(self.backlog[0])
                self.backlog.popleft()
        except StoreFull as exc:
            self.last_error = str(exc)
            return
        log.info("store: there is room again; every result kept in memory is written")
        self.last_error = ""

    def health(self) -> StoreHealth:
        """For the page, /api/status, /metrics and the summary."""
        return StoreHealth(
            "full" if self.backlog or not self.store.ready else "ok",
            len(self.backlog),
            self.lost,
            self.last_error,
        )

    def state(self) -> dict:
        return asdict(self.health())


class TelemetrySink(Sink):
    name = "telemetry"

    def __init__(self, telemetry: Telemetry):
        self.telemetry = telemetry

    def on_frame(self, result: FrameResult) -> None:
        cells = [c for c in result.cells if c.new]
        self.telemetry.on_processed(len(cells), sum(c.prediction.uncertain for c in cells), result.timings)


class ArchiveSink(Sink):
    """Flagged cells' crops. While the gate checks a new microscope (edge/site.py), the crops of the
    cells it would not keep are held too (as JPEG, at most the gate's cells): should the microscope
    differ, those cells are flagged after they were stored, and the technician needs their images."""

    name = "archive"
    MAX_HELD = 200

    def __init__(
        self,
        archive: FlaggedArchive,
        session_id: str,
        source: str,
        model_sha: str,
        gate: GateWatch | None = None,
    ):
        self.archive, self.session_id, self.source, self.model_sha = archive, session_id, source, model_sha
        self.gate = gate
        self.held: list[tuple[bytes, dict]] = []

    def _checking(self) -> bool:
        c = self.archive.config
        return self.gate is not None and self.gate.decision == CHECKING and c.enabled and c.uncertain

    def on_frame(self, result: FrameResult) -> None:
        for cell in result.cells:
            if not cell.new:
                continue
            p = cell.prediction
            reason = self.archive.reason(p.label, p.uncertain)
            if reason:
                self.archive.save(result.view_crop(cell), self._meta(result.frame, cell, reason))
            elif self._checking() and len(self.held) < self.MAX_HELD:
                try:
                    jpeg = self.archive.encode(result.view_crop(cell))
                except OSError:
                    continue
                meta = {**self._meta(result.frame, cell, "uncertain"), "uncertain": True}
                self.held.append((jpeg, {**meta, "flagged": UNCALIBRATED_REASON}))
        if self.held and not self._checking():
            # decided: before the rows are flagged (SiteSink), so a flagged row has its image
            if self.gate is not None and self.gate.differs:
                for jpeg, meta in self.held:
                    self.archive.save(jpeg, meta)
            self.held.clear()

    def _meta(self, f: Frame, cell, reason: str) -> dict:
        p = cell.prediction
        return {
            **cell_info(f, cell),
            "reason": reason,
            "session_id": self.session_id,
            "source": self.source,
            "source_ref": f.ref,
            "timestamp": f.timestamp,
            "model_sha": self.model_sha,
            "top_k": [[n, round(v, 4)] for n, v in p.top_k],
            "probabilities": {k: round(v, 4) for k, v in p.probabilities.items()},
        }


class DifferentialSink(Sink):
    name = "differential"

    def __init__(self, differential: DifferentialCount):
        self.differential = differential

    def on_frame(self, result: FrameResult) -> None:
        for cell in result.cells:
            if not cell.new:
                continue
            for alert in self.differential.add(cell.prediction.label, cell.prediction.uncertain):
                log.warning(
                    f"ALERT {alert.name}: {alert.percent:.1f} % {'/'.join(alert.classes)} ({alert.words()};"
                    f" threshold {alert.min_fraction:.0%})"
                )


class SiteSink(Sink):
    """The session's microscope (edge/site.py): its state written to results.db whenever the gate's
    decision or the scale changes (the report and FHIR read it there later), and, the moment the gate
    finds the microscope differs, every cell of the session flagged "uncalibrated microscope" (those
    stored before the decision too) and the alerts withheld."""

    name = "site"

    def __init__(
        self,
        state: Callable[[], SiteState],
        store_sink: StoreSink,
        differential: DifferentialCount,
        model_sha: str,
    ):
        self.state, self.store_sink, self.differential = state, store_sink, differential
        self.model_sha = model_sha
        self._recorded: tuple | None = None
        self.record(self.state())

    def record(self, state: SiteState) -> None:
        self._recorded = (state.decision, state.scale_rbc_px, state.scale_source)
        self.store_sink.store.record_site(state.to_record(self.model_sha))

    def on_frame(self, result: FrameResult) -> None:
        state = self.state()
        if (state.decision, state.scale_rbc_px, state.scale_source) == self._recorded:
            return
        if state.differs and self.differential.withheld is None:
            self.store_sink.flag_session(UNCALIBRATED_REASON)
            self.differential.flag_all()
            self.differential.withhold(ALERT_WITHHELD)
            log.warning(f"microscope: {state.banner}")
        self.record(state)

    def finish(self) -> None:
        """The run ends: its last state (cells checked so far, while still checking)."""
        self.record(self.state())


def cell_info(frame: Frame, cell) -> dict:
    """What the page and the archive show of one cell."""
    p = cell.prediction
    info = {
        "frame_id": frame.frame_id,
        "crop_index": cell.index,
        "label": p.label,
        "confidence": round(p.confidence, 4),
        "uncertain": p.uncertain,
        "box": list(cell.view_box),
    }
    if cell.track_id is not None:  # field mode
        info.update(score=cell.score, track_id=cell.track_id, new=cell.new)
    return info


class LiveView(Sink):
    """The latest frame and its cells. The page asks for a `snapshot`; nothing is encoded otherwise."""

    name = "live"

    def __init__(self):
        self._lock = threading.Lock()
        self._frame: Frame | None = None
        self._cells: list[dict] = []

    def on_frame(self, result: FrameResult) -> None:
        cells = [cell_info(result.frame, c) for c in result.cells]
        with self._lock:
            self._frame, self._cells = result.frame, cells

    def snapshot(self) -> tuple[Frame | None, list[dict]]:
        with self._lock:
            return self._frame, list(self._cells)
