"""ONNX Runtime backend: the bundle's `model.onnx` on TensorRT, CUDA or the CPU (a Jetson's GPU route).

`providers` is a priority list (edge.runtime.onnx_providers): the ones this onnxruntime has are
handed to the session in that order, and `describe` says which one runs and why the others do not.
TensorRT builds an engine on first use and keeps it in `trt_cache` (per model hash and precision),
and runs int8 (the model's Q/DQ nodes, fp16 where a layer has none), fp16 or fp32 as asked.

The model sees exactly the uint8 tensor edge.preprocess makes. What the ONNX graph wants instead is
handled in two visible places, as edge/runtime/tflite.py does: `to_model_input` (uint8 NHWC pixels ->
the input's dtype and layout) and `to_scores` (a uint8/int8 output -> float32 with the scale and zero
point the exporter wrote into the model's metadata, through edge.runtime.tflite.dequantize).
onnxruntime is imported on first use, so a device without it gets one line naming the extra.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.bundle import ONNX_MODEL, Bundle
from edge.errors import BundleError, RuntimeUnavailableError
from edge.runtime import BackendOptionError, InferenceBackend
from edge.runtime.onnx_providers import (
    DEFAULT_PROVIDERS,
    PROVIDERS,
    SHORT,
    ProviderError,
    parse_providers,
    probe,
    select,
    why_missing,
)
from edge.runtime.tflite import dequantize, uint8_batch, usable_cores

INSTALL = "pip install '.[jetson]' (on a Jetson: NVIDIA's onnxruntime-gpu wheel, docs/device.md)"
# ONNX element types the backend can feed or read.
ONNX_TYPES = {
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
}
# Written by convert/onnx_export.py when the model's output is quantized (the TFLite route).
OUTPUT_SCALE_KEY = "edge.output_scale"
OUTPUT_ZERO_POINT_KEY = "edge.output_zero_point"
# Which output holds the class scores and which the embedding (rejecting bundles have both), and the
# embedding's scale and zero point when it is quantized.
SCORES_OUTPUT_KEY = "edge.scores_output"
EMBEDDING_OUTPUT_KEY = "edge.embedding_output"
EMBEDDING_SCALE_KEY = "edge.embedding_scale"
EMBEDDING_ZERO_POINT_KEY = "edge.embedding_zero_point"
TRT_PRECISIONS = ("int8", "fp16", "fp32")


def import_onnxruntime():
    """The onnxruntime module, or RuntimeUnavailableError naming the extra to install."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise RuntimeUnavailableError(f"the onnx backend needs onnxruntime ({exc}): {INSTALL}") from None
    return onnxruntime


def default_trt_cache() -> Path:
    """Where TensorRT engines are kept unless told otherwise (building one takes minutes on a Jetson)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edge-hemato" / "tensorrt"


@dataclass(frozen=True)
class OnnxTensor:
    """The model's image input or score output as onnxruntime reports it. `batch` is None when dynamic."""

    name: str
    dtype: np.dtype
    shape: tuple  # ints, or None for a named (dynamic) dimension
    layout: str = "NHWC"  # NHWC or NCHW, for 4-d inputs

    @classmethod
    def from_node(cls, node, what: str) -> OnnxTensor:
        if node.type not in ONNX_TYPES:
            raise BundleError(
                f"model.onnx {what} {node.name!r} is {node.type}; the onnx backend reads {', '.join(ONNX_TYPES)}"
            )
        shape = tuple(d if isinstance(d, int) else None for d in node.shape)
        layout = "NHWC"
        if what == "input":
            if len(shape) != 4 or 3 not in (shape[1], shape[3]):
                raise BundleError(
                    f"model.onnx input {node.name!r} has shape {node.shape}; expected N x H x W x 3 or N x 3 x H x W"
                )
            layout = "NHWC" if shape[3] == 3 else "NCHW"
        return cls(node.name, np.dtype(ONNX_TYPES[node.type]), shape, layout)

    @property
    def batch(self) -> int | None:
        return self.shape[0]


