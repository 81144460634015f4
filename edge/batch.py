"""Classify many image files fast: decode + preprocess in a worker pool while the interpreter runs.

OpenCV releases the GIL in imdecode, resize, cvtColor and CLAHE, and the TFLite interpreter releases
it in invoke(), so plain threads overlap the two (measured against processes in docs/device.md).
`classify_sequential` is the plain one-image-at-a-time loop that the overlapped pipeline is compared
with by `edge eval` and scripts/throughput.py.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import os
import queue
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.bundle import Bundle
from edge.dataset import LoadedImage, load_one
from edge.predict import Classifier, Prediction
from edge.preprocess import WHOLE_IMAGE, PreprocessSpec
from edge.runtime.tflite import usable_cores


@dataclass
class ImageResult:
    """One file's prediction (with decode/preprocess/invoke timings), or its error."""

    path: Path
    prediction: Prediction | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class PipelineOptions:
    batch_size: int = 8
    workers: int = 1  # decode/preprocess workers beside the interpreter


def iter_loaded(
    paths: Iterable[Path], spec: PreprocessSpec, options: PipelineOptions, views=None
) -> Iterator[LoadedImage]:
    """Loaded images in input order (each cut at its `views` entry), decoded two batches per worker
    ahead by the worker pool."""
    ahead = 2 * options.batch_size * max(1, options.workers)
    pending: collections.deque[cf.Future] = collections.deque()
    views = iter(views) if views is not None else None
    with cf.ThreadPoolExecutor(options.workers, thread_name_prefix="edge-load") as pool:
        for path in paths:
            view = next(views) if views is not None else WHOLE_IMAGE
            pending.append(pool.submit(load_one, Path(path), spec, None, view))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _run_batch(classifier: Classifier, batch: list[LoadedImage]) -> list[ImageResult]:
    good = [item for item in batch if item.error is None]
    preds: list[Prediction] = classifier.classify_tensors(np.stack([i.tensor for i in good])) if good else []
    by_path = {}
    for item, pred in zip(good, preds, strict=True):
        pred.timings_ms["decode"] = item.decode_ms
        pred.timings_ms["preprocess"] = item.preprocess_ms
        by_path[id(item)] = pred
    return [ImageResult(i.path, by_path.get(id(i)), i.error) for i in batch]


def _replicated(
    classifiers: list[Classifier], paths: list[Path], options: PipelineOptions, views=None
) -> Iterator[ImageResult]:
    """One worker thread per interpreter replica: each loads a batch, then runs it on a free replica.

    While one worker decodes, another invokes, so every core stays busy with no cross-thread hand-off;
    single-threaded interpreters also waste no time synchronising XNNPACK's thread pool.
    """
    free: queue.SimpleQueue[Classifier] = queue.SimpleQueue()
    for c in classifiers:
        free.put(c)
    spec = classifiers[0].spec

    views = list(views) if views is not None else [WHOLE_IMAGE] * len(paths)

    def work(start: int, chunk: list[Path]) -> list[ImageResult]:
        items = [load_one(path, spec, None, views[start + k]) for k, path in enumerate(chunk)]
        classifier = free.get()
        try:
            return _run_batch(classifier, items)
        finally:
            free.put(classifier)

    size = options.batch_size
    chunks = ((i, paths[i : i + size]) for i in range(0, len(paths), size))
    pending: collections.deque[cf.Future] = collections.deque()
    with cf.ThreadPoolExecutor(len(classifiers), thread_name_prefix="edge-replica") as pool:
        for start, chunk in chunks:
            pending.append(pool.submit(work, start, chunk))
            if len(pending) >= 2 * len(classifiers):
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


