"""Gated bundles and the cells of two microscopes, for the site tests (tests/test_site.py,
tests/test_figures.py).

A gate is part of the sealed contract (edge/contract.py): a gated copy is re-sealed through
edge.bundle.write_bundle, with limits set as quantization sets them (edge.site.gate_limits on the
rejection scores of held-out cells the bundle knows). The second "microscope" is the same synthetic
cells under another stain (a part of the red and blue channels swapped): the tiny model still names
most of them, but their rejection scores rise as a real new microscope's do.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge.bundle import Bundle, write_bundle
from edge.manifest import Gate
from edge.predict import Classifier
from edge.site import gate_limits
from edge.synthetic import CLASSES, render_cell

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REJECT_BUNDLE = FIXTURES / "tiny-reject-int8"
OTHER_STAIN = 0.4  # how much of the swapped channels the other microscope's cells carry


def cells(n: int, seed: int, stain: float = 0.0) -> list[np.ndarray]:
    """`n` synthetic white cells, the classes in turn; `stain` > 0: another microscope's."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        image = render_cell(CLASSES[i % len(CLASSES)], rng, 128)
        if stain:
            image = cv2.addWeighted(image, 1 - stain, image[:, :, ::-1].copy(), stain, 0)
        out.append(image)
    return out


def write_cells(folder: Path, images: list[np.ndarray]) -> Path:
    """One PNG per cell, in order (a replay or a hot folder reads them sorted)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        cv2.imwrite(str(folder / f"{i:04d}.png"), image)
    return folder


def rejection_scores(bundle: Path, images: list[np.ndarray]) -> np.ndarray:
    predictions, _ = Classifier.open(Bundle.load(bundle), threads=1).classify_images(images)
    return np.array([p.rejection_score for p in predictions], np.float64)


def gated_copy(source: Path, out: Path, gate: Gate) -> Path:
    """`source` with `gate` in its manifest, sealed again into its model (write_bundle)."""
    bundle = Bundle.load(source)
    manifest = bundle.manifest.model_copy(deep=True)
    manifest.gate = gate
    write_bundle(out, {name: (source / name).read_bytes() for name in manifest.files}, manifest)
    return out


def gate_from(bundle: Path, images: list[np.ndarray], reference: str) -> Gate:
    """The gate quantization would set on these held-out cells the bundle knows."""
    return gate_limits(rejection_scores(bundle, images), reference)


def tiny_gated(out: Path) -> Path:
    """tests/fixtures/tiny-reject-int8 with a gate set on 200 held-out synthetic cells (a seed of its own)."""
    gate = gate_from(REJECT_BUNDLE, cells(200, seed=21), "200 held-out synthetic cells (seed 21)")
    return gated_copy(REJECT_BUNDLE, out, gate)


# The tiny model's labels have no blast: "dense" stands in for one (an alert class, archived, first
# in the review queue); the rule fires at 20 % of 10 cells, so it fires on the known microscope
# (the tiny model is sure of a third of its cells there being dense).
TINY_CONFIG = """
[archive]
alert_classes = ["dense"]
min_free_mb = 0

[[differential.alerts]]
name = "dense fraction"
classes = ["dense"]
min_fraction = 0.2
min_cells = 10
"""
