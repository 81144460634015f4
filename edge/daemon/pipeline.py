"""Capture thread -> bounded queue -> preprocess + classify -> sinks.

The queue is small on purpose: a live camera must be classified now, not 3 s late, so when the
pipeline falls behind the OLDEST frame is dropped (and counted). File sources (hot folder, unpaced
replay) block instead: every file is processed exactly once.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

from edge.daemon.sources import CorruptFrame, Frame, FrameSource, SourceError
from edge.daemon.telemetry import Telemetry


@dataclass
class Skipped:
    """A corrupt frame or file, recorded by the pipeline thread (the only database writer)."""

    frame_id: int
    ref: str
    reason: str
    timestamp: float


END = object()  # the source is exhausted


class DropOldestQueue:
    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self.items: deque = deque()
        self.cond = threading.Condition()

    def put(self, item, drop_oldest: bool, stop: threading.Event) -> int:
        """Add `item`; returns how many frames were dropped to make room (0 or 1)."""
        with self.cond:
            dropped = 0
            if drop_oldest:
                # Only frames are dropped: a Skipped record or END must reach the pipeline.
                while len(self.items) >= self.maxsize:
                    victim = next((i for i in self.items if isinstance(i, Frame)), None)
                    if victim is None:
                        break
                    self.items.remove(victim)
                    dropped += 1
            else:
                while len(self.items) >= self.maxsize and not stop.is_set():
                    self.cond.wait(0.1)
            self.items.append(item)
            self.cond.notify_all()
            return dropped

    def get(self, timeout: float):
        with self.cond:
            if not self.items:
                self.cond.wait(timeout)
            if not self.items:
                return None
            item = self.items.popleft()
            self.cond.notify_all()
            return item

    def __len__(self) -> int:
        with self.cond:
            return len(self.items)


class CaptureThread(threading.Thread):
    """Reads the source, reconnecting with exponential back-off, and feeds the queue."""

    def __init__(
        self,
        source: FrameSource,
        queue: DropOldestQueue,
        telemetry: Telemetry,
        stop: threading.Event,
        reconnect_max_s: float = 10.0,
        first_frame_id: int = 0,
        opened: bool = False,
        log=print,
    ):
        super().__init__(name="capture", daemon=True)
        self.source, self.queue, self.telemetry, self.stop = source, queue, telemetry, stop
        self.reconnect_max_s = reconnect_max_s
        self.next_id = first_frame_id
        self.opened = opened
        self.log = log
        self.fatal: BaseException | None = None
        self._beat = time.monotonic()
        self.finished = threading.Event()

    @property
    def heartbeat(self) -> float:
        """Last sign of life: a loop turn, or the source polling while idle."""
        return max(self._beat, self.source.heartbeat)

    def _backoff(self, delay: float) -> float:
        self.stop.wait(delay)
        return min(delay * 2, self.reconnect_max_s)

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # never die silently: the pipeline reports it and exits non-zero
            self.fatal = exc
        finally:
            if self.opened:
                self._close()
            self.queue.put(END, drop_oldest=False, stop=self.stop)
            self.finished.set()

    def _loop(self) -> None:
        delay = 0.5
        failed = not self.opened
        while not self.stop.is_set():
            self._beat = time.monotonic()
            if not self.opened:
                try:
                    self.source.open()
                except SourceError as exc:
                    self.telemetry.on_source_error(str(exc))
                    self.log(f"source: {exc}; retrying in {delay:.1f} s")
                    delay = self._backoff(delay)
                    continue
                self.opened = True
                self.telemetry.on_source_open(reconnect=failed)
                if failed:
                    self.log(f"source: reconnected to {self.source.name}")
                delay = 0.5
            self.source.wait_for_next()
            t0 = time.perf_counter()
            try:
                frame = self.source.read()
            except CorruptFrame as exc:
                self.telemetry.on_corrupt()
                self.queue.put(
                    Skipped(self._take_id(), exc.ref, exc.reason, time.time()),
                    drop_oldest=False,
                    stop=self.stop,
                )
                continue
            except SourceError as exc:
                self.telemetry.on_source_error(str(exc))
                self.log(f"source: {exc}; reconnecting in {delay:.1f} s")
                self._close()
                failed = True
                delay = self._backoff(delay)
                continue
            if frame is None:
                return
            frame.t_capture_start, frame.t_captured = t0, time.perf_counter()
            frame.frame_id = self._take_id()
            self.telemetry.on_captured()
            dropped = self.queue.put(frame, drop_oldest=self.source.live, stop=self.stop)
            if dropped:
                self.telemetry.on_dropped(dropped)
        self._close()

    def _take_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def _close(self) -> None:
        self.opened = False
        try:
            self.source.close()
        except Exception as exc:  # a half-dead camera may fail to close; we reopen a new handle anyway
            self.log(f"source: close failed ({exc})")


class Pipeline:
    """Runs in the main thread: takes frames off the queue, classifies, hands results to the sinks."""

    def __init__(
        self,
        capture: CaptureThread,
        queue: DropOldestQueue,
        process_frame,
        record_skipped,
        stop: threading.Event,
        max_frames: int = 0,
        duration_s: float = 0.0,
        tick=None,
    ):
        self.capture, self.queue = capture, queue
        self.process_frame, self.record_skipped = process_frame, record_skipped
        self.stop = stop
        self.max_frames, self.duration_s = max_frames, duration_s
        self.tick = tick or (lambda: None)
        self.processed = 0
        self.end_reason = ""

    def _handle(self, item) -> bool:
        """Process one queue item; False when the source is exhausted."""
        if item is END:
            return False
        if isinstance(item, Skipped):
            self.record_skipped(item)
        elif item is not None:
            self.process_frame(item)
            self.processed += 1
        return True

    def run(self) -> str:
        deadline = time.monotonic() + self.duration_s if self.duration_s else None
        self.capture.start()
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
            if not self._handle(self.queue.get(timeout=0.2)):
                # The capture thread also ends on a signal; say which it was.
                self.end_reason = "signal" if self.stop.is_set() else "source exhausted"
                break
        self.stop.set()
        self._drain()
        if self.capture.fatal is not None:  # e.g. a missing picamera2 on reconnect: one line, non-zero exit
            raise self.capture.fatal
        return self.end_reason

    def _drain(self) -> None:
        """Finish the frames already captured (SIGTERM: drain in flight, then flush and exit)."""
        self.capture.finished.wait(2.0)
        while len(self.queue):
            if self.max_frames and self.processed >= self.max_frames:
                break
            if not self._handle(self.queue.get(timeout=0)):
                continue
