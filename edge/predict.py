"""From preprocessed uint8 tensors to results a technician can act on: label, confidence, top-k,
and an `uncertain` flag for cells that need a human look. Used by classify, eval, run and bench."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from edge.bundle import Bundle, Uncertainty
from edge.catalogue import UNKNOWN
from edge.errors import BundleError
from edge.preprocess import WHOLE_IMAGE, View, preprocess
from edge.rejection import MahalanobisScorer
from edge.runtime import InferenceBackend, open_backend


@dataclass
class Prediction:
    label: str
    confidence: float
    probabilities: dict[str, float]
    top_k: list[tuple[str, float]]
    uncertain: bool
    margin: float
    timings_ms: dict[str, float] = field(default_factory=dict)
    reason: str | None = None  # why it needs a look: "unknown", "low confidence", "small margin"
    rejection_score: float | None = None  # distance to the training cells (bundles with rejection)
    # flagged only because the gate found the microscope unlike the bundle's (edge.site)
    site_flag: bool = False

    def flag_uncalibrated(self, reason: str) -> None:
        """The gate's flag: every cell of a microscope that differs needs a human look."""
        if self.reason and reason in self.reason:
            return
        self.site_flag, self.uncertain = not self.uncertain, True
        self.reason = reason if self.reason is None else f"{self.reason}; {reason}"

    def to_dict(self) -> dict:
        out = {
            "label": self.label,
            "confidence": round(self.confidence, 6),
            "margin": round(self.margin, 6),
            "uncertain": self.uncertain,
            "reason": self.reason,
            "top_k": [[name, round(p, 6)] for name, p in self.top_k],
            "probabilities": {k: round(v, 6) for k, v in self.probabilities.items()},
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
        }
        if self.rejection_score is not None:
            out["rejection_score"] = round(self.rejection_score, 4)
        return out


def _uncertainty(ordered: list[float], rule: Uncertainty) -> tuple[str | None, float]:
    """Why a human should look, from the scores in descending order: the top one below
    min_confidence, or top-1 minus top-2 below min_margin; None if neither. And that margin."""
    margin = ordered[0] - (ordered[1] if len(ordered) > 1 else 0.0)
    if ordered[0] < rule.min_confidence:
        return "low confidence", margin
    return ("small margin" if margin < rule.min_margin else None), margin


def to_prediction(
    probs: np.ndarray,
    labels: list[str],
    rule: Uncertainty,
    top_k: int = 3,
    rejection_score: float | None = None,
    rejection_threshold: float | None = None,
) -> Prediction:
    """Scores -> the label, top-k and whether a human should look (and why). A rejection score over
    its threshold makes the cell "unknown": the best classes stay in top_k, the label does not
    count as any of them."""
    # Plain Python on the handful of class scores: on the per-frame path, right after invoke() has
    # flushed the caches, it costs a third of a dozen small NumPy calls (docs/bench.md).
    values = probs.tolist() if isinstance(probs, np.ndarray) else [float(p) for p in probs]
    # Stable sort: on an exact tie (common with uint8 outputs) take the first class, as argmax does.
    order = sorted(range(len(values)), key=values.__getitem__, reverse=True)
    reason, margin = _uncertainty([values[i] for i in order], rule)
    label = labels[order[0]]
    if (
        rejection_score is not None
        and rejection_threshold is not None
        and rejection_score > rejection_threshold
    ):
        label, reason = UNKNOWN, UNKNOWN
    return Prediction(
        label=label,
        confidence=float(values[order[0]]),
        probabilities={name: float(p) for name, p in zip(labels, values, strict=True)},
        top_k=[(labels[i], float(values[i])) for i in order[:top_k]],
        uncertain=reason is not None,
        margin=margin,
        reason=reason,
        rejection_score=None if rejection_score is None else float(rejection_score),
    )


def uncertainty_rule(
    bundle: Bundle, min_confidence: float | None = None, min_margin: float | None = None
) -> Uncertainty:
    """The bundle's rule (from its calibration data, or the default), with command-line overrides."""
    rule = bundle.manifest.uncertainty
    for name, value in (("min_confidence", min_confidence), ("min_margin", min_margin)):
        if value is not None and not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1, not {value}")
    if min_confidence is None and min_margin is None:
        return rule
    return rule.replace(
        min_confidence=rule.min_confidence if min_confidence is None else float(min_confidence),
        min_margin=rule.min_margin if min_margin is None else float(min_margin),
        source="command line",
    )


