"""`edge quantize` end to end on a real (tiny) Keras model and real TF conversion, and the committed
reference bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge import golden
from edge.bundle import Bundle
from edge.cli import main
from tests.tiny_model import TINY_SPEC

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "models" / "mobilenetv2-int8"


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


@pytest.fixture(scope="module")
def int8_bundle(tiny_float, synthetic_split, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "int8"
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "quantize",
                str(tiny_float / "float.keras"),
                "--calib",
                str(synthetic_split / "train"),
                "--eval",
                str(synthetic_split / "val"),
                "--out",
                str(out),
                "--calib-count",
                "60",
            ]
        )
    assert exit_info.value.code == 0
    return out


@pytest.mark.train
def test_int8_bundle_records_everything(int8_bundle, synthetic_split):
    bundle = Bundle.load(int8_bundle)
    m = bundle.manifest
    assert (m.input.dtype, m.input.shape, m.output.dtype) == ("uint8", [1, 64, 64, 3], "uint8")
    assert m.labels == sorted(p.name for p in (synthetic_split / "train").iterdir())
    split = f"{synthetic_split.name}/val"
    for name in ("accuracy", "float_accuracy", "top1_agreement", "mean_abs_prob_diff", "macro_f1"):
        metric = m.metric(name, split)
        assert metric is not None and metric.n == 40 and metric.command.startswith("edge quantize ")
    assert 0 <= m.metric("accuracy").value <= 1 and m.metric("top1_agreement").value >= 0.9
    q = m.model["quantization"]
    assert q["supported_ops"] == "TFLITE_BUILTINS_INT8" and q["inference_input_type"] == "uint8"
    assert q["per_op_weights"]["CONV_2D"] == "per-channel"
    assert q["input_scale"] == m.input.scale and m.model["precision"] == "int8"
    cal = m.calibration
    assert cal["split"] == f"{synthetic_split.name}/train" and cal["count"] == 60
    assert len(cal["fingerprint"]) == 64 and cal["fidelity"]["per_class"]
    assert m.uncertainty.source.startswith("quantized model on the 60 calibration images")
    assert 0.5 <= m.uncertainty.min_confidence <= 0.95
    assert golden.check(bundle).state == golden.OK and m.golden.file in m.files  # the device's check


@pytest.mark.train
def test_int8_bundle_on_the_device_runtime_matches_the_manifest(int8_bundle, tiny_float, synthetic_split):
    import keras

    from edge.dataset import load_labelled
    from edge.runtime import open_backend

    bundle = Bundle.load(int8_bundle)
    ev = load_labelled(synthetic_split / "val", TINY_SPEC, bundle.labels)
    quant_top = open_backend(bundle).run(ev.images).argmax(1)
    model = keras.models.load_model(tiny_float / "float.keras", compile=False)
    float_top = np.asarray(model(ev.images.astype(np.float32))).argmax(1)
    m = bundle.manifest
    assert np.mean(quant_top == float_top) == pytest.approx(m.metric("top1_agreement").value)
    assert np.mean(quant_top == ev.y) == pytest.approx(m.metric("accuracy").value)


@pytest.mark.train
def test_int8_bundle_passes_edgetpu_preflight(int8_bundle, capsys):
    code, out, _ = _run(["compile", str(int8_bundle), "--preflight"], capsys)
    assert code == 0 and "pre-flight: all" in out


@pytest.mark.train
def test_float16_bundle(tiny_float, synthetic_split, tmp_path, capsys):
    from edge.predict import Classifier

    out = tmp_path / "f16"
    code, stdout, err = _run(
        [
            "quantize",
            str(tiny_float / "float.keras"),
            "--calib",
            str(synthetic_split / "train"),
            "--eval",
            str(synthetic_split / "val"),
            "--out",
            str(out),
            "--precision",
            "float16",
            "--calib-count",
            "20",
        ],
        capsys,
    )
    assert code == 0, err
    bundle = Bundle.load(out)
    assert bundle.manifest.model["precision"] == "float16" and bundle.manifest.input.dtype == "float32"
    assert bundle.manifest.metric("top1_agreement").value == 1.0
    assert bundle.manifest.metric("mean_abs_prob_diff").value < 1e-2
    image = np.zeros((64, 64, 3), np.uint8)
    assert Classifier(bundle).classify_tensors(image[None])[0].label in bundle.labels
    assert golden.check(bundle).state == golden.OK  # float outputs, in steps of 1/256
    code, _, _ = _run(["compile", str(out), "--preflight"], capsys)
    assert code == 8  # float16 never maps to the Edge TPU


@pytest.mark.train
def test_adapt_head_trains_only_the_head_and_records_both_float_models(
    tiny_float, synthetic_split, tmp_path, capsys
):
    import keras

    from convert.head_adaptation import adapt, split_at_features
    from tests.tiny_model import load_folder

    model = keras.saving.load_model(tiny_float / "float.keras", compile=False)
    images, y, _ = load_folder(synthetic_split / "train")
    adapted, record = adapt(model, images[:20], images, y, "synthetic/train")
    _, feature, head = split_at_features(model)
    for layer in model.layers:  # backbone identical, head changed, original untouched
        pairs = zip(layer.get_weights(), adapted.get_layer(layer.name).get_weights(), strict=True)
        same = all(np.array_equal(a, b) for a, b in pairs)
        assert same == (layer not in head or not layer.weights), layer.name
    assert record.feature_layer == feature.name and record.n_images == len(images)
    assert record.trained_layers == [layer.name for layer in head if layer.weights]

    out = tmp_path / "adapted"
    code, stdout, err = _run(
        [
            "quantize",
            str(tiny_float / "float.keras"),
            "--calib",
            str(synthetic_split / "train"),
            "--eval",
            str(synthetic_split / "val"),
            "--out",
            str(out),
            "--calib-count",
            "20",
            "--adapt-head",
        ],
        capsys,
    )
    assert code == 0, err
    manifest = Bundle.load(out).manifest
    assert manifest.model["quantization"]["head_adaptation"]["split"].endswith("train")
    assert "--adapt-head" in manifest.metric("accuracy").command
    assert manifest.metric("trained_float_accuracy") is not None
    assert manifest.metric("top1_agreement_with_trained_float") is not None
    assert "before adaptation" in stdout


@pytest.mark.train
def test_run_dir_labels_and_spec_come_from_the_run(tiny_float, synthetic_split, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_float / "float.keras", run / "model.keras")
    labels = sorted(p.name for p in (synthetic_split / "train").iterdir())
    spec = {**TINY_SPEC.to_dict(), "clahe_clip_limit": 3.0}
    (run / "config.json").write_text(
        json.dumps({"arch": "tiny-cnn", "weights": "none", "img_size": 64, "preprocess": spec})
    )
    (run / "report.json").write_text(
        json.dumps({"labels": labels, "data": {"fingerprint": {"train": "f" * 64}}})
    )
    code, out, err = _run(
        [
            "quantize",
            str(run),
            "--calib",
            str(synthetic_split / "train"),
            "--out",
            str(tmp_path / "b"),
            "--calib-count",
            "20",
        ],
        capsys,
    )
    assert code == 0, err
    # only what the user can act on: no Keras export listing, no TensorFlow log lines (issue 15, 9b)
    for noise in ("TensorSpec(", "cuInit", "absl::InitializeLog", "Created TensorFlow Lite XNNPACK"):
        assert noise not in out + err, noise
    m = Bundle.load(tmp_path / "b").manifest
    assert m.preprocess.clahe_clip_limit == 3.0 and m.labels == labels
    assert m.model["architecture"] == "tiny-cnn" and m.model["weights"] == "none"
    assert m.training["data_fingerprint"] == {"train": "f" * 64}
    assert m.metrics == []  # no --eval: nothing measured, nothing claimed
    code, out, err = _run(["info", str(tmp_path / "b")], capsys)  # a fingerprint per split
    assert code == 0 and "fingerprint train ffffffffffffffff" in out, err


@pytest.mark.train
def test_several_sources_calibrate_and_evaluate_with_the_runs_class_map(
    tiny_float, synthetic_split, tmp_path, capsys
):
    """A model trained on two labs is quantized on both: --calib and --eval repeat, and the run's
    --map aliases (a folder called otherwise in the second lab) apply without being given again."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_float / "float.keras", run / "model.keras")
    labels = sorted(p.name for p in (synthetic_split / "train").iterdir())
    (run / "config.json").write_text(
        json.dumps(
            {
                "train": {"class_map": ["circle=round"]},
                "arch": "tiny-cnn",
                "preprocess": TINY_SPEC.to_dict(),
                "labels": labels,
            }
        )
    )
    lab_b = tmp_path / "lab-b"
    for name in labels:
        shutil.copytree(
            synthetic_split / "val" / name, lab_b / "train" / ("circle" if name == "round" else name)
        )
    val_b = tmp_path / "val-b"
    shutil.copytree(synthetic_split / "val" / "round", val_b / "circle")
    code, out, err = _run(
        [
            "quantize",
            str(run),
            "--calib",
            str(synthetic_split / "train"),
            "--calib",
            str(lab_b / "train"),
            "--eval",
            str(val_b),
            "--out",
            str(tmp_path / "b"),
            "--calib-count",
            "40",
        ],
        capsys,
    )
    assert code == 0, err
    m = Bundle.load(tmp_path / "b").manifest
    assert m.calibration["source"] == [str(synthetic_split / "train"), str(lab_b / "train")]
    assert m.calibration["class_map"] == ["circle=round"]
    # lab b's round cells are the --eval cells: the two of them sampled are dropped from calibration
    assert m.calibration["dropped_eval_duplicates"] == 2 and m.calibration["count"] == 38
    assert m.calibration["per_class"]["round"] == 6
    assert "--calib" in m.calibration["command"] and "--map circle=round" in m.calibration["command"]
    accuracy = m.metric("accuracy")
    assert accuracy.n == 8 and accuracy.split.endswith("val-b")


