"""The per-frame loop: items from the source -> FrameProcessor -> sinks, in one of two layouts.

- threaded: a capture thread reads the source into a small queue while this thread classifies, so
  reading (decoding a file, waiting for a camera) overlaps inference;
- inline: this thread reads, then classifies: no hand-off between threads.

Which is faster depends on the machine: when invoke() is about a millisecond, handing every frame
from one thread to another can cost more than the overlap saves (docs/bench.md). So `auto` measures
instead of guessing: a live source (camera, simulator) always gets the capture thread, because
the frame classified must be the newest one and the oldest is dropped when inference falls behind;
a file source (hot folder, unpaced replay) runs `TRIAL_FRAMES` frames each way and keeps the faster.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from edge.daemon.capture import END, Capturer, CaptureThread, DropOldestQueue, Skipped
from edge.daemon.config import LAYOUTS
from edge.daemon.processor import FrameProcessor
from edge.daemon.sinks import SinkChain
from edge.daemon.sources import Frame

TRIAL_FRAMES = 32

log = logging.getLogger(__name__)


class Pipeline:
    """Runs in the main thread until the source ends, a signal, `max_frames` or `duration_s`."""

    def __init__(
        self,
        capturer: Capturer,
        processor: FrameProcessor,
        sinks: SinkChain,
        stop: threading.Event,
        queue_size: int = 4,
        max_frames: int = 0,
        duration_s: float = 0.0,
        layout: str = "auto",
        tick: Callable[[], None] | None = None,
    ):
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
        self.capturer, self.processor, self.sinks, self.stop = capturer, processor, sinks, stop
        self.queue = DropOldestQueue(queue_size)
        self.max_frames, self.duration_s = max_frames, duration_s
        self.tick = tick or (lambda: None)
        self.requested = layout
        self.layout = "threaded" if layout == "auto" and capturer.source.live else layout
        self.trial: dict[str, float] = {}  # layout -> seconds per frame, when `auto` measured them
        self.processed = 0
        self.end_reason = ""
        self.capture: CaptureThread | None = None
        self.fatal: BaseException | None = None

    # -- one item -------------------------------------------------------------------------------
    def _handle(self, item) -> bool:
        """Process one item; False when the source is exhausted."""
        if item is END:
            return False
        if isinstance(item, Skipped):
            self.sinks.on_skipped(item, self.capturer.source.name)
        elif item is not None:
            try:
                result = self.processor.process(item, time.perf_counter())
            except Exception as exc:  # one frame that breaks a later stage is that frame's record
                self._record_failure(item, exc)
            else:
                self.sinks.on_frame(result)
            self.processed += 1  # taken and dealt with: what --max-frames and the capture limit count
        return True

    def _record_failure(self, frame: Frame, exc: Exception) -> None:
        """A frame that decoded but failed in the mode or the classifier: recorded and counted as
        corrupt like an undecodable file (a hot folder does not take it again), with the exception and
        where it was raised, so that a bug shows in the log and the database instead of a crash loop."""
        tb = traceback.extract_tb(exc.__traceback__)
        where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
        reason = f"processing failed: {type(exc).__name__}: {str(exc)[:200]}{where}"
        self.capturer.telemetry.on_corrupt()
        self.sinks.on_skipped(
            Skipped(frame.frame_id, frame.ref, reason, frame.timestamp, frame.file_stat),
            self.capturer.source.name,
        )

    @property
    def heartbeat(self) -> float:
        return (
            self.capture.heartbeat
            if self.capture is not None
            else max(self.capturer.beat, self.capturer.source.heartbeat)
        )

    # -- layouts ----------------------------------------------------------------------------------
    def _start_thread(self) -> None:
        self.capture = CaptureThread(
            self.capturer.source,
            self.queue,
            self.capturer.telemetry,
            self.stop,
            capturer=self.capturer,
            look_ahead=getattr(self.processor.mode, "look_ahead", None),
        )
        self.capture.start()

    def _next(self):
        """The next item in the current layout (None: nothing yet, try again)."""
        if self.layout == "inline":
            item = self.capturer.next_item()
            return END if item is None else item
        if self.capture is None:
            self._start_thread()
        item = self.queue.get(timeout=0.2)
        if item is None and self.capture.finished.is_set() and not len(self.queue):
            return END  # the thread ended (stop or failure) without an END of its own
        return item

    def _to_inline(self) -> None:
        """Stop the capture thread after the item it is reading, and process what it queued."""
        self.capture.pause.set()
        while not (self.capture.finished.is_set() and not len(self.queue)):
            item = self.queue.get(timeout=0.05)
            if item is not None and not self._handle(item):
                self.layout = "ended"
                return
        self._check_fatal()
        self.capture = None
        self.layout = "inline"

    def _trial_step(self) -> None:
        """`auto` on a file source: TRIAL_FRAMES inline, then as many threaded; keep the faster."""
        n = self.processed
        if n == 1:
            self._trial_t0 = time.perf_counter()
        elif n == 1 + TRIAL_FRAMES:
            self.trial["inline"] = (time.perf_counter() - self._trial_t0) / TRIAL_FRAMES
            self.layout, self._trial_t0 = "threaded", time.perf_counter()
        elif n == 1 + 2 * TRIAL_FRAMES:
            self.trial["threaded"] = (time.perf_counter() - self._trial_t0) / TRIAL_FRAMES
            faster = min(self.trial, key=self.trial.get)
            log.info(
                f"pipeline: {self.trial['inline'] * 1000:.2f} ms a frame inline, "
                f"{self.trial['threaded'] * 1000:.2f} ms with a capture thread: keeping {faster}"
            )
            if faster == "inline":
                self._to_inline()
            self.requested = faster

    def _check_fatal(self) -> None:
        if self.capture is not None and self.capture.fatal is not None:
            self.fatal = self.capture.fatal

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> str:
        deadline = time.monotonic() + self.duration_s if self.duration_s else None
        while True:
            self.tick()
            if self.stop.is_set():
                self.end_reason = self.end_reason or "signal"
                break
            if deadline and time.monotonic() >= deadline:
                self.end_reason = "duration"
                break
            if self.max_frames and self.processed >= self.max_frames:
                self.end_reason = "max_frames"
                break
            if self.requested == "auto":
                self._trial_step()
            if self.layout == "ended" or not self._handle(self._next()):
                # The capture thread also ends on a signal; say which it was.
                self.end_reason = "signal" if self.stop.is_set() else "source exhausted"
                break
        self.stop.set()
        self._drain()
        self._check_fatal()
        if self.capture is None:
            self.capturer.finish()
        if self.fatal is not None:  # e.g. a missing picamera2 on reconnect: one line, non-zero exit
            raise self.fatal
        return self.end_reason

    def _drain(self) -> None:
        """Finish the frames already captured (SIGTERM: drain in flight, then flush and exit)."""
        if self.capture is None:
            return
        self.capture.finished.wait(2.0)
        while len(self.queue):
            if self.max_frames and self.processed >= self.max_frames:
                break
            self._handle(self.queue.get(timeout=0))
