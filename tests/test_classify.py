"""`edge classify` end to end (a real `edge` process on a real int8 bundle) and the batch pipeline."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.batch import PipelineOptions, classify_paths, classify_sequential
from edge.bundle import Bundle
from edge.dataset import expand_paths, images_in
from edge.predict import Classifier
from edge.synthetic import CLASSES, render_cell

ROOT = Path(__file__).resolve().parents[1]


def edge(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        timeout=300,
    )


@pytest.fixture(scope="module")
def folder_with_one_corrupt(tmp_path_factory) -> tuple[Path, Path]:
    """200 good synthetic JPEGs in nested folders, plus one truncated JPEG among them."""
    root = tmp_path_factory.mktemp("slides")
    rng = np.random.default_rng(5)
    for i in range(200):
        sub = root / f"slide{i % 3}" / ("deep" if i % 2 else "")
        sub.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(sub / f"cell_{i:03d}.jpg"), render_cell(CLASSES[i % 5], rng, 96))
    good = (root / "slide0" / "cell_000.jpg").read_bytes()
    bad = root / "slide1" / "deep" / "broken.jpg"
    bad.write_bytes(good[: len(good) // 2])
    (root / "notes.txt").write_text("not an image, and not picked up from a folder")
    return root, bad


def test_classify_names_the_corrupt_file_classifies_the_rest_and_exits_1(
    tiny_bundle, folder_with_one_corrupt
):
    root, bad = folder_with_one_corrupt
    proc = edge("classify", tiny_bundle, root, "--json")
    assert proc.returncode == 1, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    errors = [r for r in records if "error" in r]
    good = [r for r in records if "error" not in r]
    assert len(good) == 200 and len(errors) == 1
    assert errors[0]["path"] == str(bad) and "truncated JPEG" in errors[0]["error"]
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert error_lines == [f"error: {bad}: truncated JPEG (no end-of-image marker)"]
    assert "Traceback" not in proc.stderr
    labels = Bundle.load(tiny_bundle).labels
    for r in good:
        assert r["label"] in labels and 0 <= r["confidence"] <= 1 and isinstance(r["uncertain"], bool)
        assert len(r["top_k"]) == 3 and r["top_k"][0][0] == r["label"]
        assert set(r["timings_ms"]) == {"decode", "preprocess", "invoke"}
    assert "200 classified" in proc.stderr and "1 failed" in proc.stderr


def test_classify_csv_top_k_and_threshold(tiny_bundle, synthetic_split):
    folder = synthetic_split / "val" / "round"
    proc = edge("classify", tiny_bundle, folder, "--csv", "--top-k", "2", "--threshold", "1.0")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert len(rows) == len(images_in(folder))
    assert all(
        row["uncertain"] == "1" for row in rows
    )  # nothing reaches probability 1.0 in int8 softmax here
    assert all(len(row["top_k"].split(";")) == 2 and row["error"] == "" for row in rows)
    relaxed = edge("classify", tiny_bundle, folder, "--csv", "--threshold", "0", "--margin", "0")
    assert all(row["uncertain"] == "0" for row in csv.DictReader(io.StringIO(relaxed.stdout)))


def test_classify_text_output_files_and_missing_paths(tiny_bundle, synthetic_split, tmp_path):
    files = images_in(synthetic_split / "val" / "dense")[:3]
    proc = edge("classify", tiny_bundle, *files, tmp_path / "missing.jpg")
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(f) for f in files]
    assert all(line.split("\t")[3] in ("ok", "UNCERTAIN") for line in lines)
    assert f"error: {tmp_path / 'missing.jpg'}: file not found" in proc.stderr


def test_classify_bad_bundle_and_empty_folder_are_one_line_errors(tiny_bundle, tmp_path):
    proc = edge("classify", tmp_path / "nope", tmp_path)
    assert (
        proc.returncode == 3
        and proc.stderr.strip().startswith("error:")
        and "bundle not found" in proc.stderr
    )
    (tmp_path / "empty").mkdir()
    proc = edge("classify", tiny_bundle, tmp_path / "empty")
    assert proc.returncode == 2 and "no images found" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "options, replicas",
    [(PipelineOptions(batch_size=4, workers=2), 1), (PipelineOptions(batch_size=3), 2)],
    ids=["threads", "replicas"],
)
def test_pipeline_gives_the_sequential_results_in_order(
    tiny_bundle, folder_with_one_corrupt, options, replicas
):
    root, bad = folder_with_one_corrupt
    paths = expand_paths([root])[:40] + [bad]
    bundle = Bundle.load(tiny_bundle)
    classifiers = [Classifier.open(bundle, threads=1) for _ in range(replicas)]
    expected = list(classify_sequential(classifiers[0], paths))
    got = list(classify_paths(classifiers, paths, options))
    assert [r.path for r in got] == paths
    assert [r.error for r in got] == [r.error for r in expected]
    assert [r.prediction.probabilities for r in got if r.ok] == [
        r.prediction.probabilities for r in expected if r.ok
    ]


def test_expand_paths_recurses_skips_hidden_and_keeps_named_files(tmp_path):
    for rel in ["a/1.jpg", "a/b/2.PNG", "a/.hidden/3.jpg", "a/.4.jpg", "a/readme.md", "c.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    got = expand_paths([tmp_path / "a", tmp_path / "c.txt", tmp_path / "a" / "1.jpg", tmp_path / "gone.jpg"])
    assert got == [tmp_path / "a/1.jpg", tmp_path / "a/b/2.PNG", tmp_path / "c.txt", tmp_path / "gone.jpg"]


@pytest.mark.realdata
def test_classify_real_microscope_jpegs(tiny_bundle, realdata):
    files = sorted((realdata / "blood-5class" / "val" / "monocyte").glob("*.jpg"))[:12]
    proc = edge("classify", tiny_bundle, *files, "--json")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["path"] for r in records] == [str(f) for f in files]
    assert all(r["timings_ms"]["decode"] > 0 and r["timings_ms"]["preprocess"] > 0 for r in records)


def test_names_that_are_not_utf8_are_printed_escaped_in_every_format(tiny_bundle, synthetic_split, tmp_path):
    # Issue 15, defect 6: text and CSV output aborted on a non-UTF-8 file name; nothing after it printed.
    folder = tmp_path / "odd"
    folder.mkdir()
    good = sorted((synthetic_split / "val" / "round").iterdir())
    shutil.copy(good[0], os.fsencode(folder) + b"/b_Zelle_\xe4.jpg")
    shutil.copy(good[1], folder / "z_after.jpg")
    for fmt in ([], ["--csv"]):
        proc = edge("classify", tiny_bundle, folder, *fmt)
        assert proc.returncode == 0, proc.stderr
        assert "b_Zelle_\\xe4.jpg" in proc.stdout and "z_after.jpg" in proc.stdout, (fmt, proc.stdout)
    proc = edge("classify", tiny_bundle, folder, "--json")
    names = [Path(json.loads(line)["path"]).name for line in proc.stdout.splitlines()]
    assert proc.returncode == 0 and names == ["b_Zelle_\\xe4.jpg", "z_after.jpg"]


def test_a_folder_of_bundles_and_a_missing_file_get_a_hint_and_no_speed(tiny_bundle, tmp_path):
    # Issue 15, defect 9: `edge classify models ...` said "missing manifest" with no hint, and a
    # missing file printed a throughput line.
    models = tmp_path / "models"
    shutil.copytree(tiny_bundle, models / "tiny-int8")
    proc = edge("classify", models, tmp_path / "nothing.jpg")
    assert proc.returncode == 3 and "holds the bundles tiny-int8" in proc.stderr
    proc = edge("classify", tiny_bundle, tmp_path / "nothing.jpg")
    assert proc.returncode == 1 and "file not found" in proc.stderr and "images/s" not in proc.stderr


def test_max_pixels_refuses_a_larger_image_in_one_line_and_classifies_a_smaller_one(tiny_bundle, tmp_path):
    # Issue 15, defect 1: the pixel limit is configurable (edge classify, eval and run --max-pixels).
    rng = np.random.default_rng(8)
    cv2.imwrite(str(tmp_path / "large.png"), render_cell("round", rng, 100))  # 10,000 pixels
    cv2.imwrite(str(tmp_path / "small.png"), render_cell("round", rng, 60))  # 3,600 pixels
    proc = edge("classify", tiny_bundle, tmp_path / "large.png", tmp_path / "small.png", "--max-pixels", 5000)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert errors == [
        f"error: {tmp_path / 'large.png'}: declares 100 x 100 pixels, over the limit of 5,000 (max_pixels)"
    ]
    assert [line.split("\t")[0] for line in proc.stdout.splitlines()] == [str(tmp_path / "small.png")]
    assert "Traceback" not in proc.stderr
    again = edge("classify", tiny_bundle, tmp_path / "large.png", "--max-pixels", 20_000)  # under the limit
    assert again.returncode == 0, again.stderr
    assert edge("classify", tiny_bundle, tmp_path / "small.png", "--max-pixels", 0).returncode == 2
