"""One benchmark run: a bundle on one backend / runtime / thread count, fed by one frame source.

It times what `edge run` does: the daemon's own sources (edge/daemon/sources), its FrameProcessor
and its Pipeline, with a sink that only records timings instead of the database, archive and page.
Order, as in TFLite's benchmark_model: load, init, first inference, warm-up, steady state (the
inline layout: one thread reads, then classifies); then the threaded layout (a capture thread
overlapping inference) for throughput. `edge run --layout auto` keeps whichever is faster.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edge import bench, labtables
from edge.bench import context as context_mod
from edge.bench import field as field_mod
from edge.bench import profile as profile_mod
from edge.bench import reference
from edge.bench.stats import histogram, summarize
from edge.bundle import CPU_MODEL, EDGETPU_MODEL, ONNX_MODEL, Bundle
from edge.daemon.capture import Capturer, Skipped
from edge.daemon.config import ConfigError, FieldOptions, PipelineConfig, SimOptions, SourceConfig
from edge.daemon.modes import MODES, CellMode, open_field_mode
from edge.daemon.pipeline import Pipeline
from edge.daemon.processor import FrameProcessor, FrameResult
from edge.daemon.sinks import Sink, SinkChain
from edge.daemon.sources import SourceError, open_source
from edge.daemon.telemetry import Telemetry
from edge.errors import EdgeError
from edge.predict import Classifier
from edge.runtime import open_backend

SCHEMA = "edge-bench/1"
PIPELINE_SWITCH_INTERVAL_S = 0.001
_clock = time.perf_counter


@dataclass
class BenchConfig:
    bundle: Path
    backend: str = "cpu"
    runtime: str = "auto"
    threads: int | None = None
    runs: int = 100
    warmup: int = 10
    source: str = "sim"
    profile: bool = False
    device: str | None = None  # Edge TPU: usb, usb:0, pci:0 ...
    # As `edge run`'s cell mode: the centred square classified in each frame (1.0: the whole frame).
    region: float = PipelineConfig.model_fields["region"].default
    region_px: int = 0
    lab: str = "auto"  # the LAB strategy (edge.labtables.choose): auto, tables or cvtcolor, for A/B runs
    onnx_options: dict = field(default_factory=dict)  # --backend onnx: providers, trt_precision, trt_cache
    mode: str = (
        "cell"  # or "field": the detector, crops and tracking of `edge run --mode field` (bench/field.py)
    )
    detector: Path | None = None  # field mode's detector bundle
    duration_s: float = 0.0  # > 0: each timed pass runs this long instead of `runs` frames

    def label(self) -> str:
        threads = f"{self.threads} thr" if self.threads else "default thr"
        return f"{Path(self.bundle).name} {self.backend}/{self.runtime} {threads}"


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 20) if sys.platform == "darwin" else peak / 1024, 1)


class _CpuMeter:
    """CPU time of this process (all threads) over wall time; 100% = one core fully busy, like top."""

    def __enter__(self):
        self._t, self._cpu = _clock(), os.times()
        return self

    def __exit__(self, *exc):
        cpu = os.times()
        self.wall_s = _clock() - self._t
        used = (cpu.user - self._cpu.user) + (cpu.system - self._cpu.system)
        self.percent = round(100.0 * used / self.wall_s, 1) if self.wall_s > 0 else None


@contextlib.contextmanager
def _switch_interval(seconds: float):
    """As `edge run` does: a 1 ms GIL switch interval (default 5 ms) hands the GIL back quickly to the
    thread whose C call (invoke, OpenCV) just returned, instead of after up to 5 ms."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def bundle_info(bundle: Bundle, backend: str) -> dict:
    model_file = bundle.path / {"edgetpu": EDGETPU_MODEL, "onnx": ONNX_MODEL}.get(backend, CPU_MODEL)
    size = len(bundle.read(model_file.name)) if model_file.name in bundle.manifest.files else None
    return {
        "path": str(bundle.path),
        "name": bundle.path.name,
        "sha256": bundle.sha256,
        "model_file": model_file.name,
        "model_size_mb": round(size / 1e6, 3) if size is not None else None,
        "architecture": bundle.manifest.model.get("architecture"),
        "precision": bundle.manifest.model.get("precision"),
        "input": list(bundle.manifest.input.shape),
        "input_dtype": bundle.manifest.input.dtype,
    }


