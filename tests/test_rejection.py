"""Rejection: cells unlike the training data are labelled "unknown" on the device (issue 13).

Runs on the committed tests/fixtures/tiny-reject-int8 (the tiny synthetic-cell model through
`edge quantize --reject mahalanobis`): no TensorFlow needed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.bundle import Bundle
from edge.errors import BundleError
from edge.predict import UNKNOWN, Classifier
from edge.rejection import MahalanobisScorer
from edge.synthetic import make_dataset

REJECT_BUNDLE = Path(__file__).resolve().parent / "fixtures" / "tiny-reject-int8"


def test_mahalanobis_scores_grow_away_from_every_class_and_survive_a_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    means = np.array([[0.0, 0.0, 0.0, 0.0], [6.0, 0.0, 0.0, 0.0], [0.0, 6.0, 0.0, 0.0]])
    y = np.repeat(np.arange(3), 200)
    x = means[y] + rng.normal(0, 1, (600, 4))
    scorer = MahalanobisScorer.fit(x, y, 3)
    near = scorer.scores(means + rng.normal(0, 0.1, means.shape))
    far = scorer.scores(np.array([[20.0, 20.0, 0.0, 0.0], [0.0, 0.0, 9.0, 0.0]]))
    assert near.max() < 1.0 < 40.0 < far.min()
    # a chi-square with 4 degrees of freedom: about 95 % of in-distribution points below 9.5
    assert 0.9 < np.mean(scorer.scores(x) < 9.5) < 0.99
    path = tmp_path / "r.npz"
    path.write_bytes(scorer.to_bytes())
    again = MahalanobisScorer.load(path)
    np.testing.assert_allclose(again.scores(x[:10]), scorer.scores(x[:10]), rtol=1e-5)
    projected = MahalanobisScorer.fit(x, y, 3, dims=2)
    assert projected.projection.shape == (4, 2) and projected.scores(x[:5]).shape == (5,)
    path.write_bytes(b"not an npz")
    with pytest.raises(BundleError, match="not a rejection statistics file"):
        MahalanobisScorer.load(path)


def _debris(rng, n=6) -> list[np.ndarray]:
    """What is not one of the synthetic white cells: flat fields, noise, stripes (the real model is
    tested on red cells and background cut from real frames in the realdata tests)."""
    makers = [
        lambda: np.full((128, 128, 3), int(rng.integers(0, 256)), np.uint8),
        lambda: rng.integers(0, 256, (128, 128, 3), dtype=np.uint8),
        lambda: np.repeat(np.repeat((np.indices((8, 8)).sum(0) % 2 * 255).astype(np.uint8), 16, 0), 16, 1)[
            ..., None
        ].repeat(3, 2),
    ]
    return [makers[i % len(makers)]() for i in range(n)]


def test_cells_it_knows_are_accepted_and_debris_is_unknown(synthetic_split):
    bundle = Bundle.load(REJECT_BUNDLE)
    assert bundle.manifest.rejection.method == "mahalanobis" and bundle.manifest.embedding.shape == [1, 16]
    classifier = Classifier.open(bundle, threads=1)
    cells = [cv2.imread(str(p)) for p in sorted((synthetic_split / "val").rglob("*.jpg"))]
    preds, _ = classifier.classify_images(cells)
    assert np.mean([p.label != UNKNOWN for p in preds]) >= 0.9
    debris, _ = classifier.classify_images(_debris(np.random.default_rng(1)))
    unknown = [p for p in debris if p.label == UNKNOWN]
    assert len(unknown) >= 5
    for p in unknown:  # flagged, with the reason, the score, and the best classes kept
        assert p.uncertain and p.reason == UNKNOWN and p.rejection_score > bundle.manifest.rejection.threshold
        assert p.top_k and all(name in bundle.labels for name, _ in p.top_k)


def test_classify_json_says_unknown_with_the_reason(tmp_path):
    folder = tmp_path / "debris"
    folder.mkdir()
    for i, img in enumerate(_debris(np.random.default_rng(2), 4)):
        cv2.imwrite(str(folder / f"d{i}.png"), img)
    proc = subprocess.run(
        [sys.executable, "-m", "edge.cli", "classify", str(REJECT_BUNDLE), str(folder), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    rejected = [r for r in records if r["label"] == UNKNOWN]
    assert len(rejected) >= 3
    assert all(
        r["uncertain"] and r["reason"] == UNKNOWN and "rejection_score" in r and r["top_k"] for r in rejected
    )


def test_eval_on_a_class_the_bundle_never_saw_reports_its_rejection(tmp_path):
    # The tiny model knows 5 synthetic classes; "debris" is a sixth it should reject.
    root = make_dataset(tmp_path / "site", per_class=6, seed=7)
    (root / "debris").mkdir()
    for i, img in enumerate(_debris(np.random.default_rng(3), 6)):
        cv2.imwrite(str(root / "debris" / f"d{i}.png"), img)
    out = tmp_path / "site.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge.cli",
            "eval",
            str(REJECT_BUNDLE),
            str(root),
            "--json",
            str(out),
            "--baseline-images",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["should_be_rejected"]["folders"]["debris"]["rejected_fraction"] >= 5 / 6
    assert report["n"] == 30 and 0 <= report["rejected_fraction"] <= 0.2


def test_a_tampered_rejection_file_is_refused(tmp_path):
    copy = shutil.copytree(REJECT_BUNDLE, tmp_path / "b")
    with open(copy / "rejection.npz", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match="sha256 mismatch"):
        Bundle.load(copy)