@pytest.mark.train
def test_bad_inputs_are_one_line(tiny_float, synthetic_split, tmp_path, capsys):
    val = synthetic_split / "val"
    code, _, err = _run(
        [
            "quantize",
            str(tiny_float / "float.keras"),
            "--calib",
            str(val),
            "--eval",
            str(val),
            "--out",
            str(tmp_path / "x"),
        ],
        capsys,
    )
    assert code == 2 and len(err.strip().splitlines()) == 1 and "overlaps the evaluation split" in err
    (tmp_path / "notamodel.keras").write_text("nope")
    code, _, err = _run(
        [
            "quantize",
            str(tmp_path / "notamodel.keras"),
            "--calib",
            str(synthetic_split / "train"),
            "--out",
            str(tmp_path / "y"),
        ],
        capsys,
    )
    assert code == 2 and "cannot load as a Keras model" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.skipif(not REFERENCE.exists(), reason="models/mobilenetv2-int8 not produced yet")
def test_reference_bundle_meets_acceptance():
    m = Bundle.load(REFERENCE).manifest
    assert (m.input.dtype, m.input.shape) == ("uint8", [1, 224, 224, 3])
    split = "blood-5class/val"
    accuracy, float_acc = m.metric("accuracy", split), m.metric("float_accuracy", split)
    assert accuracy.value >= 0.99 and accuracy.n == 1000
    assert (float_acc.value - accuracy.value) * 100 <= 0.3 + 1e-9
    assert m.calibration["split"] == "blood-5class/train"
    from convert.edgetpu import preflight

    assert preflight((REFERENCE / "model.tflite").read_bytes()).fully_mappable