class BenchSourceError(EdgeError):
    """A --source that cannot be parsed or opened."""

    exit_code = 2


SIM_POOL = 8  # distinct pre-rendered fields, so caches do not see the same bytes every frame


def source_config(spec: str) -> SourceConfig:
    """`sim[:WxH]`, `replay:DIR`, `camera[:N|/dev/videoN]`, `opencv:TARGET`, `picamera2[:N]` -> the
    daemon's SourceConfig, unpaced: frames as fast as the pipeline takes them, never dropped."""
    kind, _, arg = spec.partition(":")
    if kind == "sim":
        width, height = 640, 480
        if arg:
            match = re.fullmatch(r"(\d+)x(\d+)", arg)
            if not match or not (64 <= int(match.group(1)) <= 8192 and 64 <= int(match.group(2)) <= 8192):
                raise BenchSourceError(
                    f"--source {spec}: expected sim or sim:WIDTHxHEIGHT, e.g. sim:1280x720"
                )
            width, height = int(match.group(1)), int(match.group(2))
        sim = SimOptions(width=width, height=height, dwell_s=0.1, prerender=SIM_POOL, paced=False)
        return SourceConfig(uri="sim", sim=sim)
    if kind == "replay":
        if not arg:
            raise BenchSourceError("--source replay needs a folder: replay:DIR")
        return SourceConfig(uri=spec, loop=True)
    if kind in ("camera", "opencv"):
        return SourceConfig(uri=f"opencv:{arg or '0'}")
    if kind == "picamera2":
        return SourceConfig(uri=spec)
    raise BenchSourceError(
        f"--source {spec}: unknown source; use sim, sim:WxH, replay:DIR, camera[:N|/dev/videoN], opencv:TARGET "
        "or picamera2[:N]"
    )


def open_bench_source(spec: str, stop: threading.Event):
    """The daemon's source for `spec`, opened here so that a missing camera fails the bench at once."""
    try:
        source = open_source(source_config(spec), stop_event=stop)
        source.open()
    except (ConfigError, SourceError) as exc:
        raise BenchSourceError(f"--source {spec}: {str(exc).removeprefix('source.uri: ')}") from None
    return source


def describe_source(spec: str, source, frame_shape) -> dict:
    """What the JSON records of the source (kind, and the frame size, folder or camera)."""
    kind = "camera" if source.kind in ("opencv", "picamera2") else source.kind
    info: dict = {"kind": kind}
    if kind == "camera":
        info["uri"] = spec if source.kind == "picamera2" else source.name
    if kind == "replay":
        info.update(folder=str(source.path), files=len(source.files or []))
    if frame_shape is not None:
        info["frame"] = f"{frame_shape[1]}x{frame_shape[0]}"
    if kind == "sim":
        info["note"] = f"{SIM_POOL} pre-rendered synthetic fields"
    return info


class Recorder(Sink):
    """The bench's only sink: per-frame stage times, as contiguous slices of one clock."""

    name = "bench"

    def __init__(
        self, tick: Callable[[int], None], stop: threading.Event, duration_s: float = 0.0, after: int = 0
    ):
        """With `duration_s`, sets `stop` once that long has passed since the end of frame `after`
        (the warm-up's last; 0: since now)."""
        self.stop, self.duration_s, self.after = stop, duration_s, after
        self.started = _clock()
        self.samples: list[tuple[float, float, float, float, float]] = []
        self.field_samples: list[dict] = []  # field mode: every stage of the frame, and its cells
        self.corrupt = 0
        self.frame_shape = None
        self.stamps: list[float] = []  # when each frame's results were out
        self.tick = tick

    def on_frame(self, result: FrameResult) -> None:
        t = result.timings
        if "detect_invoke" in t:  # field mode
            self.samples.append(field_mod.standard_sample(t))
            self.field_samples.append(field_mod.field_sample(t, len(result.cells)))
        else:
            # preprocess includes cropping the region, as the daemon's mode step does
            self.samples.append(
                (t["capture"], t["mode"] + t["preprocess"], t["invoke"], t["postprocess"], t["result"])
            )
        self.frame_shape = result.frame.image.shape
        self.stamps.append(_clock())
        self.tick(1)
        if self.duration_s and len(self.stamps) > self.after:
            start = self.stamps[self.after - 1] if self.after else self.started
            if self.stamps[-1] - start >= self.duration_s:
                self.stop.set()

    def on_skipped(self, item: Skipped, source: str) -> None:
        self.corrupt += 1


