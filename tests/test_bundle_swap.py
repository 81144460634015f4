"""A bundle file swapped on disk after its check (issue 24, item 2): what runs is what was hashed.

The attack: the signature and sha256 check read model.tflite, the interpreter read it again about a
second later; a model swapped in between (here: one that calls every cell "lobed") ran while the
session recorded the signed hash. Bundle.load reads every file once and hands those verified bytes to
the interpreters and the rejection scorer, so a swap after the check changes nothing that runs, and a
swap before it is refused."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from edge.bundle import Bundle
from edge.errors import BundleError
from edge.predict import Classifier
from edge.rejection import MahalanobisScorer
from edge.runtime import open_backend
from edge.synthetic import make_dataset
from tests.daemon_cli import edge_run

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
EVIL = 3  # "lobed" in the tiny bundles: the class the swapped model gives every cell


def evil_tflite(model: bytes) -> bytes:
    """The same model with its last layer rewritten so that every input scores class EVIL."""
    from edge.tflite_edit import read_head, write_head

    _, head = read_head(model)
    bias = np.zeros_like(head.bias)
    bias[EVIL] = 8.0
    return write_head(model, np.full_like(head.weights, 1e-3), bias, (-1.0, 9.0))


def evil_onnx(path: Path) -> bytes:
    """The same ONNX graph with +20 added to class EVIL's logit before the softmax."""
    # onnx (to edit the graph) comes with the train extra: `make test-device` has onnxruntime only
    onnx = pytest.importorskip("onnx", reason="needs onnx (the train extra); this is a device install")
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    shift = np.zeros(5, np.float32)
    shift[EVIL] = 20.0
    model.graph.initializer.append(numpy_helper.from_array(shift, "evil_shift"))
    model.graph.node.insert(
        list(model.graph.node).index(softmax),
        helper.make_node("Add", [softmax.input[0], "evil_shift"], ["evil_logits"]),
    )
    softmax.input[0] = "evil_logits"
    return model.SerializeToString()


def swap(file: Path, data: bytes) -> None:
    """Replace `file` as an attacker with write access would: atomically, under the same name."""
    tmp = file.with_name(file.name + ".swap")
    tmp.write_bytes(data)
    os.replace(tmp, file)


def cells() -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)


@pytest.mark.parametrize("backend,name", [("cpu", "model.tflite"), ("onnx", "model.onnx")])
def test_a_model_swapped_after_the_check_is_not_what_runs(tmp_path, backend, name):
    root = shutil.copytree(FIXTURES / "tiny-int8", tmp_path / "b")
    signed = open_backend(Bundle.load(root), backend).run(cells())
    evil = evil_tflite((root / name).read_bytes()) if name.endswith("tflite") else evil_onnx(root / name)

    bundle = Bundle.load(root)  # the check: hashes (and signature) verified
    swap(root / name, evil)  # ... and the file swapped before the interpreter reads it
    running = open_backend(bundle, backend).run(cells())

    assert np.array_equal(running, signed)  # the model whose hash is recorded, not the swapped one
    with pytest.raises(BundleError, match="sha256 mismatch"):
        Bundle.load(root)  # loaded now, the swapped file is refused
    # the swapped model really is another model: it calls every cell the same class
    forged = Bundle(root, bundle.manifest, contents={name: evil})
    assert set(open_backend(forged, backend).run(cells()).argmax(1)) == {EVIL} != set(signed.argmax(1))


def test_a_rejection_file_swapped_after_the_check_is_not_what_scores(tmp_path):
    root = shutil.copytree(FIXTURES / "tiny-reject-int8", tmp_path / "b")
    bundle = Bundle.load(root)
    file = root / bundle.manifest.rejection.file
    signed = MahalanobisScorer.load(file)
    forged = MahalanobisScorer(signed.means + 100.0, signed.precision, signed.projection, signed.center)
    swap(file, forged.to_bytes())
    scorer = Classifier.open(bundle, "cpu").rejection
    assert np.array_equal(scorer.means, signed.means) and not np.array_equal(scorer.means, forged.means)


