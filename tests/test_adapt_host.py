"""`edge adapt --host`: the host calibration end to end on a tiny version-2 run of synthetic cells.

A real `edge train` run (64 px, cells cut at 4 red-cell diameters, white balance) and its bundle from
`edge quantize` (rejection, model.onnx); a "microscope" of cells drawn with another seed, magnified
1.4x and with other colour gains; then `edge adapt --host`: fine-tune, re-quantize, site section.
"""

from __future__ import annotations

import json
import sys
from io import StringIO
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("tensorflow")

from edge import site_cells  # noqa: E402
from edge.adapt import split_site  # noqa: E402
from edge.bundle import ONNX_MODEL, Bundle  # noqa: E402
from edge.cli import main  # noqa: E402
from edge.dataset import scan_labelled  # noqa: E402
from edge.predict import Classifier  # noqa: E402
from edge.synthetic import make_dataset  # noqa: E402

pytestmark = pytest.mark.train

QUICK = ["--img-size", "64", "--epochs", "6", "--fine-tune-epochs", "2", "--views", "2", "--batch-size", "16"]


def _edge(args) -> tuple[int, str]:
    """Run `edge ARGS` in this process; (exit code, stdout and stderr)."""
    buf = StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "stdout", buf)
        mp.setattr(sys, "stderr", buf)
        with pytest.raises(SystemExit) as exit_info:
            main([str(a) for a in args])
    return exit_info.value.code, buf.getvalue()


def _other_microscope(source: Path, out: Path) -> Path:
    """The cells of `source` as another microscope shows them: magnified 1.4x, other colour gains."""
    for path in sorted(source.rglob("*.jpg")):
        img = cv2.resize(cv2.imread(str(path)).astype(np.float32), None, fx=1.4, fy=1.4)
        img = np.clip(img * np.array([0.8, 1.0, 1.15]) + np.array([10, -5, 0]), 0, 255).astype(np.uint8)
        target = out / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target), img)
    return out


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    root = tmp_path_factory.mktemp("host")
    train, val = make_dataset(root / "train", 24, seed=1), make_dataset(root / "val", 8, seed=2)
    scope = _other_microscope(make_dataset(root / "drawn", 16, seed=7), root / "scope")
    run, bundle, new, cache = root / "run", root / "bundle", root / "scope-bundle", root / "cache"
    v2 = ["--preprocess-version", "2", "--field-rbc", "4", "--color", "white_balance"]
    code, out = _edge(["train", train, "--val-dir", val, "--out", run, "--cache", cache, *QUICK, *v2])
    assert code == 0, out[-2000:]
    reject = [
        "--reject",
        "mahalanobis",
        "--reject-layer",
        "head_pool",
        "--reject-holdout",
        val,
        "--reject-dims",
        "8",
    ]
    quantize = ["quantize", run, "--calib", train, "--out", bundle, "--calib-count", "30", *reject]
    code, out = _edge([*quantize, "--format", "onnx"])
    assert code == 0, out[-2000:]
    adapt = ["adapt", bundle, scope, "--host", "--run", run, "--out", new, "--epochs", "2", "--cache", cache]
    code, out = _edge(adapt)
    assert code == 0, out[-3000:]
    return {"run": run, "bundle": bundle, "new": new, "scope": scope, "out": out}


def test_the_host_path_writes_a_bundle_that_loads_and_records_the_site(host):
    old, new = Bundle.load(host["bundle"]), Bundle.load(host["new"])  # loading verifies every file's hash
    assert new.manifest.site.method == "host" and new.manifest.site.name == "scope"
    assert new.manifest.site.scale is not None and new.manifest.site.scale.rbc_px > 0
    assert ONNX_MODEL in new.manifest.files, "the bundle had model.onnx: the new one is re-made"
    assert new.manifest.files[ONNX_MODEL] != old.manifest.files[ONNX_MODEL]
    assert new.model_path().read_bytes() != old.model_path().read_bytes()
    assert "fine-tuned by edge adapt --host" in new.manifest.model["source"]
    record = new.manifest.calibration["site_adaptation"]
    assert record["method"] == "host" and record["fine_tune"]["split_layer"] == "block_12_add"
    assert record["fine_tune"]["replay"]["cells"] > 0 and len(record["fine_tune"]["loss"]) == 2
    assert record["quantize"]["repeated"] == old.manifest.calibration["command"]
    assert new.manifest.calibration["site_cells"]["count"] == record["fit"]["n"]  # calibrated on them too
    assert "Edge TPU:" in host["out"] and "held back" in host["out"]


def test_the_recorded_held_back_numbers_are_what_the_new_bundle_does(host):
    """The held-back cells (never fitted), classified by the new bundle through the device's code at the
    site's scale, give the accuracy its manifest records."""
    new = Bundle.load(host["new"])
    cells = site_cells.from_folder(scan_labelled(host["scope"], new.labels, dedupe=True))
    split = split_site(cells.y, new.labels, 0.25, 0)
    held = cells.subset(split.held)
    preds = Classifier.open(new, "cpu").classify_tensors(held.inputs(new, new.manifest.site.scale.rbc_px))
    accuracy = float(np.mean([p.label == new.labels[y] for p, y in zip(preds, held.y, strict=True)]))
    assert new.manifest.site.held_back["n"] == len(held) > 0
    assert new.manifest.site.held_back["accuracy_after"] == pytest.approx(accuracy, abs=1e-4)
    report = host["new"].parent / "eval.json"
    code, out = _edge(["eval", host["new"], host["scope"], "--json", report])
    assert code == 0, out[-2000:]
    site = json.loads(report.read_text())["site"]
    assert site["calibrated"] and site["site"] == "scope"


def test_host_without_a_run_or_with_a_folder_that_is_none_is_one_line(host, tmp_path):
    (tmp_path / "norun").mkdir()
    args = ["adapt", host["bundle"], host["scope"], "--host", "--out", tmp_path / "x"]
    code, out = _edge([*args, "--run", tmp_path / "norun"])
    assert code != 0 and len(out.strip().splitlines()) == 1 and "no model.keras" in out, out
    code, out = _edge(args)
    assert code == 2 and "--host needs --run" in out, out