class Classifier:
    """A bundle, its backend, its preprocessing and its uncertainty rule, built once.

    `lab` is the preprocessing's LAB strategy (edge.preprocess.CVTCOLOR unless a per-frame pipeline
    built edge.labtables at start-up); it changes the time, never the bytes.
    """

    def __init__(
        self,
        bundle: Bundle,
        backend: InferenceBackend | None = None,
        uncertainty: Uncertainty | None = None,
        top_k: int = 3,
        lab=None,
    ):
        bundle.require_task(
            "classifier", " (detector bundles go to edge detect --detector or edge eval-detector)"
        )
        self.bundle = bundle
        self.backend = backend or open_backend(bundle)
        self.spec = bundle.preprocess_spec
        self.labels = bundle.labels
        self.uncertainty = uncertainty or bundle.manifest.uncertainty
        self.top_k = top_k
        self.lab = lab
        rejection = bundle.manifest.rejection
        if (
            rejection and not self.backend.has_embedding
        ):  # never classify without the rejection it was built with
            raise BundleError(
                f"{bundle.path}: this bundle labels cells unlike its training data unknown from the model's "
                f"embedding output, which the {self.backend.name} backend's model does not give; use a backend "
                "whose model has it (cpu, edgetpu) or export it again"
            )
        self.rejection = (
            MahalanobisScorer.load(bundle.path / rejection.file, bundle.read(rejection.file))
            if rejection
            else None
        )
        self.rejection_threshold = rejection.threshold if rejection else None

    @classmethod
    def open(
        cls,
        bundle: Bundle,
        backend_name: str = "cpu",
        uncertainty: Uncertainty | None = None,
        top_k: int = 3,
        lab=None,
        **backend_options,
    ) -> Classifier:
        """Open the named backend ("cpu", "edgetpu") with its options (runtime, threads, device, ...)."""
        return cls(bundle, open_backend(bundle, backend_name, **backend_options), uncertainty, top_k, lab)

    def preprocess(self, frame: np.ndarray, order: str = "BGR", view: View = WHOLE_IMAGE) -> np.ndarray:
        return preprocess(frame, self.spec, order, lab=self.lab, view=view)

    def _predictions(self, probs: np.ndarray) -> list[Prediction]:
        """Scores (and the embedding, for rejection) of the batch the backend just ran."""
        embedding = self.backend.embedding() if self.rejection is not None else None
        if embedding is None:
            return [to_prediction(p, self.labels, self.uncertainty, self.top_k) for p in probs]
        scores = self.rejection.scores(embedding)
        return [
            to_prediction(p, self.labels, self.uncertainty, self.top_k, float(s), self.rejection_threshold)
            for p, s in zip(probs, scores, strict=True)
        ]

    def classify_tensors(self, batch: np.ndarray) -> list[Prediction]:
        """uint8 N x H x W x 3, already preprocessed -> one Prediction each (with invoke time)."""
        t0 = time.perf_counter()
        probs = self.backend.run(batch)
        invoke_ms = (time.perf_counter() - t0) * 1000 / max(1, len(batch))
        preds = self._predictions(probs)
        for p in preds:
            p.timings_ms["invoke"] = invoke_ms
        return preds

    def classify_images(
        self, images: list[np.ndarray], order: str = "BGR", views: list[View] | None = None
    ) -> tuple[list[Prediction], dict[str, float]]:
        """Raw crops or frames (any size, BGR by default; version 2 cuts each at its `views` entry)
        -> predictions, and the time of each stage for the whole batch: preprocess (including the
        copy into the model's input), invoke, postprocess (reading and dequantizing the scores, label,
        top-k, uncertain flag)."""
        t0 = time.perf_counter()
        views = views or [WHOLE_IMAGE] * len(images)
        tensors = [self.preprocess(f, order, v) for f, v in zip(images, views, strict=True)]
        self.backend.set_input(tensors[0][None] if len(tensors) == 1 else np.stack(tensors))
        t1 = time.perf_counter()
        self.backend.invoke()
        t2 = time.perf_counter()
        preds = self._predictions(self.backend.scores())
        t3 = time.perf_counter()
        return preds, {
            "preprocess": (t1 - t0) * 1000,
            "invoke": (t2 - t1) * 1000,
            "postprocess": (t3 - t2) * 1000,
        }
