"""`edge train-detector` and `edge quantize` of a detector run, end to end on synthetic VOC fields:
the real Keras training, the real int8 conversion, the bundle loaded back and run as the device
runs it. Small (96 px, 2 views, 1 epoch, random weights): it checks the plumbing, not accuracy."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edge import golden
from edge.bundle import Bundle
from edge.cli import cli
from edge.detect.detector import Detector
from edge.synthetic import make_voc_dataset, render_field

pytestmark = pytest.mark.train


def test_train_then_quantize_a_detector(tmp_path):
    voc = make_voc_dataset(tmp_path / "voc", frames=30, seed=2)
    run = tmp_path / "run"
    result = CliRunner().invoke(
        cli,
        ["train-detector", str(voc), "--out", str(run), "--size", "96", "--views", "2", "--epochs", "1",
         "--weights", "none", "--crop-fraction", "0.4"],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert config["task"] == "detector" and config["preprocess"]["aspect"] == "pad"
    split = config["split"]
    names = split["fit"]["files"] + split["tune"]["files"] + split["val"]["files"]
    assert len(names) == len(set(names)) == 30  # every frame in exactly one split
    report = json.loads((run / "report.json").read_text())
    assert {"tune", "val", "history"} <= set(report) and (run / "pr_val.png").exists()

    out = tmp_path / "bundle"
    result = CliRunner().invoke(
        cli,
        ["quantize", str(run), "--calib", str(voc), "--eval", str(voc), "--out", str(out), "--calib-count", "24"],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "val:" in result.output and "AP@0.5" in result.output
    bundle = Bundle.load(out)
    m = bundle.manifest
    assert m.task == "detector" and m.input.dtype == "uint8" and m.input.shape == [1, 96, 96, 3]
    assert m.detector.crop.cell_fraction == 0.4 and m.detector.stride == 16
    assert {x.split for x in m.metrics} == {"voc/tune", "voc/val"}
    assert golden.check(bundle).state == golden.OK  # the golden check of every bundle, detectors too
    dets, _ = Detector(bundle).detect(
        render_field(np.random.default_rng(0), 640, 480, n_extra=2)[0], threshold=0.01
    )
    assert all(0 <= d.box[0] <= 640 for d in dets)
    # classifier-only options are refused for a detector run
    bad = CliRunner().invoke(
        cli, ["quantize", str(run), "--calib", str(voc), "--out", str(tmp_path / "x"), "--adapt-head"]
    )
    assert bad.exit_code != 0 and "applies to classifiers" in str(bad.exception or bad.output)
