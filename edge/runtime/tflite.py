"""The one place that drives a TFLite interpreter, after pycoral's `adapters/common.py`.

Everything that runs a .tflite file goes through here: the CPU and Edge TPU backends, the fidelity
report of `edge quantize`, `edge bench` and the exporter's reading of tensor specs. So the numbers a
manifest records come from the code the device runs.

Runtimes, in the order tried: LiteRT (`ai_edge_litert`), `tflite_runtime`, `tensorflow.lite`.
Quantization is handled in two visible places: `quantize` (uint8 0-255 pixels -> the model's input
dtype) and `dequantize` (raw uint8/int8 scores -> float32), both in int64 arithmetic as pycoral does.
"""

from __future__ import annotations

import importlib
import os
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import RuntimeUnavailableError
from edge.native_log import LITERT_NOISE, held_stderr

# Import order matters: tflite_runtime 2.14 (its last release) fails to import beside NumPy 2.
RUNTIMES = {
    "litert": ("ai_edge_litert.interpreter", "ai_edge_litert"),
    "tflite-runtime": ("tflite_runtime.interpreter", "tflite_runtime"),
    "tensorflow": ("tensorflow.lite.python.interpreter", "tensorflow"),
}
RUNTIME_CHOICES = ("auto", *RUNTIMES)
SMALL_OUTPUT = 64  # elements: up to this, `dequantize` works in plain Python


@dataclass
class TFLiteRuntime:
    name: str
    version: str
    interpreter_class: Any
    load_delegate: Any
    module: Any = None  # the interpreter module, for OpResolverType


def usable_cores() -> int:
    """Cores this process may run on (respects taskset / cgroup affinity, unlike os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def import_runtime(preference: str = "auto") -> TFLiteRuntime:
    """The first importable TFLite runtime (or exactly `preference`). ImportError names what to install."""
    if preference != "auto" and preference not in RUNTIMES:
        raise RuntimeUnavailableError(f"unknown runtime {preference!r}; choose auto, {', '.join(RUNTIMES)}")
    names = list(RUNTIMES) if preference == "auto" else [preference]
    errors = []
    for name in names:
        module_name, package = RUNTIMES[name]
        try:
            module = importlib.import_module(module_name)
            version = getattr(importlib.import_module(package), "__version__", "?")
        except Exception as exc:  # tflite_runtime on NumPy 2 raises AttributeError, not ImportError
            errors.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            continue
        return TFLiteRuntime(name, version, module.Interpreter, module.load_delegate, module)
    raise ImportError(
        "no TFLite runtime could be imported ("
        + "; ".join(errors)
        + "). Install one: pip install '.[device]'"
    )


@dataclass(frozen=True)
class TensorInfo:
    """One input or output tensor: index, name, shape, dtype and (quantized tensors) scale / zero point."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: float = 0.0
    zero_point: int = 0

    @classmethod
    def from_details(cls, d: dict) -> TensorInfo:
        scale, zero = d.get("quantization", (0.0, 0))
        return cls(
            int(d["index"]),
            str(d.get("name", "")),
            tuple(int(v) for v in d["shape"]),
            np.dtype(d["dtype"]),
            float(scale),
            int(zero),
        )

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0


def quantize(batch: np.ndarray, tensor: TensorInfo) -> np.ndarray:
    """uint8 0-255 pixels -> the input tensor's dtype. uint8 models take them as they are; int8
    models take round(x / scale + zero_point); float models take the 0-255 values (rescaling is
    inside the graph)."""
    if tensor.dtype == np.uint8:
        return batch
    if tensor.dtype == np.int8 and tensor.quantized:
        return np.clip(np.rint(batch / tensor.scale + tensor.zero_point), -128, 127).astype(np.int8)
    return batch.astype(tensor.dtype)


