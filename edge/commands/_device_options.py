"""Options the device commands share, declared once: which backend and runtime, how many threads,
the pipeline (`edge classify`, `eval`; one interpreter's for `detect`, `eval-detector`), the
uncertainty rule, the pixel limit (also `edge run`'s), and the progress bar. Those the daemon's config
also has (--backend, --max-pixels) take their declaration from it (edge/commands/_config_options.py)."""

from __future__ import annotations

import functools

import click

from edge.batch import Inference
from edge.bundle import Bundle, find_bundle
from edge.commands._config_options import config_option
from edge.daemon.config import DEFAULT_DETECTOR
from edge.detect.detector import Detector
from edge.preprocess import DEFAULT_MAX_PIXELS, set_max_pixels
from edge.progress import progress as edge_progress
from edge.runtime import MAX_THREADS
from edge.runtime.tflite import RUNTIME_CHOICES

BACKEND_OPTION = config_option(
    "pipeline.backend",
    "--backend",
    declared_default=True,
    help="cpu: TFLite with XNNPACK. edgetpu: the bundle's model_edgetpu.tflite on a Coral Edge TPU. "
    "onnx: the bundle's model.onnx through ONNX Runtime (TensorRT / CUDA on a Jetson, else the CPU).",
)
DEVICE_OPTION = click.option(
    "--device",
    default=None,
    metavar="DEV",
    help="Edge TPU to use: usb, usb:0, usb:1, pci:0 ... (default: the first one found); "
    "with --backend onnx, the GPU index (0, cuda:1).",
)
RUNTIME_OPTION = click.option(
    "--runtime",
    type=click.Choice(RUNTIME_CHOICES),
    default="auto",
    show_default=True,
    help="TFLite runtime; auto takes the first of litert, tflite-runtime, tensorflow that imports.",
)


def _apply(func, options):
    for option in reversed(options):
        func = option(func)
    return func


def runtime_options(func):
    """--backend, --device, --runtime, --threads, --batch-size, --workers, the onnx options and
    --max-pixels, passed on as one `inference` (edge.batch.Inference)."""
    options = [
        BACKEND_OPTION,
        DEVICE_OPTION,
        RUNTIME_OPTION,
        click.option(
            "--threads",
            type=click.IntRange(1, MAX_THREADS),
            default=None,
            help="Threads per interpreter. Default: one single-threaded interpreter per core, each decoding "
            "and classifying its own batches (fastest for many files); for a few files, one interpreter "
            "with all cores. With --threads T: cores // T interpreters of T threads.",
        ),
        click.option(
            "--batch-size",
            type=click.IntRange(1, 256),
            default=8,
            show_default=True,
            help="Images per interpreter call.",
        ),
        click.option(
            "--workers",
            type=click.IntRange(1, 64),
            default=None,
            help="Threads that decode and preprocess ahead of the interpreter, when only one runs "
            "(default: the cores it leaves free, at least 1).",
        ),
    ]

    @functools.wraps(func)
    def wrapper(*args, backend, device, runtime, threads, batch_size, workers, onnx_options, **kwargs):
        inference = Inference(backend, device, runtime, threads, batch_size, workers, onnx_options)
        return func(*args, inference=inference, **kwargs)

    return pixel_limit(onnx_options(_apply(wrapper, options)))


def backend_options(func):
    """--backend, --device, --runtime and --threads of one interpreter (edge detect, eval-detector),
    passed on as one `inference` (edge.batch.Inference)."""
    threads = click.option(
        "--threads",
        type=click.IntRange(1, MAX_THREADS),
        default=None,
        help="Interpreter threads [default: all cores].",
    )

    @functools.wraps(func)
    def wrapper(*args, backend, device, runtime, threads, **kwargs):
        return func(*args, inference=Inference(backend, device, runtime, threads), **kwargs)

    return _apply(wrapper, [BACKEND_OPTION, DEVICE_OPTION, RUNTIME_OPTION, threads])


def uncertainty_options(func):
    """--threshold and --margin: the uncertainty rule's two numbers, overriding the bundle's."""
    func = click.option(
        "--margin",
        type=click.FloatRange(0, 1),
        default=None,
        help="Flag a cell as uncertain when top-1 minus top-2 probability is below this. Default: the bundle's.",
    )(func)
    return click.option(
        "--threshold",
        type=click.FloatRange(0, 1),
        default=None,
        help="Flag a cell as uncertain when its top probability is below this. Default: the bundle's "
        "calibrated value.",
    )(func)


def max_pixels_option(func):
    """--max-pixels N, passed on as `max_pixels` (None when not given)."""
    return config_option("source.max_pixels", "--max-pixels", metavar="N")(func)


def pixel_limit(func):
    """--max-pixels, applied for the whole process at start (edge.preprocess.set_max_pixels) and not
    passed on: every decode path, the loader threads included, reads the one limit."""

    @functools.wraps(func)
    def wrapper(*args, max_pixels, **kwargs):
        set_max_pixels(max_pixels or DEFAULT_MAX_PIXELS)
        return func(*args, **kwargs)

    return max_pixels_option(wrapper)


def onnx_options(func):
    """--providers, --trt-precision, --trt-cache, passed on as one `onnx_options` dict (empty unless
    given, so the other backends never see them)."""
    options = [
        click.option(
            "--providers",
            default=None,
            metavar="P[,P...]",
            help="--backend onnx: execution providers in order of preference, the first available used "
            "(tensorrt, cuda, cpu).  [default: tensorrt,cuda,cpu]",
        ),
        click.option(
            "--trt-precision",
            type=click.Choice(["int8", "fp16", "fp32"]),
            default=None,
            help="--backend onnx on TensorRT: int8 (the model's Q/DQ, fp16 elsewhere), fp16 or fp32.  [default: int8]",
        ),
        click.option(
            "--trt-cache",
            type=click.Path(file_okay=False),
            default=None,
            help="--backend onnx on TensorRT: where built engines are kept.  [default: ~/.cache/edge-hemato/tensorrt]",
        ),
    ]

    @functools.wraps(func)
    def wrapper(*args, providers, trt_precision, trt_cache, **kwargs):
        given = {"providers": providers, "trt_precision": trt_precision, "trt_cache": trt_cache}
        return func(*args, onnx_options={k: v for k, v in given.items() if v is not None}, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def progress(items, length: int, label: str, enabled: bool = True):
    """A bar on stderr when a person is watching (edge.progress), quiet otherwise: off a terminal, and
    when `enabled` is False (e.g. classify's records stream to the same terminal and show progress)."""
    return edge_progress(items, total=length, desc=label if enabled else None, note=False, leave=False)


# --rbc-px: the microscope's red-cell diameter in pixels, for bundles that cut cells at a physical size
# (preprocessing version 2); measured from the images' red cells when not given.
_RBC_PX_HELP = (
    "Red-cell diameter in the images' pixels (the microscope's scale); default: the calibrated site's, "
    "else measured on the images' red cells."
)
rbc_px_option = click.option("--rbc-px", type=click.FloatRange(1.0, 5000.0), help=_RBC_PX_HELP)


def frames_detector(path: str | None) -> Detector:
    """--detector of frames_options (edge/commands/_options.py): the bundle that finds the labelled cell
    in each field, the daemon's by default, on the CPU as `edge run --mode field` runs it."""
    return Detector.open(Bundle.load(path or find_bundle(DEFAULT_DETECTOR)), "cpu")
