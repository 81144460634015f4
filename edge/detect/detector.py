"""A detector bundle, its backend and its preprocessing, built once; `detect` one frame at a time.

The same shape as edge.predict.Classifier: the bundle's own preprocessing (edge.preprocess, here a
letterbox: `aspect = "pad"`), the runtime layer (CPU TFLite or the Edge TPU), then decode.py in NumPy.
"""

from __future__ import annotations

import time

import numpy as np

from edge.bundle import Bundle
from edge.detect.decode import Detection, decode
from edge.detect.spec import DetectorSpec
from edge.errors import BundleError
from edge.preprocess import input_geometry, preprocess
from edge.runtime import InferenceBackend, open_backend


class Detector:
    def __init__(self, bundle: Bundle, backend: InferenceBackend | None = None, lab=None):
        bundle.require_task("detector", " (edge classify and edge run --bundle take classifiers)")
        self.bundle = bundle
        self.spec: DetectorSpec = bundle.manifest.detector
        self.kinds = list(bundle.labels)
        self.preprocess_spec = bundle.preprocess_spec
        self.threshold = self.spec.threshold
        self.lab = lab
        self.last_view: np.ndarray | None = None  # the frame as the model saw it, letterbox bands cut off
        self.backend = backend or open_backend(bundle)
        # One throw-away inference: the first invoke() costs many times a normal one, and only the
        # model can say whether the outputs the manifest names exist.
        self.backend.set_input(np.zeros((1, *self.backend.input_shape), np.uint8))
        self.backend.invoke()
        names = set(self.backend.named_outputs())
        if not {self.spec.heatmap, self.spec.boxes} <= names:
            raise BundleError(
                f"{bundle.path / 'manifest.json'}: detector outputs {self.spec.heatmap!r} and {self.spec.boxes!r} "
                f"are not outputs of the model ({', '.join(sorted(names))})"
            )

    @classmethod
    def open(cls, bundle: Bundle, backend_name: str = "cpu", lab=None, **backend_options) -> Detector:
        return cls(bundle, open_backend(bundle, backend_name, **backend_options), lab)

    @property
    def name(self) -> str:
        return self.bundle.path.name

    def detect(
        self, image: np.ndarray, threshold: float | None = None, order: str = "BGR"
    ) -> tuple[list[Detection], dict[str, float]]:
        """A frame (BGR by default, any size) -> its detections in its own pixels, best first, and the
        time of each stage (ms): preprocess, invoke, decode (reading the outputs included).
        `threshold` defaults to `self.threshold` (the bundle's operating point unless changed)."""
        t0 = time.perf_counter()
        tensor = preprocess(image, self.preprocess_spec, order, lab=self.lab)
        self.backend.set_input(tensor[None])
        geometry = input_geometry(image.shape, self.preprocess_spec)
        sx, sy, left, top = geometry
        h, w = image.shape[:2]
        # field mode measures the stage motion on this small copy instead of shrinking the frame again
        self.last_view = tensor[
            max(0, int(round(-top / sy))) : int(round((h - top) / sy)),
            max(0, int(round(-left / sx))) : int(round((w - left) / sx)),
        ]
        t1 = time.perf_counter()
        self.backend.invoke()
        t2 = time.perf_counter()
        out = self.backend.named_outputs()
        dets = decode(
            out[self.spec.heatmap],
            out[self.spec.boxes],
            self.spec,
            self.kinds,
            geometry,
            image.shape,
            self.threshold if threshold is None else threshold,
        )
        t3 = time.perf_counter()
        return dets, {
            "preprocess": (t1 - t0) * 1000,
            "invoke": (t2 - t1) * 1000,
            "decode": (t3 - t2) * 1000,
        }
