"""Inference backends behind one small interface, one module per backend (frigate's detector plugins).

Each backend module defines `Options` (a dataclass of what it can be told: runtime, threads, device,
...) and `Backend` (a subclass of InferenceBackend). `open_backend` picks one by name, parses the
options into its `Options` (an unknown option is an error, not silently dropped), and checks that
the model's output fits the bundle's labels. A backend whose runtime is missing raises
RuntimeUnavailableError with what to install.
"""

from __future__ import annotations

import dataclasses
import importlib
from abc import ABC, abstractmethod

import numpy as np

from edge.bundle import Bundle
from edge.errors import BundleError, EdgeError, RuntimeUnavailableError
from edge.runtime.tflite import dequantize

__all__ = [
    "BACKENDS",
    "MAX_THREADS",
    "BackendOptionError",
    "InferenceBackend",
    "dequantize",
    "open_backend",
    "parse_options",
]

# name -> module; each module defines `Options` and `Backend`.
BACKENDS = {
    "cpu": "edge.runtime.cpu_tflite",
    "edgetpu": "edge.runtime.edgetpu",
    "onnx": "edge.runtime.onnx",
}
# Threads per interpreter above this are a typo, not a machine: TFLite's pool of 100000 threads
# segfaults, and no board this runs on has more than a few dozen cores.
MAX_THREADS = 64


class BackendOptionError(EdgeError):
    """An option the chosen backend does not have, or a value it cannot take."""

    exit_code = 2


def parse_options(cls, backend: str, options: dict):
    """`options` -> the backend's Options dataclass. None means "not given" and is left out; any
    other key the dataclass does not declare is an error naming the backend's options."""
    known = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - known)
    if unknown:
        raise BackendOptionError(
            f"the {backend} backend has no option {', '.join(unknown)} (it takes {', '.join(sorted(known))})"
        )
    return cls(**given)


class InferenceBackend(ABC):
    """Load a bundle once, then classify uint8 batches in three steps that can be timed apart:
    `set_input` (uint8 N x H x W x 3 in the bundle's colour order), `invoke`, `scores` (float32
    N x C probabilities, dequantized with the output tensor's scale and zero point).
    `run` does all three."""

    name: str = "?"

    def __init__(self, bundle: Bundle):
        self.bundle = bundle

    input_shape: tuple[int, ...] = ()  # H x W x C of one image
    n_outputs: int = 0  # classes the model outputs
    has_embedding: bool = False  # a second output, for rejection (see `embedding`)

    @abstractmethod
    def set_input(self, batch: np.ndarray) -> None: ...

    @abstractmethod
    def invoke(self) -> None: ...

    @abstractmethod
    def scores(self) -> np.ndarray: ...

    def embedding(self) -> np.ndarray | None:
        """float32 N x D: the model's second output (for rejection), after `invoke`; None without one."""
        return None

    def named_outputs(self) -> dict[str, np.ndarray]:
        """Every output by the model's tensor name, float32 (dequantized), after `invoke`: what a
        detector decodes (its score map and box distances)."""
        raise RuntimeUnavailableError(f"the {self.name} backend cannot run detector bundles")

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.set_input(batch)
        self.invoke()
        return self.scores()

    @abstractmethod
    def describe(self) -> dict:
        """Runtime name and version, delegate, threads: what a benchmark must record."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


def open_backend(bundle: Bundle, backend: str = "cpu", **options) -> InferenceBackend:
    """Build the named backend for `bundle` with its options (cpu: runtime, threads, xnnpack;
    edgetpu: device, runtime, threads; onnx: providers, threads, device, trt_precision, trt_cache)."""
    if backend not in BACKENDS:
        raise RuntimeUnavailableError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    try:
        module = importlib.import_module(BACKENDS[backend])
    except ImportError as exc:
        raise RuntimeUnavailableError(f"backend {backend!r} is not available here: {exc}") from None
    opened = module.Backend(bundle, parse_options(module.Options, backend, options))
    # The manifest could be edited without touching the model: ask the model itself.
    if opened.n_outputs != len(bundle.labels):
        opened.close()
        raise BundleError(
            f"{bundle.path / 'manifest.json'}: {len(bundle.labels)} labels but the model outputs "
            f"{opened.n_outputs} classes"
        )
    return opened