def to_model_input(batch: np.ndarray, tensor: OnnxTensor) -> np.ndarray:
    """uint8 N x H x W x 3 pixels -> the model input. uint8 models take them as they are (their first
    DequantizeLinear has scale 1, zero point 0); float models take the 0-255 values as float (the
    rescaling is inside the graph, as for TFLite); NCHW models get them transposed."""
    if tensor.layout == "NCHW":
        batch = batch.transpose(0, 3, 1, 2)
    if tensor.dtype == np.uint8:
        return np.ascontiguousarray(batch)
    return batch.astype(tensor.dtype)


def to_scores(raw: np.ndarray, scale: float | None, zero_point: int | None) -> np.ndarray:
    """The model's output as float32: a uint8/int8 output dequantized in int64 arithmetic."""
    if raw.dtype in (np.uint8, np.int8):
        return dequantize(raw, scale, zero_point)
    return raw.astype(np.float32, copy=False)


class OnnxModel:
    """A loaded .onnx model: `set_input` a uint8 batch, `invoke`, read `output` (float32).

    A model with a fixed batch of 1 is run one image at a time; a dynamic batch is run whole."""

    def __init__(
        self,
        model: str | os.PathLike | bytes,
        providers: list[str] | None = None,
        threads: int | None = None,
        provider_options: dict[str, dict] | None = None,
        name: str | None = None,
    ):
        ort = import_onnxruntime()
        self.version = ort.__version__
        self.threads = int(threads or usable_cores())
        self.source = name or ("<bytes>" if isinstance(model, (bytes, bytearray)) else str(model))
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = list(providers or [PROVIDERS["cpu"]])
        provider_options = provider_options or {}
        # enable_fallback=0: a provider that fails to build the session is an error to report, not a
        # silent retry on the CPU (onnxruntime's Python default).
        self.session = ort.InferenceSession(
            bytes(model) if isinstance(model, (bytes, bytearray)) else str(model),
            sess_options=options,
            providers=[(p, provider_options.get(p, {})) for p in providers],
            enable_fallback=0,
        )
        self.active = list(self.session.get_providers())
        self.input = OnnxTensor.from_node(self.session.get_inputs()[0], "input")
        meta = self.session.get_modelmeta().custom_metadata_map
        outputs = {o.name: o for o in self.session.get_outputs()}
        scores = outputs.get(meta.get(SCORES_OUTPUT_KEY), self.session.get_outputs()[0])
        self.output_tensor = OnnxTensor.from_node(scores, "output")
        self.output_scale, self.output_zero_point = self._quantization(
            self.output_tensor, meta, OUTPUT_SCALE_KEY, OUTPUT_ZERO_POINT_KEY
        )
        embedding = outputs.get(meta.get(EMBEDDING_OUTPUT_KEY, ""))
        self.embedding_tensor = OnnxTensor.from_node(embedding, "output") if embedding is not None else None
        self.embedding_scale = self.embedding_zero_point = None
        if self.embedding_tensor is not None:
            self.embedding_scale, self.embedding_zero_point = self._quantization(
                self.embedding_tensor, meta, EMBEDDING_SCALE_KEY, EMBEDDING_ZERO_POINT_KEY
            )
        self._names = [self.output_tensor.name] + ([embedding.name] if embedding is not None else [])
        self._feed: np.ndarray | None = None
        self._raw: list[np.ndarray] | None = None

    def _quantization(self, tensor, meta: dict, scale_key: str, zero_key: str):
        """(scale, zero point) of an integer output, from the model's metadata; (None, None) for float."""
        if np.issubdtype(tensor.dtype, np.floating):
            return None, None
        if scale_key not in meta:
            raise BundleError(
                f"{self.source}: the output {tensor.name} is {tensor.dtype} but the model does not say its "
                f"scale ({scale_key}); export it with `edge export BUNDLE --format onnx`"
            )
        return float(meta[scale_key]), int(meta.get(zero_key, 0))

    @property
    def input_shape(self) -> tuple[int, ...]:
        """H x W x C of one image, as edge.preprocess makes it."""
        _, a, b, c = self.input.shape
        return (a, b, c) if self.input.layout == "NHWC" else (b, c, a)

    @property
    def n_outputs(self) -> int:
        return int(self.output_tensor.shape[-1])

    def set_input(self, batch: np.ndarray) -> None:
        """uint8 N x H x W x 3 (or one H x W x 3 image) -> the input the model takes."""
        self._feed = to_model_input(uint8_batch(batch, self.input_shape), self.input)
        self._raw = None

    def invoke(self) -> None:
        name, out = self.input.name, self._names
        if self.input.batch is None or len(self._feed) == self.input.batch:
            self._raw = self.session.run(out, {name: self._feed})
            return
        parts = [self.session.run(out, {name: one[None]}) for one in self._feed]
        self._raw = [np.concatenate(column) for column in zip(*parts, strict=True)]

    def raw(self) -> np.ndarray:
        """The scores output as the model wrote it."""
        return self._raw[0]

    def output(self) -> np.ndarray:
        """The output as float32 scores, dequantized."""
        return to_scores(self._raw[0], self.output_scale, self.output_zero_point)

    def embedding(self) -> np.ndarray | None:
        """The embedding output (rejecting bundles) as float32 N x D, dequantized; None without one."""
        if self.embedding_tensor is None:
            return None
        raw = self._raw[1]
        return to_scores(raw.reshape(len(raw), -1), self.embedding_scale, self.embedding_zero_point)

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.set_input(batch)
        self.invoke()
        return self.output()


