"""Inference backends behind one small interface (DESIGN.md principle 4).

One module per backend, like frigate's detector plugins. `open_backend` picks one by name; a
backend whose runtime is missing raises RuntimeUnavailableError with what to install.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from array import array

import numpy as np

from edge.bundle import Bundle
from edge.errors import RuntimeUnavailableError

SMALL_OUTPUT = 64  # elements: up to this, `dequantize` works in plain Python

# name -> module; each module defines `Backend` (a subclass of InferenceBackend).
BACKENDS = {
    "cpu": "edge.runtime.cpu_tflite",
    "edgetpu": "edge.runtime.edgetpu",
}


class InferenceBackend(ABC):
    """Load a bundle once, then classify uint8 batches.

    `run` takes uint8 N x H x W x 3 in the bundle's colour order and returns float32 N x C
    probabilities, already dequantized with the output tensor's scale and zero point.
    """

    name: str = "?"

    def __init__(self, bundle: Bundle):
        self.bundle = bundle

    @abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def describe(self) -> dict:
        """Runtime name and version, delegate, threads: what a benchmark must record."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


def dequantize(raw: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """uint8/int8 tensor -> float32, in int64 arithmetic as pycoral does (no overflow, no wrap)."""
    if not scale:
        return raw.astype(np.float32)
    if raw.size <= SMALL_OUTPUT:
        # One frame's class scores: the same float64 products rounded to float32 (array "f"), in
        # plain Python; right after invoke() four NumPy calls cost ~0.06 ms, this ~0.025 ms.
        zero = int(zero_point)
        values = array("f", [scale * (v - zero) for v in raw.ravel().tolist()])
        return np.frombuffer(values, np.float32).reshape(raw.shape)
    return (scale * (raw.astype(np.int64) - int(zero_point))).astype(np.float32)


def open_backend(bundle: Bundle, backend: str = "cpu", **options) -> InferenceBackend:
    """Build the named backend for `bundle` (options: runtime, threads, device, ...)."""
    if backend not in BACKENDS:
        raise RuntimeUnavailableError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    try:
        module = importlib.import_module(BACKENDS[backend])
    except ImportError as exc:
        raise RuntimeUnavailableError(f"backend {backend!r} is not available here: {exc}") from None
    return module.Backend(bundle, **options)
