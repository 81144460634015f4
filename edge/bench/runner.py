"""One benchmark run: a bundle on one backend / runtime / thread count, fed by one frame source.

Order, as in TFLite's benchmark_model: load, init, first inference, warm-up, steady state; then a
pipelined pass (capture + preprocess in a thread, overlapping invoke) for throughput.
"""

from __future__ import annotations

import contextlib
import os
import queue
import resource
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge import bench, labtables
from edge.bench import context as context_mod
from edge.bench import profile as profile_mod
from edge.bench import reference
from edge.bench.sources import open_source
from edge.bench.staged import StagedModel
from edge.bench.stats import summarize
from edge.bundle import CPU_MODEL, EDGETPU_MODEL, Bundle
from edge.daemon.config import PipelineConfig
from edge.daemon.modes import CellMode
from edge.predict import to_prediction
from edge.preprocess import preprocess
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
    region: float = PipelineConfig.region
    region_px: int = 0

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


class _Pipeline:
    """The per-frame path, stage by stage. Every frame of every run goes through `frame()`."""

    def __init__(self, source, bundle: Bundle, model: StagedModel, mode: CellMode):
        self.source, self.model, self.mode = source, model, mode
        self.spec = bundle.preprocess_spec
        self.labels = bundle.labels
        self.rule = bundle.manifest.uncertainty

    def prepare(self, image):
        """The `preprocess` stage, as the daemon does it: the region of the frame, then edge.preprocess."""
        return preprocess(self.mode.crops(image)[0].image, self.spec)

    def frame(self) -> tuple[float, float, float, float, float]:
        """(capture, preprocess, invoke, postprocess, end_to_end) in ms; stages are contiguous slices
        of one clock, so end_to_end is the frame's whole latency."""
        t0 = _clock()
        image = self.source.read()
        t1 = _clock()
        self.model.set_input(self.prepare(image))
        t2 = _clock()
        self.model.invoke()
        t3 = _clock()
        to_prediction(self.model.output(), self.labels, self.rule)
        t4 = _clock()
        return tuple((b - a) * 1000.0 for a, b in ((t0, t1), (t1, t2), (t2, t3), (t3, t4), (t0, t4)))

    def pipelined(self, frames: int, tick: Callable[[int], None]) -> tuple[float, float | None]:
        """Frames per second with capture + preprocess in a producer thread (OpenCV and the
        interpreter release the GIL), invoke + postprocess here; and the CPU % meanwhile."""
        tensors: queue.Queue = queue.Queue(maxsize=2)
        failure: list[BaseException] = []

        def produce():
            try:
                for _ in range(frames):
                    tensors.put(self.prepare(self.source.read()))
            except BaseException as exc:  # re-raised in the caller's thread
                failure.append(exc)
            finally:
                tensors.put(None)

        done = 0
        with _switch_interval(PIPELINE_SWITCH_INTERVAL_S), _CpuMeter() as meter:
            producer = threading.Thread(target=produce, name="bench-producer", daemon=True)
            producer.start()
            while (tensor := tensors.get()) is not None:
                self.model.set_input(tensor)
                self.model.invoke()
                to_prediction(self.model.output(), self.labels, self.rule)
                done += 1
                tick(1)
            producer.join()
        if failure:
            raise failure[0]
        return done / meter.wall_s, meter.percent


def bundle_info(bundle: Bundle, backend: str) -> dict:
    model_file = bundle.path / (EDGETPU_MODEL if backend == "edgetpu" else CPU_MODEL)
    size = model_file.stat().st_size if model_file.exists() else None
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


def run(config: BenchConfig, tick: Callable[[int], None] = lambda n: None) -> dict:
    """Run one benchmark and return its result (the JSON shape documented in docs/bench.md)."""
    if config.runs < 1:
        raise ValueError("--runs must be at least 1")
    load_before = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    t = _clock()
    bundle = Bundle.load(config.bundle)
    load_ms = (_clock() - t) * 1000
    t = _clock()
    options = {"device": config.device} if config.device else {}
    backend = open_backend(bundle, config.backend, runtime=config.runtime, threads=config.threads, **options)
    init_ms = (_clock() - t) * 1000
    try:
        source = open_source(config.source)  # after the backend, so a missing runtime fails fast
        try:
            result = _measure(config, bundle, backend, source, load_ms, init_ms, tick)
            result["context"]["load_average_start"] = load_before  # "load_average" is read at the end
            return result
        finally:
            source.close()
    finally:
        backend.close()


def _measure(config, bundle, backend, source, load_ms, init_ms, tick) -> dict:
    t = _clock()
    labtables.prepare()  # as `edge run` does at start-up; once per process (0 ms in later matrix runs)
    tables_ms = (_clock() - t) * 1000
    model = StagedModel(backend)
    pipe = _Pipeline(source, bundle, model, CellMode(config.region, config.region_px))
    model.check_input(pipe.prepare(source.read()))

    first = pipe.frame()
    tick(1)
    warm = []
    for _ in range(config.warmup):
        warm.append(pipe.frame())
        tick(1)
    samples = []
    with _CpuMeter() as serial:
        for _ in range(config.runs):
            samples.append(pipe.frame())
            tick(1)
    fps, pipelined_cpu = pipe.pipelined(config.runs, tick)

    stages = {
        name: summarize(col).to_dict()
        for name, col in zip(bench.STAGES, zip(*samples, strict=True), strict=True)
    }
    invoke_p50 = stages["invoke"]["p50_ms"]
    description = backend.describe()
    result = {
        "schema": SCHEMA,
        "bundle": bundle_info(bundle, config.backend),
        "source": source.describe(),
        "region": {"mode": "cell", "fraction": config.region, "px": config.region_px},
        "runs": config.runs,
        "warmup": config.warmup,
        "invoke_scope": model.scope,
        "startup": {
            "bundle_load_ms": round(load_ms, 3),
            "init_ms": round(init_ms, 3),
            "lab_tables_ms": round(tables_ms, 3),
            "first_inference_ms": round(first[2], 3),
            "first_end_to_end_ms": round(first[4], 3),
            "warmup_invoke_mean_ms": round(sum(w[2] for w in warm) / len(warm), 3) if warm else None,
        },
        "stages": stages,
        "overhead_ratio": round(stages["end_to_end"]["p50_ms"] / invoke_p50, 4) if invoke_p50 > 0 else None,
        "serial_fps": round(config.runs / serial.wall_s, 2),
        "throughput_fps": round(fps, 2),
        "resources": {
            "peak_rss_mb": peak_rss_mb(),
            "cpu_percent_serial": serial.percent,
            "cpu_percent_pipelined": pipelined_cpu,
        },
        "context": context_mod.collect(description, bundle),
        "backend": description,
    }
    result["reference"] = reference.check(result)
    if config.profile:
        result["profile"] = profile_mod.profile(model, description)
    return result