def _pass(
    source, processor, layout: str, frames: int, tick, stop: threading.Event, duration_s: float = 0.0
) -> tuple[Recorder, _CpuMeter]:
    """`frames` frames through the daemon's Pipeline in one layout; with `duration_s`, the first
    `frames` and then as many as `duration_s` seconds take."""
    recorder = Recorder(tick, stop, duration_s, after=frames)
    capturer = Capturer(source, Telemetry(), stop, opened=True, quiet=True, keep_open=True)
    limit = 0 if duration_s else frames
    pipeline = Pipeline(capturer, processor, SinkChain([recorder]), stop, max_frames=limit, layout=layout)
    with _CpuMeter() as meter:
        pipeline.run()
    if len(recorder.samples) < frames + (1 if duration_s else 0):
        raise BenchSourceError(
            f"the source gave {len(recorder.samples)} frames of {frames} ({recorder.corrupt} corrupt)"
        )
    return recorder, meter


def run(config: BenchConfig, tick: Callable[[int], None] = lambda n: None) -> dict:
    """Run one benchmark and return its result (the JSON shape documented in docs/bench.md)."""
    if config.runs < 1:
        raise ValueError("--runs must be at least 1")
    load_before = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    t = _clock()
    bundle = Bundle.load(config.bundle)
    load_ms = (_clock() - t) * 1000
    t = _clock()
    extra = config.onnx_options if config.backend == "onnx" else {}
    # not given: what `edge run` gives each interpreter in this mode
    threads = config.threads or MODES[config.mode].interpreter_threads()
    backend = open_backend(
        bundle, config.backend, runtime=config.runtime, threads=threads, device=config.device, **extra
    )
    init_ms = (_clock() - t) * 1000
    try:
        detector = Bundle.load(config.detector) if config.mode == "field" else None
        t = _clock()
        # as `edge run` does at start-up, for the bundles it runs
        specs = [b.preprocess_spec for b in (bundle, detector) if b is not None]
        lab = labtables.choose(config.lab, specs)
        tables_ms = (_clock() - t) * 1000
        mode = (
            open_field_mode(
                detector,
                FieldOptions(),  # edge run's defaults
                config.backend,
                lab,
                runtime=config.runtime,
                threads=threads,
                device=config.device,
            )
            if config.mode == "field"
            else CellMode(config.region, config.region_px)
        )
        processor = FrameProcessor(mode, Classifier(bundle, backend, lab=lab))
        try:
            with _switch_interval(PIPELINE_SWITCH_INTERVAL_S):
                result = _measure(config, bundle, backend, processor, load_ms, init_ms, tables_ms, tick)
        finally:
            mode.close()  # its motion worker and (field mode) the detector's interpreter
        result["context"]["load_average_start"] = load_before  # "load_average" is read at the end
        return result
    finally:
        backend.close()


def _passes(config, processor, tick) -> tuple[Recorder, _CpuMeter, Recorder, _CpuMeter, dict]:
    """The inline pass (first frame, warm-up, steady state), then the threaded one; and the source's record."""
    stop = threading.Event()
    source = open_bench_source(config.source, stop)  # after the backend, so a missing runtime fails fast
    try:
        if config.duration_s:  # each pass runs duration_s after its warm-up, however many frames that is
            serial, serial_cpu = _pass(
                source, processor, "inline", 1 + config.warmup, tick, stop, config.duration_s
            )
            threaded, threaded_cpu = _pass(
                source, processor, "threaded", 0, tick, threading.Event(), config.duration_s
            )
        else:
            serial, serial_cpu = _pass(
                source, processor, "inline", 1 + config.warmup + config.runs, tick, stop
            )
            threaded, threaded_cpu = _pass(
                source, processor, "threaded", config.runs, tick, threading.Event()
            )
    finally:
        source.close()
    source_info = describe_source(config.source, source, serial.frame_shape)
    if serial.corrupt + threaded.corrupt:
        source_info["corrupt_frames_skipped"] = serial.corrupt + threaded.corrupt
    return serial, serial_cpu, threaded, threaded_cpu, source_info