@dataclass
class Options:
    providers: str = DEFAULT_PROVIDERS  # priority list, e.g. "tensorrt,cuda,cpu" or "cpu"
    threads: int | None = None  # CPU threads (intra-op); None: every usable core
    device: str | None = None  # GPU index for CUDA / TensorRT: 0, cuda:0, gpu:1
    trt_precision: str = "int8"  # int8 (the model's Q/DQ, fp16 elsewhere), fp16 or fp32
    trt_cache: str | None = None  # TensorRT engine cache directory; None: ~/.cache/edge-hemato/tensorrt
    runtime: str = "auto"  # accepted for the shared --runtime option; only onnxruntime runs .onnx


def _device_id(device: str | None) -> int:
    if device is None:
        return 0
    text = device.split(":", 1)[1] if ":" in device else device
    if device.split(":")[0] not in ("cuda", "gpu", text) or not text.isdigit():
        raise BackendOptionError(
            f"the onnx backend takes a GPU index as --device (0, cuda:0, gpu:1), not {device!r}"
        )
    return int(text)


def _checked(bundle: Bundle, options: Options) -> list[str]:
    """The providers asked for, once the options and the bundle are known to suit this backend."""
    if options.runtime not in ("auto", "onnxruntime"):
        raise BackendOptionError(f"the onnx backend runs on onnxruntime, not --runtime {options.runtime}")
    if options.trt_precision not in TRT_PRECISIONS:
        raise BackendOptionError(
            f"trt_precision must be one of {', '.join(TRT_PRECISIONS)}, not {options.trt_precision!r}"
        )
    if options.threads is not None and options.threads < 1:
        raise RuntimeUnavailableError(f"threads must be at least 1, not {options.threads}")
    if ONNX_MODEL not in bundle.manifest.files:
        raise BundleError(
            f"{bundle.path}: bundle has no {ONNX_MODEL} (run `edge export {bundle.path} --format onnx` "
            "on the training host)"
        )
    try:
        return parse_providers(options.providers)
    except ProviderError as exc:
        raise BackendOptionError(f"--providers: {exc}") from None


