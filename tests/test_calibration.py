"""The calibration package: class-balanced representative set, eval-split guard, fidelity report,
uncertainty thresholds, quantization debugger."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from calibration.fidelity import ClassDelta, FidelityReport, compare, format_fidelity, loss_warning
from calibration.representative import balanced_sample, build_calibration_set
from calibration.thresholds import derive_uncertainty, flag_stats
from edge.bundle import Uncertainty
from edge.dataset import load_labelled, scan_labelled, split_name
from edge.errors import DataError
from edge.preprocess import preprocess_file
from tests.tiny_model import TINY_SPEC

LABELS = ["dense", "granular", "kidney", "lobed", "round"]


def test_balanced_and_deterministic(synthetic_split):
    train = synthetic_split / "train"
    calib = build_calibration_set(train, TINY_SPEC, LABELS, count=50, seed=3)
    assert calib.description["per_class"] == dict.fromkeys(LABELS, 10)
    assert calib.images.dtype == np.uint8 and calib.images.shape == (50, 64, 64, 3)
    again = build_calibration_set(train, TINY_SPEC, LABELS, count=50, seed=3)
    assert again.fingerprint == calib.fingerprint
    other = build_calibration_set(train, TINY_SPEC, LABELS, count=50, seed=4)
    assert other.fingerprint != calib.fingerprint
    assert calib.description["split"] == f"{synthetic_split.name}/train"


def test_more_than_available_takes_every_image(synthetic_split):
    available = scan_labelled(synthetic_split / "train")
    chosen = balanced_sample(available, count=10_000, seed=0)
    assert chosen.counts() == available.counts()


def test_images_are_exactly_edge_preprocess(synthetic_split):
    calib = build_calibration_set(synthetic_split / "train", TINY_SPEC, LABELS, count=10)
    for img, path in zip(calib.images, calib.data.files, strict=True):
        assert np.array_equal(img, preprocess_file(path, TINY_SPEC))
    batch = next(calib.generator()())
    assert batch[0].dtype == np.float32 and batch[0].shape == (1, 64, 64, 3) and batch[0].max() > 1


def test_never_from_the_eval_split(synthetic_split, tmp_path):
    train, val = synthetic_split / "train", synthetic_split / "val"
    with pytest.raises(DataError, match="overlaps the evaluation split"):
        build_calibration_set(val, TINY_SPEC, LABELS, eval_dirs=[val])
    with pytest.raises(DataError, match="overlaps the evaluation split"):
        build_calibration_set(synthetic_split, TINY_SPEC, LABELS, eval_dirs=[val])
    # an exact copy of a training image in the eval folder is dropped from calibration
    ev = tmp_path / "val"
    shutil.copytree(val, ev)
    calib_all = build_calibration_set(train, TINY_SPEC, LABELS, count=10_000)
    dup = calib_all.data.files[0]
    shutil.copy(dup, ev / dup.parent.name / "copied.png")
    calib = build_calibration_set(train, TINY_SPEC, LABELS, count=10_000, eval_dirs=[ev])
    assert calib.description["dropped_eval_duplicates"] == 1
    assert dup not in calib.data.files and len(calib.data) == len(calib_all.data) - 1


def test_fingerprint_follows_content(synthetic_split, tmp_path):
    root = tmp_path / "train"
    shutil.copytree(synthetic_split / "train", root)
    before = load_labelled(root, TINY_SPEC, LABELS).fingerprint
    victim = sorted((root / "round").iterdir())[0]
    victim.write_bytes(sorted((root / "dense").iterdir())[0].read_bytes())
    assert load_labelled(root, TINY_SPEC, LABELS).fingerprint != before


def test_unknown_or_missing_classes(synthetic_split, tmp_path):
    with pytest.raises(DataError, match="match no label"):
        build_calibration_set(synthetic_split / "train", TINY_SPEC, ["dense", "granular"])
    with pytest.raises(DataError, match="calibration needs every class"):
        build_calibration_set(synthetic_split / "train", TINY_SPEC, [*LABELS, "blast"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class subfolders"):
        build_calibration_set(tmp_path / "empty", TINY_SPEC, LABELS)


def test_unreadable_image_is_skipped_and_recorded(synthetic_split, tmp_path):
    root = tmp_path / "train"
    shutil.copytree(synthetic_split / "train", root)
    (root / "dense" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    data = load_labelled(root, TINY_SPEC, LABELS)
    assert len(data.skipped) == 1 and "broken.jpg" in data.skipped[0]
    assert len(data) == 24 * 5


def test_compare_numbers():
    y = np.array([0, 1, 1, 2])
    float_p = np.eye(3)[[0, 1, 1, 2]].astype(np.float32)
    quant_p = np.eye(3)[[0, 1, 2, 2]].astype(np.float32)
    r = compare(float_p, quant_p, y, ["a", "b", "c"], "x/val", threshold_pp=1.0)
    assert (r.float_accuracy, r.quant_accuracy, r.agreement) == (1.0, 0.75, 0.75)
    assert r.mean_abs_prob_diff == pytest.approx(2 / 12)
    assert [(c.label, c.n, c.delta_pp) for c in r.per_class] == [
        ("a", 1, 0.0),
        ("b", 2, -50.0),
        ("c", 1, 0.0),
    ]
    assert r.loss_pp == pytest.approx(25.0) and r.exceeds_threshold
    warning = loss_warning(r)
    assert "WARNING" in warning and "25.00 pp" in warning and "--calib-count" in warning
    assert "b" in format_fidelity(r)


def test_no_warning_within_threshold():
    r = FidelityReport(
        "x/val", 100, "int8", 0.99, 0.985, 0.99, 0.01, [ClassDelta("a", 100, 0.99, 0.985)], 1.0
    )
    assert loss_warning(r) is None
    r.threshold_pp = 0.3
    assert loss_warning(r) is not None


def test_uncertainty_thresholds():
    rng = np.random.default_rng(0)
    confident = np.full((200, 5), 0.01, np.float32)
    confident[:, 0] = 0.96
    rule = derive_uncertainty(confident, "x/train")
    assert rule.min_confidence == pytest.approx(0.95)  # clamped at the top
    assert rule.min_margin == pytest.approx(0.9)
    assert "calibration images (x/train)" in rule.source
    vague = rng.dirichlet(np.ones(5), size=200).astype(np.float32)
    loose = derive_uncertainty(vague, "x/train")
    assert loose.min_confidence == 0.5 and loose.min_margin >= 0.1
    y = np.zeros(200, int)
    stats = flag_stats(confident, y, Uncertainty(min_confidence=0.97, min_margin=0.2))
    assert stats["flagged_fraction"] == 1.0 and np.isnan(stats["accuracy_unflagged"])


def test_split_name(tmp_path):
    assert split_name(tmp_path / "blood-5class" / "val") == "blood-5class/val"


@pytest.mark.train
def test_float_vs_int8_on_tiny_model(tiny_float, synthetic_split):
    import keras

    from calibration.fidelity import keras_probs, tflite_probs, worst_layers
    from convert.tflite_export import make_converter

    model = keras.models.load_model(tiny_float / "float.keras", compile=False)
    ev = load_labelled(synthetic_split / "val", TINY_SPEC, LABELS)
    float_p = keras_probs(model, ev.images)
    quant_p = tflite_probs((tiny_float / "model.tflite").read_bytes(), ev.images)
    r = compare(float_p, quant_p, ev.y, LABELS, ev.split)
    assert r.n == 40 and sum(c.n for c in r.per_class) == 40
    assert r.agreement >= 0.9 and r.mean_abs_prob_diff < 0.05
    calib = build_calibration_set(synthetic_split / "train", TINY_SPEC, LABELS, count=40)
    layers = worst_layers(make_converter(model, "int8", calib.generator()), calib.images, top=3, max_images=8)
    assert 0 < len(layers) <= 3
    assert [x.rmse_over_scale for x in layers] == sorted((x.rmse_over_scale for x in layers), reverse=True)


@pytest.mark.train
def test_bias_correction_measures_and_leaves_the_original_alone(tiny_float, synthetic_split):
    import keras

    from convert.bias_correction import corrected_copy, measure

    model = keras.models.load_model(tiny_float / "float.keras", compile=False)
    before = [w.copy() for w in model.get_weights()]
    calib = build_calibration_set(synthetic_split / "train", TINY_SPEC, LABELS, count=40)
    correction = measure(model, calib.images)
    assert len(correction.shift) == 5 and correction.n == 40
    fixed = corrected_copy(model, correction)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    assert np.allclose(
        fixed.layers[-1].get_weights()[1], before[-1] - np.asarray(correction.shift, np.float32)
    )
    assert correction.to_dict()["layer"] == model.layers[-1].name
