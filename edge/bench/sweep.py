"""`edge bench`'s plan: which runs a command line asks for (a bundle, backend, runtime and thread count
each; --matrix sweeps what is installed), and running them, one failed cell never sinking a matrix."""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import os
from pathlib import Path

from edge.bench.runner import BenchConfig, run
from edge.bundle import find_bundle
from edge.daemon.config import DEFAULT_BUNDLE
from edge.errors import BundleError, EdgeError, RuntimeUnavailableError

# Runtimes a default --matrix tries. Never TensorFlow: the device package does not import it
# unless the user names it with --runtime tensorflow.
DEVICE_RUNTIMES = {"litert": "ai_edge_litert", "tflite-runtime": "tflite_runtime"}


def default_bundle() -> Path:
    """What `edge run` runs when no bundle is named: the bench times the daemon's own default."""
    return find_bundle(DEFAULT_BUNDLE)


def matrix_backends(runtimes_given: bool) -> list[str]:
    """What a default --matrix compares: TFLite on the CPU, and the onnx backend where onnxruntime is
    installed (not when --runtime names TFLite runtimes to sweep)."""
    onnx = not runtimes_given and importlib.util.find_spec("onnxruntime") is not None
    return ["cpu", "onnx"] if onnx else ["cpu"]


def matrix_threads() -> list[int]:
    cores = os.cpu_count() or 1
    return sorted({1, cores, *(t for t in (2, 4, 8) if t <= cores)})


def configs(bundles, backends, runtimes, threads, matrix: bool, **common) -> list[BenchConfig]:
    """One BenchConfig per bundle x backend x runtime x threads; None (not given) takes the default,
    or with `matrix` the sweep of what this machine has. `common`: BenchConfig's other fields."""
    bundles = list(bundles) or [default_bundle()]
    if backends is None:
        backends = matrix_backends(runtimes is not None) if matrix else ["cpu"]
    if runtimes is None:
        installed = [n for n, mod in DEVICE_RUNTIMES.items() if importlib.util.find_spec(mod)]
        runtimes = (installed if matrix else None) or ["auto"]
    if threads is None:
        threads = matrix_threads() if matrix else [None]
    return [
        BenchConfig(b, be, rt, t, **common)
        for b, be in itertools.product(bundles, backends)
        # the runtime sweep is TFLite's; model.onnx always runs on onnxruntime
        for rt in (runtimes if be != "onnx" else ["auto"])
        for t in threads
    ]


def _failed(config: BenchConfig, exc: Exception) -> dict:
    return {
        "config": {
            "bundle": str(config.bundle),
            "backend": config.backend,
            "runtime": config.runtime,
            "threads": config.threads,
        },
        "error": str(exc),
    }


def run_all(plan: list[BenchConfig], as_matrix: bool, progress=None) -> list[dict]:
    """Every run's result; in a matrix a run whose runtime or bundle is missing is an error row.
    `progress(config, total)`: a context manager with update(n), around each run."""
    progress = progress or (lambda config, total: contextlib.nullcontext(_Ticks()))
    results = []
    for config in plan:
        try:
            # inline pass, then threaded; with --duration the number of frames is not known before
            total = None if config.duration_s else 1 + config.warmup + 2 * config.runs
            with progress(config, total) as bar:
                results.append(run(config, tick=bar.update))
        except (RuntimeUnavailableError, BundleError) as exc:  # one bad cell must not sink a matrix
            if not as_matrix:
                raise
            results.append(_failed(config, exc))
    if not [r for r in results if "stages" in r]:
        raise EdgeError(f"no configuration could run; first error: {results[0]['error']}")
    return results


class _Ticks:
    def update(self, n):
        pass
