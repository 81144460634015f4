"""Reject what the model does not know: a feature-space score on the device for every cell.

The model's second output is an embedding of the cell. The score is the Mahalanobis distance from
that embedding to the nearest class mean under one covariance shared by all classes (Lee et al.,
"A simple unified framework for detecting out-of-distribution samples", NeurIPS 2018), optionally
after a linear projection. Feature-space scores like this beat softmax confidence in published
medical benchmarks: a cell from a lab or a class the model never saw can still get a confident
softmax, but its embedding lies far from every class seen in training.

Everything it needs is in the bundle: the statistics in an .npz listed (and hashed) in the manifest,
and the threshold in `manifest.rejection`, set at quantization on held-out training-distribution cells.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edge.errors import BundleError


@dataclass(frozen=True)
class MahalanobisScorer:
    means: np.ndarray  # K x D centres (after the projection): the class means, and any added by edge adapt
    precision: np.ndarray  # D x D inverse of the shared covariance
    projection: np.ndarray | None = None  # E x D, applied to (embedding - center)
    center: np.ndarray | None = None  # E

    @classmethod
    def fit(
        cls,
        embeddings: np.ndarray,
        y: np.ndarray,
        n_classes: int,
        shrinkage: float = 0.01,
        dims: int | None = None,
    ) -> MahalanobisScorer:
        """Class means and a shared, slightly shrunk covariance from labelled training embeddings;
        with `dims`, a PCA projection to that many dimensions first (the covariance of a few hundred
        cells per class is poorly estimated in high dimensions)."""
        x = np.asarray(embeddings, np.float64)
        center = projection = None
        if dims is not None and dims < x.shape[1]:
            center = x.mean(0)
            _, _, vt = np.linalg.svd(x - center, full_matrices=False)
            projection = vt[:dims].T
            x = (x - center) @ projection
        means = np.stack([x[y == c].mean(0) for c in range(n_classes)])
        residual = x - means[y]
        cov = residual.T @ residual / max(1, len(x) - n_classes)
        cov += shrinkage * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
        return cls(
            means.astype(np.float32),
            np.linalg.inv(cov).astype(np.float32),
            None if projection is None else projection.astype(np.float32),
            None if center is None else center.astype(np.float32),
        )

    def _project(self, embeddings: np.ndarray) -> np.ndarray:
        x = np.asarray(embeddings, np.float32)
        return x if self.projection is None else (x - self.center) @ self.projection

    def with_centres(self, embeddings: np.ndarray, y: np.ndarray) -> MahalanobisScorer:
        """The same score with each class mean of (embeddings, y) added as a centre: a site's own
        cells (edge adapt) become known without moving the training cells' centres."""
        x = self._project(embeddings)
        added = np.stack([x[y == c].mean(0) for c in np.unique(y)]).astype(np.float32)
        return replace(self, means=np.concatenate([self.means, added]))

    def left_out_scores(self, embeddings: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Each cell's distance to the mean of the *other* cells of its class (classes of 2 or more):
        how far a new cell of that class would score from the centre `with_centres` adds."""
        x = self._project(embeddings).astype(np.float64)
        out = []
        for c in np.unique(y):
            members = x[y == c]
            if len(members) < 2:
                continue
            others = (members.sum(0) - members) / (len(members) - 1)
            diff = members - others
            out.append(np.einsum("nd,de,ne->n", diff, self.precision.astype(np.float64), diff))
        return np.concatenate(out) if out else np.zeros(0)

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """N x E embeddings -> N distances (squared Mahalanobis to the nearest centre)."""
        x = self._project(embeddings)
        diff = x[:, None, :] - self.means[None]  # N x C x D
        return np.einsum("ncd,de,nce->nc", diff, self.precision, diff).min(1)

    def to_bytes(self) -> bytes:
        """The .npz a bundle carries (no pickles: `load` refuses them)."""
        arrays = {"means": self.means, "precision": self.precision}
        if self.projection is not None:
            arrays.update(projection=self.projection, center=self.center)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def load(cls, path: str | os.PathLike, content: bytes | None = None) -> MahalanobisScorer:
        """From the .npz at `path`, or from its `content` (a bundle's verified bytes; `path` names it)."""
        try:
            with np.load(Path(path) if content is None else io.BytesIO(content), allow_pickle=False) as data:
                return cls(data["means"], data["precision"], data.get("projection"), data.get("center"))
        except (OSError, KeyError, ValueError) as exc:
            raise BundleError(f"{path}: not a rejection statistics file ({exc})") from None
