"""Site calibration, `edge adapt` (issue 13): the last layer re-fitted from a site's labelled cells,
re-quantized in the int8 model, and the result loaded and scored as the device does.

Runs on the committed tests/fixtures/tiny-reject-int8 (a real int8 model with an embedding output):
no TensorFlow needed. The synthetic "site" is drawn with another seed than the fixture's training
cells; the tiny model gets about two thirds of them right.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge import golden
from edge.adapt import split_site
from edge.bundle import Bundle
from edge.head_fit import fit_head
from edge.predict import Classifier
from edge.synthetic import make_dataset
from edge.tflite_edit import logit_range_of, read_head, write_head

REJECT_BUNDLE = Path(__file__).resolve().parent / "fixtures" / "tiny-reject-int8"
TINY_BUNDLE = Path(__file__).resolve().parent / "fixtures" / "tiny-int8"


def edge(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("site") / "scope3", per_class=12, seed=7)


def test_the_last_layer_survives_a_round_trip_through_the_model_file():
    data = (REJECT_BUNDLE / "model.tflite").read_bytes()
    _, head = read_head(data)
    assert head.weights.shape == (5, 16) and head.bias.shape == (5,)
    rng = np.random.default_rng(0)
    w = head.weights + rng.normal(0, 0.05, head.weights.shape)
    b = head.bias + rng.normal(0, 0.05, head.bias.shape)
    lo, hi = logit_range_of(data)
    again = write_head(data, w, b, (lo * 1.5, hi * 1.5))
    _, new = read_head(again)
    step = np.abs(w).max(axis=1 if new.per_channel else None) / 127
    assert np.all(np.abs(new.weights - w) <= np.atleast_1d(step)[:, None] * 0.51 + 1e-9)
    np.testing.assert_allclose(new.bias, b, atol=1e-3)
    assert logit_range_of(again)[1] == pytest.approx(hi * 1.5, rel=0.02)


def test_fit_head_learns_a_site_and_a_strong_pull_keeps_the_bundles_weights():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 30)
    x = rng.normal(0, 1, (90, 8)) + np.eye(3, 8)[y] * 4
    w0, b0 = np.zeros((3, 8)), np.zeros(3)
    w, b = fit_head(x, y, w0, b0, 1e-3)
    assert np.mean((x @ w.T + b).argmax(1) == y) > 0.9
    w_held, b_held = fit_head(x, y, w0 + 1.0, b0, 1e4)
    np.testing.assert_allclose(w_held, w0 + 1.0, atol=0.01)


def test_split_holds_back_part_of_every_class_and_leaves_out_tiny_ones():
    y = np.array([0] * 20 + [1] * 5 + [2] * 2)
    split = split_site(y, ["a", "b", "c"], 0.25, seed=0)
    assert np.bincount(y[split.held], minlength=3).tolist() == [5, 1, 2]
    assert np.bincount(y[split.fit], minlength=3).tolist() == [15, 4, 0]
    assert split.left_out == {"c": 2}
    assert not set(split.fit) & set(split.held)


def test_edge_adapt_writes_a_bundle_that_loads_runs_and_records_the_site(site, tmp_path):
    out = tmp_path / "scope3-int8"
    result = edge("adapt", REJECT_BUNDLE, site, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "held back 15 cells (never fitted)" in result.stdout
    bundle = Bundle.load(out)  # hashes and the sealed contract check out
    record = bundle.manifest.calibration["site_adaptation"]
    assert record["site"]["n"] == 60 and record["fit"]["n"] == 45 and record["held_back"]["n"] == 15
    assert record["from_bundle"]["sha256"] == Bundle.load(REJECT_BUNDLE).sha256
    assert record["command"].startswith("edge adapt ")
    assert record["after"]["accuracy"] >= record["before"]["accuracy"]
    assert bundle.sha256 != Bundle.load(REJECT_BUNDLE).sha256
    assert golden.check(bundle).state == golden.OK  # made again for the re-fitted layer
    names = {m.name for m in bundle.manifest.metrics}
    assert {"site_accuracy_before", "site_accuracy_after"} <= names
    # the device runs it: the held-back cells score as the manifest says
    preds, _ = Classifier.open(bundle, threads=1).classify_images(
        [__import__("cv2").imread(str(p)) for p in sorted(site.rglob("*.jpg"))]
    )
    assert len(preds) == 60
    info = edge("info", out)
    assert info.returncode == 0 and f"adapted     to {site.parent.name}/scope3 (60 cells" in info.stdout
    # the same again on the adapted bundle's own output is refused: never overwrite the source
    again = edge("adapt", out, site, "--out", out)
    assert again.returncode != 0 and "write the new bundle to another folder" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


def test_adapted_cells_are_better_on_the_site_than_before(site, tmp_path):
    """The whole site through `edge eval`, before and after: fitting on three quarters of it must
    help on it (the held-back quarter is in the manifest; this is the eval path)."""
    out = tmp_path / "adapted"
    assert edge("adapt", REJECT_BUNDLE, site, "--out", out, "--holdout", "0.25").returncode == 0
    before, after = tmp_path / "before.json", tmp_path / "after.json"
    for bundle, path in ((REJECT_BUNDLE, before), (out, after)):
        assert edge("eval", bundle, site, "--json", path, "--baseline-images", "0").returncode == 0
    acc = [json.loads(p.read_text())["accuracy"] for p in (before, after)]
    assert acc[1] > acc[0] + 0.1


def test_bad_site_folders_get_one_line_each(site, tmp_path):
    bad = tmp_path / "bad-site"
    shutil.copytree(site, bad)
    (bad / "Monocytes").mkdir()
    (bad / "Monocytes" / "x.jpg").write_bytes((site / "round" / "round_000.jpg").read_bytes())
    (bad / "smudge").mkdir()
    result = edge("adapt", REJECT_BUNDLE, bad, "--out", tmp_path / "o")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 3 and any("Monocytes" in e for e in errors) and any("smudge" in e for e in errors)
    assert "Traceback" not in result.stderr

    shutil.rmtree(bad / "Monocytes")
    shutil.rmtree(bad / "smudge")
    (bad / "round" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    result = edge("adapt", REJECT_BUNDLE, bad, "--out", tmp_path / "o2")
    assert result.returncode == 0, result.stderr
    said = (result.stdout + result.stderr).splitlines()
    assert sum("broken.jpg" in line for line in said) == 1


def test_too_few_cells_and_bundles_without_an_embedding_are_one_line(site, tmp_path):
    few = tmp_path / "few"
    for name in ("round", "lobed"):
        (few / name).mkdir(parents=True)
        for p in sorted((site / name).glob("*.jpg"))[:2]:
            shutil.copy(p, few / name / p.name)
    result = edge("adapt", REJECT_BUNDLE, few, "--out", tmp_path / "o")
    assert result.returncode == 2
    assert "fewer than 3" in result.stderr and "need at least" in result.stderr.splitlines()[-1]
    assert "Traceback" not in result.stderr

    result = edge("adapt", TINY_BUNDLE, site, "--out", tmp_path / "o3")
    assert result.returncode != 0 and "has no embedding output" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_sites_signed_corrections_feed_edge_adapt(tmp_path):
    """issue 16 -> issue 13: the cells a technician reviewed and signed, exported by `edge review
    export`, are the SITE_DIR `edge adapt` takes."""
    from edge.results.reviews import ReviewBook
    from edge.synthetic import CLASSES
    from tests.lab_slides import write_slide

    labels = Bundle.load(REJECT_BUNDLE).labels
    db = tmp_path / "results.db"
    write_slide(db, "SLIDE-7", [("round", 0.5, True)] * 40, labels=labels)  # every cell flagged
    book = ReviewBook(db)
    queue = sorted(book.queue("SLIDE-7", []), key=lambda c: c.id)
    assert len(queue) == 40
    for i, cell in enumerate(queue):  # write_slide draws cell i as CLASSES[i % 5]
        book.review("SLIDE-7", cell.id, CLASSES[i % len(CLASSES)], "A. Tech", [*labels, "unknown"])
    book.sign("SLIDE-7", "A. Tech", [])
    book.close()
    site = tmp_path / "site"
    exported = edge("review", "export", "--db", db, "--out", site)
    assert exported.returncode == 0, exported.stderr
    result = edge("adapt", REJECT_BUNDLE, site, "--out", tmp_path / "scope-int8")
    assert result.returncode == 0, result.stderr
    record = Bundle.load(tmp_path / "scope-int8").manifest.calibration["site_adaptation"]
    assert record["site"]["per_class"] == {name: 8 for name in labels}


@pytest.mark.train
def test_adapt_when_rejection_reads_the_pooled_features_before_a_dense_layer(synthetic_split, tmp_path):
    """The differential bundle's layout: pooled features (the embedding, for rejection) -> dense ReLU
    -> last layer. edge adapt computes the last layer's input from the embedding through the dense
    layer (dequantized) and re-fits only the last layer."""
    import keras

    from convert.quantize import QuantizeRequest, quantize
    from tests.tiny_model import TINY_SPEC, load_folder

    keras.utils.set_random_seed(0)
    x, y, labels = load_folder(synthetic_split / "train")
    inputs = keras.Input((64, 64, 3), name="image")
    h = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    h = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(h)
    h = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D(name="head_pool")(h)
    h = keras.layers.Dense(12, activation="relu", name="head_dense")(h)
    model = keras.Model(inputs, keras.layers.Dense(len(labels), activation="softmax")(h))
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(x.astype("float32"), y, epochs=15, batch_size=16, verbose=0)
    model.save(tmp_path / "m.keras")
    quantize(
        QuantizeRequest(
            source=tmp_path / "m.keras",
            calib_dir=synthetic_split / "train",
            out_dir=tmp_path / "b",
            calib_count=60,
            reject="mahalanobis",
            reject_layer="head_pool",
            reject_holdout=synthetic_split / "val",
        )
    )
    bundle = Bundle.load(tmp_path / "b")
    assert bundle.manifest.embedding.shape == [1, 16] and bundle.preprocess_spec == TINY_SPEC
    _, head = read_head((tmp_path / "b" / "model.tflite").read_bytes(), bundle.manifest.embedding.name)
    assert head.lead is not None and head.weights.shape == (len(labels), 12)
    site = make_dataset(tmp_path / "site", per_class=10, seed=7)
    result = edge("adapt", tmp_path / "b", site, "--out", tmp_path / "adapted")
    assert result.returncode == 0, result.stderr
    record = Bundle.load(tmp_path / "adapted").manifest.calibration["site_adaptation"]
    assert record["fit"]["n"] + record["held_back"]["n"] == 50


def test_the_host_path_without_the_train_extra_is_one_line(site, tmp_path):
    """`edge adapt --host` on a device install: the host calibration is a plugin of the training side
    (pyproject.toml, entry points "edge.adapt"), which says which extra is missing before reading a cell."""
    from importlib.metadata import entry_points

    assert [e.name for e in entry_points(group="edge.adapt")] == ["host"], "pip install -e . again"
    without_tensorflow = (
        "import importlib.util as u, sys\n"
        "real = u.find_spec\n"
        "u.find_spec = lambda name, *a: None if name.split('.')[0] == 'tensorflow' else real(name, *a)\n"
        "from edge.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    args = [REJECT_BUNDLE, site, "--host", "--run", tmp_path / "run", "--out", tmp_path / "o"]
    result = subprocess.run(
        [sys.executable, "-c", without_tensorflow, "adapt", *map(str, args)], capture_output=True, text=True
    )
    assert result.returncode == 4, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: `edge adapt --host` needs the 'train' extra (tensorflow is not installed): pip install '.[train]'"
    ]
    assert not (tmp_path / "o").exists()
