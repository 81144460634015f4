"""Counters, rates and per-stage timings, named after what they measure (frigate's habit):
camera_fps, processed_fps, skipped frames, reconnects, inference ms. Read by /api/status,
/metrics and the final summary."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

STAGES = (
    "capture",
    "queue",
    "detect",
    "preprocess",
    "invoke",
    "result",
    "store",
    "latency",
)  # detect: field mode
SUMMARY_FRAMES = 200_000  # 5.5 h at 10 fps; about 13 MB for the two series of Python floats


@dataclass(frozen=True)
class FrameCounts:
    captured: int
    processed: int  # frames classified
    results: int  # crops classified
    dropped: int  # oldest frame dropped from a full queue
    corrupt: int


@dataclass(frozen=True)
class SourceHealth:
    state: str  # starting | streaming | reconnecting
    errors: int
    reconnects: int
    last_error: str


@dataclass(frozen=True)
class StageTimes:
    """One stage over the recent window, ms."""

    mean: float
    p50: float
    p95: float


@dataclass(frozen=True)
class TelemetrySnapshot:
    uptime_s: float
    frames: FrameCounts
    camera_fps: float
    processed_fps: float
    uncertain: int  # cells flagged uncertain in this run
    uncertain_rate: float
    source: SourceHealth
    stages_ms: dict[str, StageTimes]


@dataclass(frozen=True)
class RunTotals:
    """Over the whole run (its last SUMMARY_FRAMES frames), for the end-of-run summary."""

    sustained_fps: float
    latency_p50: float
    latency_p95: float
    # latency / (capture + invoke) per frame, median; None before the first frame
    overhead_p50: float | None
    # latency less capture per frame (what follows the frame's arrival): a hot folder's capture is
    # the wait for a file to stop changing, so this is what its summary reports
    processing_p50: float = 0.0
    processing_p95: float = 0.0
    source_s: float = 0.0  # seconds since the source first opened (the run less its start-up)


class RateMeter:
    """Events per second over the last `window_s` seconds."""

    def __init__(self, window_s: float = 10.0):
        self.window_s = window_s
        self.times: deque[float] = deque()

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.times.append(now)
        self._trim(now)  # at insert: nothing may grow while no one reads the rate (no page open)

    def _trim(self, now: float) -> None:
        while self.times and now - self.times[0] > self.window_s:
            self.times.popleft()

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        self._trim(now)
        if len(self.times) < 2:
            return 0.0
        span = max(now - self.times[0], 1e-6)
        return (len(self.times) - 1) / span if now - self.times[-1] < self.window_s else 0.0


class Telemetry:
    def __init__(self, window: int = 300):
        self.lock = threading.Lock()
        self.started = time.time()
        self.started_mono = time.monotonic()
        self.opened_mono: float | None = None  # the source's first open
        self.captured = 0
        self.processed = 0  # frames classified
        self.results = 0  # crops classified
        self.uncertain = 0
        self.dropped = 0  # oldest frame dropped from a full queue
        self.corrupt = 0
        self.source_errors = 0
        self.reconnects = 0
        self.camera_fps = RateMeter()
        self.processed_fps = RateMeter()
        self.stages = {name: deque(maxlen=window) for name in STAGES}
        # For the end-of-run summary. Bounded: a service runs for months, and appending every frame
        # to a list would grow by tens of MB a day; the summary covers the last SUMMARY_FRAMES.
        self.all_latency: deque[float] = deque(maxlen=SUMMARY_FRAMES)
        # latency / (capture + invoke) of the same frame: the daemon's overhead measured under the same
        # load as its baseline (a shared machine makes separate raw measurements drift by 2x).
        self.all_overhead_ratio: deque[float] = deque(maxlen=SUMMARY_FRAMES)
        self.all_processing: deque[float] = deque(maxlen=SUMMARY_FRAMES)
        self.first_result_mono: float | None = None
        self.last_result_mono: float | None = None
        self.source_state = "starting"
        self.source_error = ""

    def on_captured(self) -> None:
        with self.lock:
            self.captured += 1
            self.camera_fps.tick()

    def on_dropped(self, n: int = 1) -> None:
        with self.lock:
            self.dropped += n

    def on_corrupt(self) -> None:
        with self.lock:
            self.corrupt += 1

    def on_source_error(self, message: str) -> None:
        with self.lock:
            self.source_errors += 1
            self.source_state, self.source_error = "reconnecting", message

    def on_source_open(self, reconnect: bool) -> None:
        with self.lock:
            self.opened_mono = self.opened_mono or time.monotonic()
            self.reconnects += int(reconnect)
            self.source_state = "streaming"

    def on_processed(self, n_results: int, n_uncertain: int, timings: dict[str, float]) -> None:
        now = time.monotonic()
        with self.lock:
            self.processed += 1
            self.results += n_results
            self.uncertain += n_uncertain
            self.processed_fps.tick(now)
            for name, value in timings.items():
                if name in self.stages:
                    self.stages[name].append(value)
            self.all_latency.append(timings["latency"])
            self.all_processing.append(timings["latency"] - timings.get("capture", 0.0))
            base = timings.get("capture", 0.0) + timings.get("invoke", 0.0)
            if base > 0:
                self.all_overhead_ratio.append(timings["latency"] / base)
            self.first_result_mono = self.first_result_mono or now
            self.last_result_mono = now

    def stage_ms(self) -> dict[str, StageTimes]:
        out = {}
        for name, values in self.stages.items():
            if values:
                arr = np.fromiter(values, float)
                out[name] = StageTimes(
                    round(float(arr.mean()), 3),
                    round(float(np.percentile(arr, 50)), 3),
                    round(float(np.percentile(arr, 95)), 3),
                )
        return out

    def snapshot(self) -> TelemetrySnapshot:
        with self.lock:
            return TelemetrySnapshot(
                uptime_s=round(time.monotonic() - self.started_mono, 1),
                frames=FrameCounts(self.captured, self.processed, self.results, self.dropped, self.corrupt),
                camera_fps=round(self.camera_fps.rate(), 2),
                processed_fps=round(self.processed_fps.rate(), 2),
                uncertain=self.uncertain,
                uncertain_rate=round(self.uncertain / self.results, 4) if self.results else 0.0,
                source=SourceHealth(
                    self.source_state, self.source_errors, self.reconnects, self.source_error
                ),
                stages_ms=self.stage_ms(),
            )

    def sustained_fps(self) -> float:
        """Frames classified per second between the first and the last result of the run."""
        if not self.first_result_mono or self.processed < 2:
            return 0.0
        return (self.processed - 1) / max(self.last_result_mono - self.first_result_mono, 1e-6)

    def run_totals(self) -> RunTotals:
        lat = np.array(self.all_latency) if self.all_latency else np.zeros(1)
        after = np.array(self.all_processing) if self.all_processing else np.zeros(1)
        return RunTotals(
            sustained_fps=round(self.sustained_fps(), 2),
            latency_p50=round(float(np.percentile(lat, 50)), 2),
            latency_p95=round(float(np.percentile(lat, 95)), 2),
            overhead_p50=round(float(np.median(self.all_overhead_ratio)), 3)
            if self.all_overhead_ratio
            else None,
            processing_p50=round(float(np.percentile(after, 50)), 2),
            processing_p95=round(float(np.percentile(after, 95)), 2),
            source_s=round(time.monotonic() - (self.opened_mono or time.monotonic()), 1),
        )
