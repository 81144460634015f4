"""Taking frames from a source: reconnecting with back-off, turning bad frames into records, and
(threaded layout) feeding a small bounded queue from a thread of its own.

The queue is small on purpose: a live camera must be classified now, not 3 s late, so when the
pipeline falls behind the OLDEST frame is dropped (and counted). File sources (hot folder, unpaced
replay) block instead: every file is processed exactly once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

from edge.daemon.sources import CorruptFrame, Frame, FrameSource, SourceError
from edge.daemon.telemetry import Telemetry

log = logging.getLogger(__name__)


@dataclass
class Skipped:
    """A corrupt frame or file, recorded by the pipeline thread (the only database writer)."""

    frame_id: int
    ref: str
    reason: str
    timestamp: float
    file_stat: str = ""  # a hot folder's file: size and mtime when it failed


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


class Capturer:
    """One step at a time: `next_item()` is a Frame, a Skipped record, END, or None (stopping).

    It opens (and after a failure reopens, with exponential back-off) the source, and stamps each
    frame with its id and capture times. The threaded layout calls it from CaptureThread, the inline
    layout from the pipeline loop itself.
    """

    def __init__(
        self,
        source: FrameSource,
        telemetry: Telemetry,
        stop: threading.Event,
        reconnect_max_s: float = 10.0,
        first_frame_id: int = 0,
        opened: bool = False,
        quiet: bool = False,
        keep_open: bool = False,
        limit: int = 0,
    ):
        self.source, self.telemetry, self.stop = source, telemetry, stop
        self.keep_open = keep_open  # the caller closes the source (the bench runs several passes on it)
        # A file source under --max-frames reads no frame it will not classify (so the summary's
        # captured and classified agree); a live camera keeps reading, and the surplus is dropped.
        self.limit = limit if not source.live else 0
        self.frames = 0
        self.reconnect_max_s = reconnect_max_s
        self.next_id = first_frame_id
        self.opened = opened
        self.quiet = quiet  # the bench: its source's reconnects are not the user's business
        self._failed = not opened
        self._delay = 0.5
        self.beat = time.monotonic()

    def _say(self, level: int, message: str) -> None:
        if not self.quiet:
            log.log(level, message)

    def _backoff(self) -> None:
        self.stop.wait(self._delay)
        self._delay = min(self._delay * 2, self.reconnect_max_s)

    def _take_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def next_item(self):
        if self.limit and self.frames >= self.limit:
            return END
        while not self.stop.is_set():
            self.beat = time.monotonic()
            if not self.opened:
                try:
                    self.source.open()
                except SourceError as exc:
                    self.telemetry.on_source_error(str(exc))
                    self._say(logging.WARNING, f"source: {exc}; retrying in {self._delay:.1f} s")
                    self._backoff()
                    continue
                self.opened = True
                self.telemetry.on_source_open(reconnect=self._failed)
                if self._failed:
                    self._say(logging.INFO, f"source: reconnected to {self.source.name}")
                self._delay = 0.5
            self.source.wait_for_next()
            t0 = time.perf_counter()
            try:
                frame = self.source.read()
            except CorruptFrame as exc:
                self.telemetry.on_corrupt()
                return Skipped(self._take_id(), exc.ref, exc.reason, time.time(), exc.file_stat)
            except SourceError as exc:
                self.telemetry.on_source_error(str(exc))
                self._say(logging.WARNING, f"source: {exc}; reconnecting in {self._delay:.1f} s")
                self.close()
                self._failed = True
                self._backoff()
                continue
            if frame is None:
                return END
            frame.t_capture_start, frame.t_captured = t0, time.perf_counter()
            frame.frame_id = self._take_id()
            self.frames += 1
            self.telemetry.on_captured()
            return frame
        return None

    def finish(self) -> None:
        """The run is over: close the source, unless the caller keeps it."""
        if not self.keep_open:
            self.close()

    def close(self) -> None:
        if not self.opened:
            return
        self.opened = False
        try:
            self.source.close()
        except Exception as exc:  # a half-dead camera may fail to close; we reopen a new handle anyway
            self._say(logging.WARNING, f"source: close failed ({exc})")


class CaptureThread(threading.Thread):
    """The threaded layout's producer: runs the Capturer and feeds the queue until END or stop."""

    def __init__(
        self,
        source: FrameSource,
        queue: DropOldestQueue,
        telemetry: Telemetry,
        stop: threading.Event,
        capturer: Capturer | None = None,
        look_ahead=None,
        **capture,
    ):
        super().__init__(name="capture", daemon=True)
        # look_ahead(image): the mode's work that needs nothing but the frame, done here while the
        # pipeline thread works on the previous frame (field mode: detection); stored as Frame.ahead
        self.look_ahead = look_ahead
        # `capture`: the Capturer's own settings (reconnect_max_s, ...), declared once, by the Capturer
        self.capturer = capturer or Capturer(source, telemetry, stop, **capture)
        self.source, self.queue, self.telemetry, self.stop = source, queue, telemetry, stop
        self.fatal: BaseException | None = None
        self.finished = threading.Event()
        self.pause = threading.Event()  # set: hand back to the inline layout after the current item

    @property
    def heartbeat(self) -> float:
        """Last sign of life: a loop turn, or the source polling while idle."""
        return max(self.capturer.beat, self.source.heartbeat)

    def run(self) -> None:
        ended = True
        try:
            while not self.stop.is_set():
                if self.pause.is_set():
                    ended = False
                    return
                item = self.capturer.next_item()
                if item is None or item is END:
                    return
                if self.look_ahead is not None and isinstance(item, Frame):
                    self._ahead(item)
                dropped = self.queue.put(
                    item, drop_oldest=self.source.live and isinstance(item, Frame), stop=self.stop
                )
                if dropped:
                    self.telemetry.on_dropped(dropped)
        except BaseException as exc:  # never die silently: the pipeline reports it and exits non-zero
            self.fatal = exc
        finally:
            if ended:
                self.capturer.finish()
                self.queue.put(END, drop_oldest=False, stop=self.stop)
            self.finished.set()

    def _ahead(self, frame: Frame) -> None:
        try:
            frame.ahead = self.look_ahead(frame.image)
        except Exception as exc:  # the pipeline thread works on the frame again and records a failure
            log.debug("look-ahead on frame %s failed: %s", frame.frame_id, exc)
