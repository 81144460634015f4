"""The bundle contract: Bundle.load refuses what it cannot vouch for, with one line naming the file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from edge.bundle import CPU_MODEL, MANIFEST, Bundle, Manifest, Metric, TensorSpec, write_bundle
from edge.errors import BundleError
from edge.preprocess import PreprocessSpec
from edge.runtime import open_backend


def _fake_bundle(path, labels=("a", "b"), payload=b"not really a model"):
    manifest = Manifest(
        labels=list(labels),
        input=TensorSpec([1, 64, 64, 3], "uint8", 1.0, 0),
        output=TensorSpec([1, len(labels)], "uint8", 1 / 256, 0),
        preprocess=PreprocessSpec(size=64),
        metrics=[Metric("accuracy", 0.5, "synthetic/val", n=10)],
    )
    write_bundle(path, {CPU_MODEL: payload}, manifest)
    return path


def test_round_trip_without_model_check(tmp_path):
    b = Bundle.load(_fake_bundle(tmp_path / "b"))
    assert b.labels == ["a", "b"]
    assert b.manifest.metric("accuracy").split == "synthetic/val"
    assert b.manifest.writer["version"]
    assert len(b.sha256) == 64


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p: (p / CPU_MODEL).write_bytes((p / CPU_MODEL).read_bytes() + b"x"), "sha256 mismatch"),
        (lambda p: (p / CPU_MODEL).unlink(), "missing model file"),
        (lambda p: (p / MANIFEST).unlink(), "missing manifest"),
        (lambda p: (p / MANIFEST).write_text("{"), "not valid JSON"),
        (lambda p: _edit(p, schema_version=99), "unknown schema version"),
        (lambda p: _edit(p, labels=["a", "b", "c"]), "3 labels"),
        (lambda p: _edit(p, preprocess={"size": 64, "bogus": 1}), "malformed manifest"),
    ],
)
def test_refusals(tmp_path, mutate, message):
    path = _fake_bundle(tmp_path / "b")
    mutate(path)
    with pytest.raises(BundleError, match=message):
        Bundle.load(path)


def _edit(path, **changes):
    data = json.loads((path / MANIFEST).read_text())
    data.update(changes)
    (path / MANIFEST).write_text(json.dumps(data))


def test_real_model_labels_must_match_output(tiny_bundle, tmp_path):
    Bundle.load(tiny_bundle)  # the real thing loads
    copy = shutil.copytree(tiny_bundle, tmp_path / "copy")
    data = json.loads((copy / MANIFEST).read_text())
    data["labels"] = data["labels"][:-1]
    data["output"]["shape"][-1] -= 1  # a consistent-looking manifest that lies about the model
    (copy / MANIFEST).write_text(json.dumps(data))
    lying = Bundle.load(copy)  # the manifest is consistent in itself; the model is asked when it is opened
    with pytest.raises(BundleError, match="outputs 5 classes"):
        open_backend(lying)


def test_edge_info_on_tampered_model_is_one_line(tiny_bundle, tmp_path):
    copy = shutil.copytree(tiny_bundle, tmp_path / "tampered")
    with open(copy / CPU_MODEL, "ab") as fh:
        fh.write(b"\0")
    result = subprocess.run(
        [sys.executable, "-m", "edge.cli", "info", str(copy)], capture_output=True, text=True
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "sha256 mismatch" in lines[0] and "Traceback" not in result.stderr


def test_edge_info_summarises(tiny_bundle):
    result = subprocess.run(
        [sys.executable, "-m", "edge.cli", "info", str(tiny_bundle)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "labels" in result.stdout and "uint8 1x64x64x3" in result.stdout