def classify_paths(
    classifier: Classifier | list[Classifier],
    paths: Iterable[Path],
    options: PipelineOptions | None = None,
    views=None,
) -> Iterator[ImageResult]:
    """The overlapped pipeline: results in input order, bad files as error results; `views` (one per
    path: edge.preprocess.View) say where and at what scale version 2 cuts each image.

    One classifier: a loader pool decodes ahead while this thread invokes. Several (replicas of the
    same bundle, one per core): each worker thread decodes and invokes its own batches.
    """
    options = options or PipelineOptions()
    if isinstance(classifier, list):
        if len(classifier) > 1:
            yield from _replicated(classifier, [Path(p) for p in paths], options, views)
            return
        classifier = classifier[0]
    batch: list[LoadedImage] = []
    for item in iter_loaded(paths, classifier.spec, options, views):
        batch.append(item)
        if len(batch) >= options.batch_size:
            yield from _run_batch(classifier, batch)
            batch = []
    if batch:
        yield from _run_batch(classifier, batch)


def classify_sequential(classifier: Classifier, paths: Iterable[Path], views=None) -> Iterator[ImageResult]:
    """The plain loop: decode -> preprocess -> invoke, one image at a time, in the calling thread."""
    views = iter(views) if views is not None else None
    for path in paths:
        view = next(views) if views is not None else WHOLE_IMAGE
        item = load_one(Path(path), classifier.spec, None, view)
        yield from _run_batch(classifier, [item])


@dataclass
class Throughput:
    images: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def timed(results: Iterable[ImageResult]) -> tuple[list[ImageResult], Throughput]:
    """Drain `results`, timing the whole run end to end (every file counted, bad ones too)."""
    t0 = time.perf_counter()
    out = list(results)
    return out, Throughput(len(out), time.perf_counter() - t0)


def default_workers(interpreter_threads: int) -> int:
    """Loader workers beside the interpreter: one per core it leaves free, at least one."""
    return max(1, (os.cpu_count() or 1) - interpreter_threads)


@dataclass(frozen=True)
class Inference:
    """How a command classifies: --backend, --device, --runtime, --threads (None: decided by `plan`),
    and for many files --batch-size, --workers; `onnx` holds the onnx backend's options when given."""

    backend: str = "cpu"
    device: str | None = None
    runtime: str = "auto"
    threads: int | None = None
    batch_size: int = 8
    workers: int | None = None
    onnx: dict = field(default_factory=dict)

    def backend_options(self, threads: int | None) -> dict:
        """What edge.runtime's open_backend takes, for interpreters of `threads` threads."""
        return {"runtime": self.runtime, "threads": threads, "device": self.device, **self.onnx}


@dataclass(frozen=True)
class Plan:
    threads: int  # per interpreter
    replicas: int  # interpreters, one per worker thread
    options: PipelineOptions


def plan(inference: Inference, n_files: int | None = None) -> Plan:
    """Threads per interpreter, interpreter replicas and loader options for this machine.

    For many files on the CPU, throughput wins with one single-threaded interpreter per core, each
    decoding its own batches (measured in docs/device.md): no XNNPACK thread synchronisation, and a
    core is never idle while another decodes. A handful of files, --threads, or the Edge TPU (one
    device, one interpreter) get a single interpreter with a loader thread beside it.
    """
    cores, threads, batch_size = usable_cores(), inference.threads, inference.batch_size
    few = n_files is not None and n_files <= batch_size
    if inference.backend != "cpu":
        threads, replicas = threads or cores, 1
    elif threads is None:
        threads, replicas = (cores, 1) if few else (1, cores)
    else:
        replicas = 1 if few else max(1, cores // threads)
    workers = inference.workers or default_workers(threads)
    return Plan(threads, replicas, PipelineOptions(batch_size=batch_size, workers=workers))


def open_classifiers(bundle: Bundle, inference: Inference, plan: Plan, **options) -> list[Classifier]:
    """`plan.replicas` independent classifiers of the same bundle (interpreters are not thread-safe)."""
    backend_options = inference.backend_options(plan.threads)
    return [
        Classifier.open(bundle, inference.backend, **options, **backend_options) for _ in range(plan.replicas)
    ]