def uint8_batch(batch: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    """`batch` as a uint8 N x H x W x C batch of `input_shape` images (one H x W x C image becomes a
    batch of one); ValueError naming what differs otherwise. Every backend's set_input starts here."""
    if batch.ndim == 3:
        batch = batch[None]
    if batch.dtype != np.uint8:
        raise ValueError(f"expected a uint8 batch, got {batch.dtype}")
    if tuple(batch.shape[1:]) != tuple(input_shape):
        raise ValueError(f"expected input {tuple(input_shape)}, got {tuple(batch.shape[1:])}")
    return batch


def dequantize(raw: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """uint8/int8 tensor -> float32, in int64 arithmetic as pycoral does (no overflow, no wrap)."""
    if not scale:
        return raw.astype(np.float32)
    if raw.size <= SMALL_OUTPUT:
        # One frame's class scores: the same float64 products rounded to float32 (array "f"), in
        # plain Python, which is cheaper than four NumPy calls right after invoke() (docs/bench.md).
        zero = int(zero_point)
        values = array("f", [scale * (v - zero) for v in raw.ravel().tolist()])
        return np.frombuffer(values, np.float32).reshape(raw.shape)
    return (scale * (raw.astype(np.int64) - int(zero_point))).astype(np.float32)


def to_float(raw: np.ndarray, tensor: TensorInfo) -> np.ndarray:
    """A raw output tensor as float32: dequantized when it is uint8/int8."""
    if raw.dtype in (np.uint8, np.int8):
        return dequantize(raw, tensor.scale, tensor.zero_point)
    return raw.astype(np.float32)


def make_interpreter(
    model: str | os.PathLike | bytes,
    runtime: TFLiteRuntime,
    threads: int | None = None,
    xnnpack: bool = True,
    delegates: list | None = None,
):
    """An interpreter for a .tflite path or its bytes, with XNNPACK (TFLite's default CPU delegate)
    unless `xnnpack` is False, and `delegates` (the Edge TPU's) applied."""
    options: dict = {"num_threads": int(threads or usable_cores())}
    resolver = getattr(runtime.module, "OpResolverType", None)
    if not xnnpack and resolver is not None:
        # Only this resolver turns XNNPACK off.
        options["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    if delegates:
        options["experimental_delegates"] = list(delegates)
    source = (
        {"model_content": bytes(model)}
        if isinstance(model, (bytes, bytearray))
        else {"model_path": str(model)}
    )
    return runtime.interpreter_class(**source, **options)


class TFLiteModel:
    """A loaded .tflite model: `set_input` a uint8 batch, `invoke`, read `output` (float32) or `raw`.

    The batch dimension is resized on demand where the model allows it (CPU); a model compiled for
    a fixed batch of 1 (Edge TPU) runs a batch one image at a time.
    """

    def __init__(
        self,
        model: str | os.PathLike | bytes,
        runtime: str = "auto",
        threads: int | None = None,
        xnnpack: bool = True,
        delegates: list | None = None,
        resizable_batch: bool = True,
        name: str | None = None,
    ):
        self.rt = import_runtime(runtime or "auto")
        self.threads = int(threads or usable_cores())
        if self.threads < 1:
            raise ValueError(f"threads must be at least 1, not {self.threads}")
        self.xnnpack = bool(xnnpack)
        self.resizable_batch = resizable_batch
        self.source = name or ("<bytes>" if isinstance(model, (bytes, bytearray)) else str(model))
        with held_stderr(LITERT_NOISE):  # its INFO line on every start is not for the user
            self.interpreter = make_interpreter(model, self.rt, self.threads, self.xnnpack, delegates)
            self.interpreter.allocate_tensors()  # RuntimeError: the caller says which model and why
        self._pending: np.ndarray | None = None  # a batch a fixed-batch model runs image by image
        self._gathered: list[np.ndarray] | None = None
        self._read_details()

    def _read_details(self) -> None:
        self.inputs = [TensorInfo.from_details(d) for d in self.interpreter.get_input_details()]
        self.outputs = [TensorInfo.from_details(d) for d in self.interpreter.get_output_details()]
        self.batch = self.inputs[0].shape[0]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """H x W x C of one image."""
        return self.inputs[0].shape[1:]

    @property
    def input_dtype(self) -> np.dtype:
        return self.inputs[0].dtype

    def _resize(self, n: int) -> None:
        self.interpreter.resize_tensor_input(self.inputs[0].index, [n, *self.input_shape])
        self.interpreter.allocate_tensors()
        self._read_details()

    def set_input(self, batch: np.ndarray) -> None:
        """uint8 N x H x W x C (or one H x W x C image) -> the input tensor. A fixed-batch model
        given another batch size keeps the batch, and `invoke` runs it one image at a time."""
        batch = uint8_batch(batch, self.input_shape)
        self._pending = self._gathered = None
        if len(batch) != self.batch:
            if not self.resizable_batch:
                self._pending = batch
                return
            self._resize(len(batch))
        self.interpreter.set_tensor(self.inputs[0].index, quantize(batch, self.inputs[0]))

    def invoke(self) -> None:
        if self._pending is None:
            self.interpreter.invoke()
            return
        parts = []
        for one in self._pending:
            self.interpreter.set_tensor(self.inputs[0].index, quantize(one[None], self.inputs[0]))
            self.interpreter.invoke()
            parts.append([self.interpreter.get_tensor(t.index) for t in self.outputs])
        self._gathered = [np.concatenate(column) for column in zip(*parts, strict=True)]

    def raw(self, i: int = 0) -> np.ndarray:
        """Output `i` as the model wrote it (get_tensor returns a copy the caller owns)."""
        if self._gathered is not None:
            return self._gathered[i]
        return self.interpreter.get_tensor(self.outputs[i].index)

    def output(self, i: int = 0) -> np.ndarray:
        """Output `i` as float32, dequantized."""
        return to_float(self.raw(i), self.outputs[i])

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Every output (float32) for a uint8 batch."""
        self.set_input(batch)
        self.invoke()
        return [self.output(i) for i in range(len(self.outputs))]

    def describe(self) -> dict:
        return {
            "runtime": self.rt.name,
            "runtime_version": self.rt.version,
            "threads": self.threads,
            "delegate": "xnnpack" if self.xnnpack else "none",
            "model": Path(self.source).name,
            "input": {"shape": list(self.input_shape), "dtype": self.input_dtype.name},
        }


def model_io(
    model: str | os.PathLike | bytes, runtime: str = "auto"
) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """Input and output tensors of a .tflite model (path or bytes), read with whichever runtime is present."""
    rt = import_runtime(runtime)
    interp = make_interpreter(model, rt, threads=1)
    return (
        [TensorInfo.from_details(d) for d in interp.get_input_details()],
        [TensorInfo.from_details(d) for d in interp.get_output_details()],
    )