def _startup(load_ms: float, init_ms: float, tables_ms: float, first, warm) -> dict:
    return {
        "bundle_load_ms": round(load_ms, 3),
        "init_ms": round(init_ms, 3),
        "lab_tables_ms": round(tables_ms, 3),
        "first_inference_ms": round(first[2], 3),
        "first_end_to_end_ms": round(first[4], 3),
        "warmup_invoke_mean_ms": round(sum(w[2] for w in warm) / len(warm), 3) if warm else None,
    }


def _measure(config, bundle, backend, processor, load_ms, init_ms, tables_ms, tick) -> dict:
    serial, serial_cpu, threaded, threaded_cpu, source_info = _passes(config, processor, tick)
    first, warm, samples = (
        serial.samples[0],
        serial.samples[1 : 1 + config.warmup],
        serial.samples[1 + config.warmup :],
    )
    stages = {
        name: summarize(col).to_dict()
        for name, col in zip(bench.STAGES, zip(*samples, strict=True), strict=True)
    }
    invoke_p50 = stages["invoke"]["p50_ms"]
    runs = len(samples)  # config.runs, or what --duration took
    # the steady-state frames only: from the end of the last warm-up frame to the end of the last one
    serial_fps = runs / (serial.stamps[-1] - serial.stamps[config.warmup])
    threaded_fps = len(threaded.samples) / threaded_cpu.wall_s
    description = backend.describe()
    result = {
        "schema": SCHEMA,
        "bundle": bundle_info(bundle, config.backend),
        "source": source_info,
        "region": {"mode": "cell", "fraction": config.region, "px": config.region_px}
        if config.mode == "cell"
        else {"mode": "field", "detector": str(config.detector)},
        "runs": runs,
        "duration_s": config.duration_s or None,
        "warmup": config.warmup,
        "invoke_scope": getattr(backend, "invoke_scope", None)
        or ("interpreter.invoke()" if hasattr(backend, "model") else "backend.invoke()"),
        "startup": _startup(load_ms, init_ms, tables_ms, first, warm),
        "stages": stages,
        # for --plot: the steady-state latencies, binned (edge/bench/stats.py histogram)
        "histogram": {
            "end_to_end": histogram([x[4] for x in samples]),
            "invoke": histogram([x[2] for x in samples]),
        },
        "overhead_ratio": round(stages["end_to_end"]["p50_ms"] / invoke_p50, 4) if invoke_p50 > 0 else None,
        "serial_fps": round(serial_fps, 2),
        "threaded_fps": round(threaded_fps, 2),
        # what `edge run` sustains: its `auto` layout keeps the faster of the two (edge/daemon/pipeline.py)
        "throughput_fps": round(max(serial_fps, threaded_fps), 2),
        "layout": "threaded" if threaded_fps > serial_fps else "inline",
        "resources": {
            "peak_rss_mb": peak_rss_mb(),
            "cpu_percent_serial": serial_cpu.percent,
            "cpu_percent_pipelined": threaded_cpu.percent,
        },
        "context": context_mod.collect(description, bundle, processor.classifier.lab),
        "backend": description,
    }
    if config.mode == "field":
        result["field"] = field_mod.summary(serial.field_samples[1 + config.warmup :], processor.mode)
        result["field"]["detector"]["backend"] = processor.mode.detector.backend.describe()
    # published numbers are for one model's invoke(); field mode's is two models'
    result["reference"] = reference.check(result) if config.mode == "cell" else []
    if config.profile:
        result["profile"] = profile_mod.profile(getattr(backend, "model", None), description)
    return result
