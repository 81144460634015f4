"""Where a FrameResult goes: small sinks with one interface, called in order by a SinkChain.

    StoreSink         the results database (the commit: a frame and all its cells, or none)
    TelemetrySink     counters and stage times for the page, /metrics and the summary
    ArchiveSink       flagged cells (uncertain, alert classes) saved as JPEG + JSON
    DifferentialSink  the session's running count and its alert rules
    LiveView          the latest frame and its cells, for the page

`edge bench` runs the same FrameProcessor with no sinks.

In field mode a frame holds every white cell in view, and the tracker says which are new: only a new
cell is stored, counted and archived (once per cell); the live view shows them all.
"""

from __future__ import annotations

import threading
import time

from edge.daemon.archive import FlaggedArchive
from edge.daemon.capture import Skipped
from edge.daemon.differential import DifferentialCount
from edge.daemon.processor import FrameResult
from edge.daemon.sources import Frame
from edge.daemon.store import ResultRow, ResultStore
from edge.daemon.telemetry import Telemetry


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


class StoreSink(Sink):
    name = "store"
    commits = True

    def __init__(self, store: ResultStore, source: str, log=print):
        self.store, self.source, self.log = store, source, log

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
        self.store.write_frame(f.frame_id, f.timestamp, self.source, f.ref, rows)

    def on_skipped(self, item: Skipped, source: str) -> None:
        self.log(f"skipped corrupt frame {item.ref}: {item.reason}")
        self.store.write_skipped(item.frame_id, item.timestamp, source, item.ref, item.reason)


class TelemetrySink(Sink):
    name = "telemetry"

    def __init__(self, telemetry: Telemetry):
        self.telemetry = telemetry

    def on_frame(self, result: FrameResult) -> None:
        cells = [c for c in result.cells if c.new]
        self.telemetry.on_processed(len(cells), sum(c.prediction.uncertain for c in cells), result.timings)


class ArchiveSink(Sink):
    name = "archive"

    def __init__(self, archive: FlaggedArchive, session_id: str, source: str, model_sha: str):
        self.archive, self.session_id, self.source, self.model_sha = archive, session_id, source, model_sha

    def on_frame(self, result: FrameResult) -> None:
        f = result.frame
        for cell in result.cells:
            p = cell.prediction
            reason = self.archive.reason(p.label, p.uncertain)
            if not reason or not cell.new:
                continue
            meta = {
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
            self.archive.save(result.view_crop(cell), meta)


class DifferentialSink(Sink):
    name = "differential"

    def __init__(self, differential: DifferentialCount, log=print):
        self.differential, self.log = differential, log

    def on_frame(self, result: FrameResult) -> None:
        for cell in result.cells:
            if not cell.new:
                continue
            for alert in self.differential.add(cell.prediction.label, cell.prediction.uncertain):
                self.log(
                    f"ALERT {alert.name}: {alert.fraction:.0%} of {alert.cells} cells are {'/'.join(alert.classes)}"
                    f" (threshold {alert.min_fraction:.0%})"
                )


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
