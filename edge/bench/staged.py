"""A backend split into set_input / invoke / output, so `invoke` can be timed alone.

TFLite-interpreter backends (CPU, Edge TPU) expose `.interpreter`; for them `invoke` is exactly
`interpreter.invoke()`, as in TFLite's benchmark_model and pycoral. Any other backend is timed as
a whole `backend.run()` and says so in `scope`.
"""

from __future__ import annotations

import numpy as np

from edge.errors import EdgeError
from edge.runtime import InferenceBackend, dequantize


class StagedModel:
    def __init__(self, backend: InferenceBackend):
        self.backend = backend
        self.interpreter = getattr(backend, "interpreter", None)
        self.split = self.interpreter is not None and hasattr(self.interpreter, "get_input_details")
        self.scope = "interpreter.invoke()" if self.split else "backend.run()"
        self._pending: np.ndarray | None = None
        self._probs: np.ndarray | None = None
        if self.split:
            self._bind()
        else:
            self.input_shape = tuple(getattr(backend, "input_shape", ()))

    def _bind(self) -> None:
        interp = self.interpreter
        inp = interp.get_input_details()[0]
        if int(inp["shape"][0]) != 1:  # the per-frame pipeline classifies one crop per frame
            interp.resize_tensor_input(inp["index"], [1, *[int(v) for v in inp["shape"][1:]]])
            interp.allocate_tensors()
            inp = interp.get_input_details()[0]
        out = interp.get_output_details()[0]
        self._in_index, self._out_index = inp["index"], out["index"]
        self.input_shape = tuple(int(v) for v in inp["shape"][1:])
        self._in_dtype = np.dtype(inp["dtype"])
        self._out_quant = out.get("quantization", (0.0, 0))
        # int8-input models: the backend owns the 0-255 -> int8 mapping; reuse it, never re-derive it.
        self._convert = getattr(self.backend, "_to_input_dtype", None)

    def check_input(self, tensor: np.ndarray) -> None:
        if self.input_shape and tuple(tensor.shape) != self.input_shape:
            raise EdgeError(
                f"preprocessing gives {tuple(tensor.shape)} but the model takes {self.input_shape}: "
                "the bundle's manifest and model disagree"
            )

    def set_input(self, tensor: np.ndarray) -> None:
        """uint8 H x W x 3 (already preprocessed) -> the model's input tensor."""
        batch = tensor[None]
        if not self.split:
            self._pending = batch
            return
        if self._in_dtype != np.uint8:
            batch = self._convert(batch) if self._convert else batch.astype(self._in_dtype)
        self.interpreter.set_tensor(self._in_index, batch)

    def invoke(self) -> None:
        if self.split:
            self.interpreter.invoke()
        else:
            self._probs = self.backend.run(self._pending)

    def output(self) -> np.ndarray:
        """float32 class probabilities of the one frame, dequantized as the backend does."""
        if not self.split:
            return self._probs[0]
        raw = self.interpreter.get_tensor(self._out_index)[0]
        if raw.dtype in (np.uint8, np.int8):
            return dequantize(raw, *self._out_quant)
        return raw.astype(np.float32)
