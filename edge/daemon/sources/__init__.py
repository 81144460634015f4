"""Frame sources behind one interface, one module each (like frigate's detector plugins).

A source is opened, read frame by frame from the capture thread, and closed. `read()` returns a
Frame, or None when a finite source (replay without loop) is exhausted. It raises:

- SourceError for a camera that failed or went away: the pipeline closes it, backs off and reopens;
- CorruptFrame for one bad frame or file: skipped and counted, the source keeps going.
"""

from __future__ import annotations

import importlib
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from edge.daemon.section import ConfigError
from edge.daemon.sources.config import SourceConfig


class SourceError(Exception):
    """The source failed (disconnect, device error); reconnecting may help."""


class CorruptFrame(Exception):
    """One frame or file could not be decoded; `ref` names it."""

    def __init__(self, ref: str, reason: str, file_stat: str = ""):
        super().__init__(f"{ref}: {reason}")
        self.ref = ref
        self.reason = reason
        self.file_stat = file_stat


@dataclass
class Frame:
    """One captured frame. `image` (BGR uint8) feeds inference; `display` is the full-resolution
    view for the archive and the page (the same array when the source has a single stream)."""

    image: np.ndarray
    ref: str = ""  # file name, "sim:<class>", camera sequence...
    timestamp: float = field(default_factory=time.time)  # wall clock, for the record
    display: np.ndarray | None = None
    frame_id: int = 0  # filled by the capture thread
    t_capture_start: float = 0.0  # perf_counter before the read
    t_captured: float = 0.0  # perf_counter after the read
    # A hot folder's file: "size:mtime_ns" as it was taken, so a file that fails after decoding is
    # recorded like an undecodable one and not taken again until it changes.
    file_stat: str = ""
    # What the mode worked out ahead of the pipeline thread, in the capture thread (the threaded
    # layout; field mode: the detector's cells, edge/daemon/modes.py FieldMode.look_ahead)
    ahead: object | None = None

    @property
    def view(self) -> np.ndarray:
        return self.image if self.display is None else self.display


class FrameSource(ABC):
    """Open once, `read()` per frame, `close()`. `live` sources (cameras) drop the oldest frame when
    the pipeline falls behind; file sources (hot folder, unpaced replay) wait instead, so that no
    file is ever skipped."""

    kind: str = "?"
    live: bool = True
    # Sources that block inside read() while idle by design (the hot folder polling) refresh this,
    # so the systemd watchdog tells "idle" from "stuck in a driver call".
    heartbeat: float = 0.0

    def __init__(self, target: str, config: SourceConfig):
        self.target = target
        self.config = config

    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def read(self) -> Frame | None: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def wait_for_next(self) -> None:  # noqa: B027 - optional hook
        """Sources that pace themselves (sim, replay at --fps) sleep here, outside the capture timing."""

    def resume(self, store) -> None:  # noqa: B027 - optional hook
        """Before the first read: take up where the database says this source left off. `store` is the
        results store (edge/results/store.py ResultStore); a camera has nothing to resume."""

    @property
    def name(self) -> str:
        """What the database records as `source` (hot-folder dedup keys on it)."""
        return f"{self.kind}:{self.target}" if self.target else self.kind

    def describe(self) -> dict:
        return {"source": self.name, "live": self.live}


class Pacer:
    """Sleeps so that successive frames are `1 / fps` apart (no drift: targets are absolute)."""

    def __init__(self, fps: float):
        self.period = 1.0 / fps if fps > 0 else 0.0
        self._next = None

    def wait(self) -> None:
        if not self.period:
            return
        now = time.perf_counter()
        if self._next is None or now - self._next > 1.0:  # first frame, or far behind: restart the clock
            self._next = now
        delay = self._next - now
        if delay > 0:
            time.sleep(delay)
        self._next += self.period


# uri scheme -> module in edge/daemon/sources/; each defines `Source`.
SOURCES = {
    "sim": "edge.daemon.sources.sim",
    "replay": "edge.daemon.sources.replay",
    "folder": "edge.daemon.sources.folder",
    "opencv": "edge.daemon.sources.opencv",
    "picamera2": "edge.daemon.sources.picamera2",
}


def open_source(config: SourceConfig, **context) -> FrameSource:
    """Build (not yet open) the source named by `config.uri`, e.g. `replay:/data/frames` or `opencv:0`."""
    scheme, _, target = config.uri.partition(":")
    if scheme not in SOURCES:
        raise ConfigError(
            f"source.uri: unknown source {scheme!r} in {config.uri!r} (choose from {', '.join(SOURCES)})"
        )
    module = importlib.import_module(SOURCES[scheme])
    return module.Source(target, config, **context)