@pytest.mark.skipif(not REFERENCE.exists(), reason="models/mobilenetv2-int8 not produced yet")
def test_reference_bundle_top1_agreement():
    # The bar, met with --adapt-head; the trained model's own numbers are recorded beside it.
    m = Bundle.load(REFERENCE).manifest
    assert m.metric("top1_agreement", "blood-5class/val").value >= 0.995
    assert "--adapt-head" in m.metric("top1_agreement", "blood-5class/val").command
    assert m.metric("trained_float_accuracy", "blood-5class/val") is not None


B0 = ROOT / "models" / "efficientnetb0-int8"


@pytest.mark.skipif(not (B0 / "manifest.json").exists(), reason="no EfficientNetB0 bundle committed")
def test_committed_b0_bundle_is_within_the_commit_threshold():
    # A B0 bundle is committed only if int8 is within 1 pp of its float model (see its MODEL_CARD.md).
    from convert.edgetpu import preflight

    m = Bundle.load(B0).manifest
    split = "blood-5class/val"
    assert m.model["architecture"] == "efficientnetb0" and m.input.dtype == "uint8"
    assert (m.metric("float_accuracy", split).value - m.metric("accuracy", split).value) * 100 <= 1.0
    assert preflight((B0 / "model.tflite").read_bytes()).fully_mappable


@pytest.mark.realdata
@pytest.mark.skipif(not REFERENCE.exists(), reason="models/mobilenetv2-int8 not produced yet")
def test_reference_bundle_reproduces_its_val_accuracy_on_device_path(realdata):
    """The device path (edge.preprocess + LiteRT) gives exactly the accuracy the manifest claims."""
    from edge.dataset import load_labelled
    from edge.runtime import open_backend

    bundle = Bundle.load(REFERENCE)
    ev = load_labelled(realdata / "blood-5class" / "val", bundle.preprocess_spec, bundle.labels)
    backend = open_backend(bundle)
    probs = np.concatenate([backend.run(ev.images[i : i + 32]) for i in range(0, len(ev), 32)])
    accuracy = float((probs.argmax(1) == ev.y).mean())
    assert accuracy == pytest.approx(bundle.manifest.metric("accuracy", "blood-5class/val").value, abs=1e-6)


@pytest.mark.train
def test_a_model_whose_flag_catches_no_error_is_warned_about_loudly(synthetic_split, tmp_path, capsys):
    # Issue 15, defect 9: a weak model got thresholds at their floor and flagged 0 % of cells without
    # a word. This one answers "dense" for every cell, confidently: 80 % wrong, nothing flagged.
    from tests.tiny_model import build_tiny_keras

    model = build_tiny_keras(5)
    kernel, bias = model.layers[-1].get_weights()
    model.layers[-1].set_weights([np.zeros_like(kernel), np.array([12.0, 0, 0, 0, 0], np.float32)])
    model.save(tmp_path / "stubborn.keras")
    code, out, err = _run(
        [
            "quantize",
            str(tmp_path / "stubborn.keras"),
            "--calib",
            str(synthetic_split / "train"),
            "--eval",
            str(synthetic_split / "val"),
            "--out",
            str(tmp_path / "q"),
            "--calib-count",
            "40",
        ],
        capsys,
    )
    assert code == 0, err
    assert (
        "WARNING: the uncertainty rule flags 0.0% of cells" in err
        and "catches only 0 of the model's 32 errors" in err
    )
    warning = Bundle.load(tmp_path / "q").manifest.uncertainty.warning
    assert warning and "cannot separate this model's errors" in warning