class Backend(InferenceBackend):
    """The bundle's model.onnx through onnxruntime, on the first available of the asked providers."""

    name = "onnx"
    invoke_scope = "session.run()"  # input copies to a GPU included
    # The session is `self.onnx`, not `self.model`: that name means a TFLite interpreter to the bench.

    def __init__(self, bundle: Bundle, options: Options | None = None):
        super().__init__(bundle)
        options = options or Options()
        requested = _checked(bundle, options)
        ort = import_onnxruntime()
        self.model_file = bundle.path / ONNX_MODEL
        self.precision = options.trt_precision
        available = list(ort.get_available_providers())
        chosen, self.skipped = select(requested, available)
        if not chosen:
            raise RuntimeUnavailableError(
                f"none of the providers {options.providers} can run here: "
                + "; ".join(f"{SHORT[p]}: {why}" for p, why in self.skipped.items())
            )
        provider_options = self._provider_options(bundle, options, chosen)
        try:
            # the verified bytes (edge/bundle.py), never the path: what runs is what was hashed
            self.onnx = OnnxModel(
                bundle.read(ONNX_MODEL), chosen, options.threads, provider_options, name=str(self.model_file)
            )
        except (BundleError, RuntimeUnavailableError):
            raise
        except Exception as exc:  # onnxruntime's own exception types (InvalidProtobuf, Fail, EP errors)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BundleError(f"{self.model_file}: onnxruntime cannot run it ({first})") from None
        self.provider = self._running(chosen, available, options.providers)
        self.threads = self.onnx.threads
        self.input_shape = self.onnx.input_shape
        self.n_outputs = self.onnx.n_outputs
        self.has_embedding = self.onnx.embedding_tensor is not None

    def _provider_options(self, bundle: Bundle, options: Options, chosen: list[str]) -> dict[str, dict]:
        """CUDA's device, and TensorRT's device, precision and engine cache (sets self.trt_cache)."""
        device_id = _device_id(options.device)
        self.trt_cache = None
        provider_options: dict[str, dict] = {PROVIDERS["cuda"]: {"device_id": device_id}}
        if PROVIDERS["tensorrt"] in chosen:
            sha = bundle.manifest.files[ONNX_MODEL][:16]
            # One folder per model and precision: an engine is only valid for the graph it was built from.
            self.trt_cache = Path(options.trt_cache or default_trt_cache()) / f"{sha}-{self.precision}"
            self.trt_cache.mkdir(parents=True, exist_ok=True)
            provider_options[PROVIDERS["tensorrt"]] = {
                "device_id": device_id,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(self.trt_cache),
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": str(self.trt_cache),
                "trt_int8_enable": self.precision == "int8",
                "trt_fp16_enable": self.precision in ("int8", "fp16"),
            }
        return provider_options

    def _running(self, chosen: list[str], available: list[str], asked: str) -> str:
        """The provider the session runs on. A provider onnxruntime lists can still fail to start:
        the session then runs without it, and why is recorded in self.skipped."""
        dropped = [p for p in chosen if p not in self.onnx.active]
        found = probe() if dropped else None
        for p in dropped:
            self.skipped[p] = (
                why_missing(p, available, found) or "onnxruntime did not start it (its log says why)"
            )
        running = [p for p in chosen if p in self.onnx.active]
        if not running:
            raise RuntimeUnavailableError(
                f"none of the providers {asked} started: "
                + "; ".join(f"{SHORT[p]}: {self.skipped[p]}" for p in chosen)
                + "; add cpu to --providers to run on the CPU anyway"
            )
        return running[0]

    def set_input(self, batch: np.ndarray) -> None:
        self.onnx.set_input(batch)

    def invoke(self) -> None:
        self.onnx.invoke()

    def scores(self) -> np.ndarray:
        return self.onnx.output()

    def embedding(self) -> np.ndarray | None:
        return self.onnx.embedding()

    def describe(self) -> dict:
        short = SHORT[self.provider]
        info = {
            "backend": self.name,
            "runtime": "onnxruntime",
            "runtime_version": self.onnx.version,
            "threads": self.threads,
            # what runs the graph, as the TFLite backends name their delegate
            "delegate": f"{short} {self.precision}" if short == "tensorrt" else short,
            "providers": [SHORT.get(p, p) for p in self.onnx.active],
            "model": self.model_file.name,
            "input": {
                "shape": list(self.input_shape),
                "dtype": self.onnx.input.dtype.name,
                "layout": self.onnx.input.layout,
            },
        }
        if self.skipped:
            info["providers_skipped"] = {SHORT[p]: why for p, why in self.skipped.items()}
        if self.trt_cache is not None:
            info["trt_cache"] = str(self.trt_cache)
        return info
