"""CPU TFLite backend: the bundle's model.tflite with XNNPACK and all usable cores by default.

`runtime` forces one of edge.runtime.tflite.RUNTIMES (the CLI's --runtime); `threads` and
`xnnpack` override the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.bundle import Bundle
from edge.errors import BundleError, RuntimeUnavailableError
from edge.runtime import InferenceBackend
from edge.runtime.tflite import TFLiteModel


@dataclass
class Options:
    runtime: str = "auto"
    threads: int | None = None  # None: every usable core
    xnnpack: bool = True


def _output_roles(outputs, bundle: Bundle) -> tuple[int, int | None]:
    """Which output holds the class scores and which the embedding (models for rejection have
    two): by the tensor names the manifest recorded, else by shape (scores: one per label)."""
    if len(outputs) == 1:
        return 0, None
    m = bundle.manifest
    names = [t.name for t in outputs]
    if m.output.name in names and m.embedding is not None and m.embedding.name in names:
        return names.index(m.output.name), names.index(m.embedding.name)
    per_label = [i for i, t in enumerate(outputs) if t.shape[-1] == len(bundle.labels)]
    scores = per_label[0] if per_label else 0
    return scores, next(i for i in range(len(outputs)) if i != scores)


class TFLiteBackend(InferenceBackend):
    """What every TFLite-interpreter backend shares (CPU here, Edge TPU in edgetpu.py)."""

    # Edge TPU models are compiled for a fixed batch of 1; CPU models can be resized to any batch.
    resizable_batch = True

    def __init__(
        self,
        bundle: Bundle,
        model_file: Path,
        delegates: list | None = None,
        runtime: str = "auto",
        threads: int | None = None,
        xnnpack: bool = True,
    ):
        super().__init__(bundle)
        self.model_file = model_file
        if threads is not None and threads < 1:
            raise RuntimeUnavailableError(f"threads must be at least 1, not {threads}")
        try:
            # the verified bytes (edge/bundle.py), never the path: what runs is what was hashed
            self.model = TFLiteModel(
                bundle.read(model_file.name),
                runtime,
                threads,
                xnnpack,
                delegates,
                self.resizable_batch,
                name=str(model_file),
            )
        except ImportError as exc:
            raise RuntimeUnavailableError(str(exc)) from None
        except ValueError as exc:  # the runtime's own words for a file that is not a TFLite model
            raise BundleError(f"{model_file}: not a loadable TFLite model ({exc})") from None
        except RuntimeError as exc:
            raise self._allocation_error(exc) from None
        self.threads = self.model.threads
        self.input_shape = self.model.input_shape
        self.input_dtype = self.model.input_dtype
        self._scores_at, self._embedding_at = _output_roles(self.model.outputs, bundle)
        self.n_outputs = self.model.outputs[self._scores_at].shape[-1]
        self.has_embedding = self._embedding_at is not None

    def _allocation_error(self, exc: Exception) -> Exception:
        return RuntimeUnavailableError(f"{self.model_file}: the TFLite interpreter cannot run it ({exc})")

    def set_input(self, batch: np.ndarray) -> None:
        self.model.set_input(batch)

    def invoke(self) -> None:
        self.model.invoke()

    def scores(self) -> np.ndarray:
        return self.model.output(self._scores_at)

    def embedding(self) -> np.ndarray | None:
        return None if self._embedding_at is None else self.model.output(self._embedding_at)

    def named_outputs(self) -> dict[str, np.ndarray]:
        return {t.name: self.model.output(i) for i, t in enumerate(self.model.outputs)}

    def describe(self) -> dict:
        return {"backend": self.name, **self.model.describe()}


class Backend(TFLiteBackend):
    name = "cpu"

    def __init__(self, bundle: Bundle, options: Options | None = None):
        options = options or Options()
        super().__init__(
            bundle,
            bundle.model_path(),
            runtime=options.runtime,
            threads=options.threads,
            xnnpack=options.xnnpack,
        )
