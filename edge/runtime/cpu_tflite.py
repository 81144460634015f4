"""CPU TFLite backend: LiteRT (ai_edge_litert), else tflite_runtime, else tensorflow.lite.

The interpreter is built once per bundle, with XNNPACK and all usable cores by default.
`runtime=` forces one of RUNTIMES (the CLI's --runtime); `threads=` and `xnnpack=` override the defaults.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.bundle import Bundle
from edge.errors import RuntimeUnavailableError
from edge.runtime import InferenceBackend, dequantize

# Import order matters: tflite_runtime 2.14 (its last release) fails to import beside NumPy 2.
RUNTIMES = {
    "litert": ("ai_edge_litert.interpreter", "ai_edge_litert"),
    "tflite-runtime": ("tflite_runtime.interpreter", "tflite_runtime"),
    "tensorflow": ("tensorflow.lite.python.interpreter", "tensorflow"),
}


RUNTIME_CHOICES = ("auto", *RUNTIMES)


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
    names = list(RUNTIMES) if preference == "auto" else [preference]
    if preference != "auto" and preference not in RUNTIMES:
        raise RuntimeUnavailableError(f"unknown runtime {preference!r}; choose auto, {', '.join(RUNTIMES)}")
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
        "no TFLite runtime could be imported (" + "; ".join(errors) + "). Install one: pip install '.[device]'"
    )


def read_model_io(model_path: str | os.PathLike, runtime: str = "auto") -> dict:
    """Input / output shapes and dtypes of a .tflite file, read with whichever runtime is present."""
    rt = import_runtime(runtime)
    interp = rt.interpreter_class(model_path=str(model_path))
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    return {
        "input_shape": [int(v) for v in inp["shape"]],
        "input_dtype": np.dtype(inp["dtype"]).name,
        "output_shape": [int(v) for v in out["shape"]],
        "output_dtype": np.dtype(out["dtype"]).name,
    }


class TFLiteBackend(InferenceBackend):
    """Shared mechanics of every TFLite-interpreter backend (CPU here, Edge TPU in edgetpu.py)."""

    # Edge TPU models are compiled for a fixed batch of 1; CPU models can be resized to any batch.
    resizable_batch = True

    def __init__(self, bundle: Bundle, runtime: str = "auto", threads: int | None = None, xnnpack: bool = True, **_):
        super().__init__(bundle)
        try:
            self.rt = import_runtime(runtime or "auto")
        except ImportError as exc:
            raise RuntimeUnavailableError(str(exc)) from None
        self.threads = int(threads or usable_cores())
        if self.threads < 1:
            raise RuntimeUnavailableError(f"threads must be at least 1, not {self.threads}")
        self.xnnpack = bool(xnnpack)
        self.interpreter = self._make_interpreter()
        try:
            self.interpreter.allocate_tensors()
        except RuntimeError as exc:
            raise self._allocation_error(exc) from None
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        self._batch = int(self._input["shape"][0])
        self.input_shape = tuple(int(v) for v in self._input["shape"][1:])
        self.input_dtype = np.dtype(self._input["dtype"])
        self._out_scale, self._out_zero = self._output.get("quantization", (0.0, 0))
        in_scale, in_zero = self._input.get("quantization", (0.0, 0))
        # A float model still takes 0-255 values (rescaling is inside the graph).
        self._in_quant = (in_scale, in_zero) if self.input_dtype == np.int8 else None

    def _interpreter_options(self) -> dict:
        options = {"num_threads": self.threads}
        resolver = getattr(self.rt.module, "OpResolverType", None)
        if not self.xnnpack and resolver is not None:
            # XNNPACK is TFLite's default CPU delegate; only this resolver turns it off.
            options["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        return options

    def _make_interpreter(self):
        return self.rt.interpreter_class(model_path=str(self.bundle.model_path()), **self._interpreter_options())

    def _allocation_error(self, exc: Exception) -> Exception:
        return RuntimeUnavailableError(f"{self.bundle.model_path()}: the {self.rt.name} interpreter cannot run it ({exc})")

    def _resize(self, n: int) -> None:
        self.interpreter.resize_tensor_input(self._input["index"], [n, *self.input_shape])
        self.interpreter.allocate_tensors()
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        self._batch = n

    def _to_input_dtype(self, batch: np.ndarray) -> np.ndarray:
        if self.input_dtype == np.uint8:
            return batch
        if self._in_quant is not None:  # int8 input: value = (x - zp) * scale on the 0-255 scale
            scale, zero = self._in_quant
            return np.clip(np.rint(batch / scale + zero), -128, 127).astype(np.int8)
        return batch.astype(self.input_dtype)

    def invoke(self, batch: np.ndarray) -> np.ndarray:
        """Raw model output for a uint8 batch (no dequantization)."""
        if batch.ndim == 3:
            batch = batch[None]
        if batch.dtype != np.uint8:
            raise ValueError(f"expected a uint8 batch, got {batch.dtype}")
        if tuple(batch.shape[1:]) != self.input_shape:
            raise ValueError(f"expected input {self.input_shape}, got {tuple(batch.shape[1:])}")
        if len(batch) != self._batch:
            if not self.resizable_batch:
                return np.concatenate([self.invoke(one[None]) for one in batch])
            self._resize(len(batch))
        self.interpreter.set_tensor(self._input["index"], self._to_input_dtype(batch))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._output["index"])  # already a copy, owned by the caller

    def run(self, batch: np.ndarray) -> np.ndarray:
        raw = self.invoke(batch)
        if raw.dtype in (np.uint8, np.int8):
            return dequantize(raw, self._out_scale, self._out_zero)
        return raw.astype(np.float32)

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "runtime": self.rt.name,
            "runtime_version": self.rt.version,
            "threads": self.threads,
            "delegate": "xnnpack" if self.xnnpack else "none",
            "model": Path(self.bundle.model_path()).name,
            "input": {"shape": list(self.input_shape), "dtype": self.input_dtype.name},
        }


class Backend(TFLiteBackend):
    name = "cpu"
