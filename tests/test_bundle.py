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
from tests.conftest import ROOT

TINY_MODEL = ROOT / "tests" / "fixtures" / "tiny-int8" / CPU_MODEL


def _fake_bundle(path, labels=("a", "b"), payload=None):
    """A bundle whose manifest is consistent in itself (the model file is the tiny fixture's, which
    outputs 5 classes: only opening a backend asks the model)."""
    payload = TINY_MODEL.read_bytes() if payload is None else payload
    manifest = Manifest(
        labels=list(labels),
        input=TensorSpec(shape=[1, 64, 64, 3], dtype="uint8", scale=1.0, zero_point=0),
        output=TensorSpec(shape=[1, len(labels)], dtype="uint8", scale=1 / 256, zero_point=0),
        preprocess=PreprocessSpec(size=64),
        metrics=[Metric(name="accuracy", value=0.5, split="synthetic/val", n=10)],
    )
    write_bundle(path, {CPU_MODEL: payload}, manifest)
    return path


def test_round_trip_without_model_check(tmp_path):
    b = Bundle.load(_fake_bundle(tmp_path / "b"))
    assert b.labels == ["a", "b"]
    assert b.manifest.metric("accuracy").split == "synthetic/val"
    assert b.manifest.writer["version"]
    assert len(b.sha256) == 64
    # one declaration, read and written: the manifest loaded is the manifest written
    assert b.manifest.to_dict() == json.loads((b.path / MANIFEST).read_text())


def test_a_manifest_that_would_not_load_is_not_built():
    """The model that Bundle.load reads with is the one the training host builds with."""
    with pytest.raises(ValueError, match="3 labels but the model output has 2 classes"):
        Manifest(
            labels=["a", "b", "c"],
            input=TensorSpec(shape=[1, 64, 64, 3], dtype="uint8"),
            output=TensorSpec(shape=[1, 2], dtype="uint8"),
            preprocess=PreprocessSpec(size=64),
        )


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p: (p / CPU_MODEL).write_bytes((p / CPU_MODEL).read_bytes() + b"x"), "sha256 mismatch"),
        (lambda p: (p / CPU_MODEL).unlink(), "missing model file"),
        (lambda p: (p / MANIFEST).unlink(), "missing manifest"),
        (lambda p: (p / MANIFEST).write_text("{"), "not valid JSON"),
        (lambda p: _edit(p, schema_version=99), "unknown schema version"),
        (lambda p: _edit(p, labels=["a", "b", "c"]), "3 labels"),
        (lambda p: _edit(p, preprocess={"size": 64, "bogus": 1}), "preprocess.bogus"),
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


def test_the_model_is_asked_when_a_backend_opens(tmp_path):
    # The manifest is consistent in itself (2 labels, an output of 2, sealed with those labels), but
    # the model file outputs 5 classes: only the runtime can tell, when the backend is opened.
    lying = Bundle.load(_fake_bundle(tmp_path / "b"))
    with pytest.raises(BundleError, match="2 labels but the model outputs 5 classes"):
        open_backend(lying)


@pytest.mark.parametrize(
    "edit, message",
    [
        # Issue 15, defect 7: swapped labels were accepted (96.5 % -> 50.9 % accuracy, no warning).
        (
            lambda d: d.update(labels=list(reversed(d["labels"]))),
            "labels differ from what model.tflite was sealed with",
        ),
        (lambda d: d["preprocess"].update(clahe_clip_limit=3.0), "preprocess differ from what model.tflite"),
        (lambda d: d["uncertainty"].update(min_confidence=0.1), "uncertainty differ from what model.tflite"),
        # ... "abcde" passed as five labels; a tile grid of 0 crashed with a floating-point exception;
        # size 112 gave a generic exit 1.
        (lambda d: d.update(labels="abcde"), "labels: expected a list of names, got str 'abcde'"),
        (
            lambda d: d["preprocess"].update(clahe_tile_grid=0),
            "preprocess.clahe_tile_grid: Input should be greater than or equal to 1",
        ),
        (
            lambda d: d["preprocess"].update(size=112),
            "preprocess.size 112 does not fit the model input 64x64",
        ),
        (lambda d: d["files"].update({"../x": "0" * 64}), "is not a file name inside the bundle"),
        # read strictly: JSON types as written, no "1" for true or "64" for 64
        (
            lambda d: d["preprocess"].update(antialias=1),
            "preprocess.antialias: Input should be a valid boolean (got 1)",
        ),
        (lambda d: d.update(schema_version=1), "written by edge 0.1"),
    ],
)
def test_an_edited_manifest_is_refused_with_one_line_naming_the_field(tiny_bundle, tmp_path, edit, message):
    copy = shutil.copytree(tiny_bundle, tmp_path / "copy")
    data = json.loads((copy / MANIFEST).read_text())
    edit(data)
    (copy / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(BundleError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Bundle.load(copy)
    proc = subprocess.run(
        [sys.executable, "-m", "edge.cli", "classify", str(copy), str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        proc.returncode == 3 and len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    )


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


def test_signed_bundles_and_a_daemon_that_trusts_only_its_clinics_key(tiny_bundle, tmp_path):
    from edge.signing import SIGNATURE, generate_key, require_trusted, sign

    def edge_cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "edge.cli", *map(str, args)], capture_output=True, text=True, timeout=120
        )

    key, other = tmp_path / "clinic.key", tmp_path / "other.key"
    public = generate_key(key)
    other_public = generate_key(other)
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    bundle = shutil.copytree(tiny_bundle, tmp_path / "b")
    assert Bundle.load(bundle).signature is None
    with pytest.raises(BundleError, match="unsigned bundle"):
        require_trusted(bundle, [public])
    proc = edge_cli("sign", bundle, "--key", key, "--signer", "Clinic X lab")
    assert proc.returncode == 0 and "signed" in proc.stdout, proc.stderr
    assert Bundle.load(bundle).signature.signer == "Clinic X lab"
    assert require_trusted(bundle, [other_public, public]).public_key == public
    with pytest.raises(BundleError, match="not a trusted key here"):
        require_trusted(bundle, [other_public])
    info = edge_cli("info", bundle)
    assert "signed by   'Clinic X lab'" in info.stdout
    # The daemon: a trusted key in the config, and the bundle signed by another -> refused, one line.
    sign(bundle, other, "someone else")
    config = tmp_path / "edge-run.toml"
    config.write_text(f'bundle = "{bundle}"\ntrusted_keys = ["{public}"]\n')
    run = edge_cli("run", "--config", config, "--db", tmp_path / "r.db", "--http", "off", "--max-frames", "1")
    assert run.returncode == 3 and "not a trusted key here" in run.stderr and "Traceback" not in run.stderr
    # Any change to the manifest after signing breaks the signature, trusted keys or not.
    data = json.loads((bundle / MANIFEST).read_text())
    data["training"]["note"] = "edited"
    (bundle / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="changed after signing"):
        Bundle.load(bundle)
    assert (bundle / SIGNATURE).exists() and "private" not in (bundle / SIGNATURE).read_text().lower()


def test_committed_bundles_ship_unsigned_and_no_private_key_is_committed():
    """A clinic signs the bundles it approved with its own key (issue 15, 7): ours carry no signature,
    and no key file is in the repository."""
    root = ROOT
    for bundle in sorted((root / "models").iterdir()):
        if (bundle / "manifest.json").is_file():
            assert Bundle.load(bundle).signature is None, bundle.name
    tracked = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True).stdout.split()
    assert not [f for f in tracked if f.endswith((".key", ".pem")) or "signature" in f.rsplit("/", 1)[-1]]