def test_a_bundle_file_is_read_once_and_verified(tmp_path, monkeypatch):
    """Every file a bundle lists is read exactly once (then handed out from memory), and a Bundle built
    by hand still never hands out bytes that do not match the manifest."""
    root = shutil.copytree(FIXTURES / "tiny-reject-int8", tmp_path / "b")
    reads: list[str] = []
    real = Path.read_bytes

    def counting(self):
        reads.append(self.name)
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", counting)
    bundle = Bundle.load(root)
    Classifier.open(bundle, "cpu").backend.close()
    listed = sorted(bundle.manifest.files)
    assert sorted(r for r in reads if r in listed) == listed  # once each, however many users
    monkeypatch.undo()
    swap(root / "model.tflite", b"not the model")
    with pytest.raises(BundleError, match="sha256 mismatch"):
        Bundle(root, bundle.manifest).read("model.tflite")
    with pytest.raises(BundleError, match="has no"):
        bundle.read("secrets.txt")


# `edge run` with Bundle.load patched so that the moment after the check, model.tflite is swapped for
# the evil one (SWAP_WITH: its bytes, used once): the worst moment of a real start-up, made certain.
SWAPPING_ENTRY = """
import os
import edge.bundle

_load = edge.bundle.Bundle.load.__func__


def load(cls, path):
    bundle = _load(cls, path)
    evil = os.environ.get("SWAP_WITH", "")
    if os.path.exists(evil):
        os.replace(evil, os.path.join(str(path), "model.tflite"))
    return bundle


edge.bundle.Bundle.load = classmethod(load)
from edge.cli import main

main()
"""


def results_by_image(db: Path) -> tuple[dict[str, tuple[str, str]], set[str]]:
    with sqlite3.connect(db) as con:
        rows = con.execute(
            "SELECT f.source_ref, r.label, r.probabilities FROM results r JOIN frames f"
            " ON f.session_id = r.session_id AND f.frame_id = r.frame_id"
        ).fetchall()
        shas = {s for (s,) in con.execute("SELECT model_sha FROM sessions")}
    return {ref: (label, probs) for ref, label, probs in rows}, shas


def test_the_daemon_runs_the_signed_model_when_the_file_is_swapped_during_start_up(tmp_path):
    from edge.signing import generate_key, sign

    bundle = shutil.copytree(FIXTURES / "tiny-int8", tmp_path / "approved")
    public = generate_key(tmp_path / "clinic.key")
    sign(bundle, tmp_path / "clinic.key", "Clinic X lab")
    sha = json.loads((bundle / "manifest.json").read_text())["files"]["model.tflite"]
    frames = make_dataset(tmp_path / "frames", per_class=4, seed=11)
    entry = tmp_path / "swapping_edge.py"
    entry.write_text(SWAPPING_ENTRY)
    config = tmp_path / "edge-run.toml"
    config.write_text(f'bundle = "{bundle}"\ntrusted_keys = ["{public}"]\n')

    def run(db: Path, evil: Path | None):
        proc = edge_run(
            "--config", config, "--source", f"replay:{frames}", "--db", db, "--http", "off",
            cwd=tmp_path, entry=entry, env={"SWAP_WITH": str(evil or "")},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        return results_by_image(db)

    signed, _ = run(tmp_path / "signed.db", None)
    evil = tmp_path / "evil.tflite"
    evil.write_bytes(evil_tflite((bundle / "model.tflite").read_bytes()))
    after_swap, shas = run(tmp_path / "swapped.db", evil)

    assert not evil.exists()  # the swap happened, after the signature and hash checks
    assert shas == {sha}  # what the session recorded
    assert len(signed) == 20 and after_swap == signed  # and what ran: the signed model, cell for cell
    assert {label for label, _ in signed.values()} != {"lobed"}
