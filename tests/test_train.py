"""`edge train` end to end on synthetic images: outputs, rerun from config, k-fold, corrupt files, B0."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from edge.cli import main  # noqa: E402
from edge.preprocess import PreprocessSpec, preprocess_file  # noqa: E402

pytestmark = pytest.mark.train

# Small and quick: 64 px, few epochs; the ported ImageNet weights when installed (offline).
QUICK = ["--img-size", "64", "--epochs", "8", "--fine-tune-epochs", "3", "--views", "2", "--batch-size", "16"]


def _edge(args, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


@pytest.fixture(scope="module")
def run_dir(synthetic_split, tmp_path_factory):
    """One real training run on synthetic_split (train/ + val/), with a corrupt JPEG and a stray file."""
    data = tmp_path_factory.mktemp("data")
    shutil.copytree(synthetic_split / "train", data / "train")
    (data / "train" / "round" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    (data / "train" / "lobed" / "README.txt").write_text("notes")
    out = tmp_path_factory.mktemp("runs") / "mnv2"
    cache = tmp_path_factory.mktemp("cache")
    args = [
        "train",
        str(data / "train"),
        "--val-dir",
        str(synthetic_split / "val"),
        "--out",
        str(out),
        "--cache",
        str(cache),
        *QUICK,
    ]
    with pytest.MonkeyPatch.context() as mp:
        import sys
        from io import StringIO

        buf = StringIO()
        mp.setattr(sys, "stdout", buf)
        with pytest.raises(SystemExit) as exit_info:
            main(args)
    assert exit_info.value.code == 0, buf.getvalue()[-2000:]
    return out, buf.getvalue(), data, cache


def test_run_writes_outputs_and_names_bad_files(run_dir):
    out, log, _, _ = run_dir
    for name in ("model.keras", "config.json", "report.json", "training_curves.png", "confusion_val.png"):
        assert (out / name).is_file(), name
    assert "broken.jpg" in log and "skipped" in log
    assert "README.txt" in log and "ignored" in log
    report = json.loads((out / "report.json").read_text())
    assert [Path(s[0]).name for s in report["data"]["skipped"]] == ["broken.jpg"]
    val = report["splits"]["val"]
    assert val["n"] == 40 and set(val["per_class"]["round"]) >= {"precision", "recall", "f1", "specificity"}
    assert val["accuracy"] >= 0.8, val  # synthetic classes are easy; a broken pipeline is at chance (0.2)
    assert {"loss", "macro_f1", "confusion"} <= set(val)
    assert {r["phase"].split(" ")[1] for r in report["history"]} >= {"1", "2"}
    config = json.loads((out / "config.json").read_text())
    assert config["labels"] == report["labels"] == ["dense", "granular", "kidney", "lobed", "round"]
    assert config["preprocess"] == PreprocessSpec(size=64).to_dict()
    assert len(config["data_fingerprint"]) == 64 and config["weights"]["name"]


def test_saved_model_reproduces_reported_val_accuracy(run_dir, synthetic_split):
    import keras

    out, _, _, _ = run_dir
    report = json.loads((out / "report.json").read_text())
    model = keras.models.load_model(out / "model.keras")
    spec = PreprocessSpec.model_validate(report["preprocess"])
    labels = report["labels"]
    x, y = [], []
    for i, name in enumerate(labels):
        for f in sorted((synthetic_split / "val" / name).iterdir()):
            x.append(preprocess_file(f, spec))
            y.append(i)
    pred = model.predict(np.stack(x).astype("float32"), verbose=0).argmax(1)
    assert np.mean(pred == np.array(y)) == pytest.approx(report["splits"]["val"]["accuracy"])


def test_epochs_one_is_a_one_epoch_run_with_a_plain_log(run_dir, synthetic_split, tmp_path, capsys):
    """`--epochs 1` ran 15 fine-tune epochs, and nested bars left `\\x1b[A` in logs (issue 15)."""
    _, _, data, cache = run_dir
    out = tmp_path / "one"
    args = ["train", str(data / "train"), "--val-dir", str(synthetic_split / "val"), "--out", str(out)]
    args += ["--cache", str(cache), "--img-size", "64", "--epochs", "1", "--views", "2", "--batch-size", "16"]
    args += ["--seed", "1"]  # fresh augmented views, not the module run's cached activations
    code, stdout, stderr = _edge(args, capsys)
    assert code == 0, stderr[-2000:]
    assert "training plan: phase 1 (head) up to 1 epochs, phase 2 (fine-tune) up to 1 epochs" in stdout
    history = json.loads((out / "report.json").read_text())["history"]
    assert sorted(r["phase"].split(" ")[1] for r in history) == ["1", "2"]
    assert json.loads((out / "config.json").read_text())["train"]["fine_tune_epochs"] == 1
    assert "\x1b[" not in stdout + stderr  # captured output is not a terminal: no bars


def test_rerun_from_config(run_dir, tmp_path, capsys):
    out, _, _, _ = run_dir
    again = tmp_path / "again"
    code, stdout, _ = _edge(
        [
            "train",
            "--config",
            str(out / "config.json"),
            "--out",
            str(again),
            "--fine-tune-epochs",
            "0",
            "--epochs",
            "2",
        ],
        capsys,
    )
    assert code == 0
    first = json.loads((out / "config.json").read_text())["train"]
    second = json.loads((again / "config.json").read_text())["train"]
    changed = ("out", "fine_tune_epochs", "epochs")
    assert second["fine_tune_epochs"] == 0 and second["epochs"] == 2 and second["out"] == str(again)
    assert {k: v for k, v in first.items() if k not in changed} == {
        k: v for k, v in second.items() if k not in changed
    }
    # preprocessed images and activations came from the cache the first run filled
    assert "activations read from cache" in stdout


def test_kfold_reports_mean_and_std(synthetic_split, tmp_path, capsys):
    out = tmp_path / "folds"
    code, stdout, _ = _edge(
        [
            "train",
            str(synthetic_split / "train"),
            "--folds",
            "3",
            "--max-per-class",
            "9",
            "--out",
            str(out),
            "--img-size",
            "48",
            "--epochs",
            "3",
            "--fine-tune-epochs",
            "0",
            "--views",
            "1",
        ],
        capsys,
    )
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["k"] == 3 and len(report["folds"]) == 3
    assert sum(f["val"]["n"] for f in report["folds"]) == 45
    accs = [f["val"]["accuracy"] for f in report["folds"]]
    assert report["summary"]["accuracy_mean"] == pytest.approx(np.mean(accs))
    assert "±" in stdout


def test_efficientnetb0_trains_end_to_end_from_scratch(synthetic_split, tmp_path, capsys):
    out = tmp_path / "b0"
    code, stdout, _ = _edge(
        [
            "train",
            str(synthetic_split / "train"),
            "--val-fraction",
            "0.25",
            "--arch",
            "efficientnetb0",
            "--weights",
            "none",
            "--out",
            str(out),
            "--img-size",
            "32",
            "--max-per-class",
            "8",
            "--fine-tune-epochs",
            "1",
            "--views",
            "2",
        ],
        capsys,
    )
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["weights"]["name"] == "none" and report["fine_tune_from"] is None
    assert report["splits"]["val"]["n"] == 10
    assert (out / "model.keras").is_file()


def test_stain_augmentation_and_white_balance_from_two_sources(synthetic_split, tmp_path, capsys):
    """Two sources with a class map, stain/optics augmentation before colour standardisation, and the
    white reference measured on the training images and written where quantization finds it."""
    from edge.preprocess import background_rgb

    second = tmp_path / "second-lab"
    for src, dst in (("round", "Round_Cell"), ("lobed", "lobed")):
        shutil.copytree(synthetic_split / "val" / src, second / dst)
    out = tmp_path / "stain"
    code, stdout, _ = _edge(
        [
            "train",
            "--data",
            str(synthetic_split / "train"),
            "--data",
            str(second),
            "--map",
            "round_cell=round",
            "--val-fraction",
            "0.25",
            "--augment",
            "stain",
            "--color",
            "white_balance",
            "--out",
            str(out),
            "--img-size",
            "48",
            "--epochs",
            "2",
            "--fine-tune-epochs",
            "1",
            "--views",
            "2",
        ],
        capsys,
    )
    assert code == 0, stdout[-2000:]
    config = json.loads((out / "config.json").read_text())
    spec = PreprocessSpec.model_validate(config["preprocess"])
    assert spec.color == "white_balance" and config["train"]["augment"] == "stain"
    # the reference is the median background of the training images, before standardisation
    import cv2

    files = sorted((synthetic_split / "train").rglob("*.jpg"))
    backgrounds = np.stack([background_rgb(cv2.imread(str(f))) for f in files])
    assert np.allclose(spec.white_reference, np.median(backgrounds, axis=0), atol=6)
    assert "colour standardisation: white reference" in stdout
    sources = config["data_sources"]["train"] if "data_sources" in config else None
    assert sources is None or {s["split"].split("/")[-1] for s in sources} == {"train", "second-lab"}


def test_stain_views_start_from_the_raw_image_and_end_in_the_device_preprocessing(synthetic_split):
    from convert.augment import augmented_views, finish, raw_spec
    from edge.preprocess import load_image, preprocess

    spec = PreprocessSpec(size=64, color="white_balance", white_reference=(240.0, 230.0, 235.0))
    files = sorted((synthetic_split / "val").rglob("*.jpg"))[:6]
    images = np.stack([preprocess(load_image(f), spec) for f in files])
    raw = np.stack([preprocess(load_image(f), raw_spec(spec)) for f in files])
    # finishing an unaugmented raw view is the device's preprocessing up to resize-before-balance rounding
    finished = np.stack([finish(r, spec) for r in raw])
    assert np.abs(finished.astype(int) - images.astype(int)).mean() < 3
    views = list(augmented_views(images, 3, 0, kind="stain", raw=raw, spec=spec))
    assert [v for v, _ in views] == [1, 2]
    for _, batch in views:
        assert batch.shape == images.shape and batch.dtype == np.uint8
        assert np.abs(batch.astype(int) - images.astype(int)).mean() > 2  # they do change
    with pytest.raises(ValueError, match="raw images"):
        next(augmented_views(images, 2, 0, kind="stain"))


def test_a_replayed_config_with_an_unknown_key_is_refused_in_one_line(tmp_path, capsys):
    """TrainConfig.from_dict used to drop keys it did not know: a misspelt option replayed silently."""
    config = tmp_path / "config.json"
    train = {"data_dir": [str(tmp_path)], "out": str(tmp_path / "run"), "learning_rate": 0.1}
    config.write_text(json.dumps({"train": train}))
    code, _, stderr = _edge(["train", "--config", str(config)], capsys)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1, stderr
    assert f"{config}: learning_rate: Extra inputs are not permitted" in lines[0]
