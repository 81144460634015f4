"""`edge eval` end to end on a real int8 bundle, and the label matching it relies on."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from edge.batch import classify_sequential
from edge.bundle import Bundle
from edge.dataset import images_in, normalize_label, scan_labelled
from edge.errors import DataError
from edge.predict import Classifier

ROOT = Path(__file__).resolve().parents[1]
# Folder spellings a lab might use for the synthetic classes.
SPELLINGS = {
    "round": "Round",
    "lobed": "LOBED",
    "kidney": "kid-ney",
    "granular": "Granular_",
    "dense": "dense",
}


def edge(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


@pytest.fixture(scope="module")
def labelled(synthetic_split, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("labelled")
    for name, spelled in SPELLINGS.items():
        shutil.copytree(synthetic_split / "val" / name, root / spelled)
    return root


def test_eval_reports_metrics_throughput_and_a_plot(tiny_bundle, labelled, tmp_path):
    out, plot = tmp_path / "eval.json", tmp_path / "confusion.png"
    proc = edge("eval", tiny_bundle, labelled, "--json", out, "--plot", plot, "--baseline-images", "20")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    for key in (
        "accuracy",
        "macro_f1",
        "n",
        "labels",
        "per_class",
        "confusion",
        "images_per_second",
        "uncertain_fraction",
        "confident_accuracy",
        "sequential_images_per_second",
        "speedup",
    ):
        assert key in report, key
    bundle = Bundle.load(tiny_bundle)
    images = scan_labelled(labelled, bundle.labels)
    paths, targets = images.files, images.targets.tolist()
    assert report["n"] == len(paths) == 40 and report["labels"] == bundle.labels
    assert sum(map(sum, report["confusion"])) == 40
    # Recompute from a plain sequential run: the pipeline must not change any answer.
    results = list(classify_sequential(Classifier.open(bundle), paths))
    hits = [bundle.labels.index(r.prediction.label) == t for r, t in zip(results, targets, strict=True)]
    assert report["accuracy"] == pytest.approx(sum(hits) / len(hits))
    flagged = [r.prediction.uncertain for r in results]
    assert report["uncertain_fraction"] == pytest.approx(sum(flagged) / len(flagged))
    confident = [h for h, f in zip(hits, flagged, strict=True) if not f]
    assert report["confident_accuracy"] == pytest.approx(
        sum(confident) / len(confident) if confident else 0.0
    )
    assert set(report["per_class"]["round"]) == {"precision", "recall", "f1", "specificity", "support"}
    assert report["images_per_second"] > 0 and report["baseline_images"] == 20
    assert report["speedup"] == pytest.approx(
        report["images_per_second"] / report["sequential_images_per_second"], rel=1e-2
    )
    image = cv2.imread(str(plot))
    assert image is not None and image.shape[0] > 300 and image.shape[1] > 300
    assert "accuracy" in proc.stdout and "images/s" in proc.stdout


def test_a_class_the_bundle_does_not_know_is_scored_as_should_be_rejected(tiny_bundle, labelled, tmp_path):
    # Issue 13: a folder whose class the bundle does not know is no longer an error: its cells
    # should be rejected (or at least flagged), and every confident label they get is reported.
    root = tmp_path / "mixed"
    shutil.copytree(labelled, root)
    shutil.copytree(labelled / "Round", root / "platelet")
    out = tmp_path / "mixed.json"
    proc = edge("eval", tiny_bundle, root, "--json", out, "--baseline-images", "0", "--blast-class", "round")
    assert proc.returncode == 0, proc.stderr
    assert "folder platelet is not a class of this bundle" in proc.stderr
    report = json.loads(out.read_text())
    assert report["n"] == 40  # only the known classes are scored for accuracy
    rej = report["should_be_rejected"]
    assert rej["n"] == 8 and set(rej["folders"]) == {"platelet"}
    plate = rej["folders"]["platelet"]
    assert plate["rejected"] == 0  # the tiny bundle has no rejection: these round cells get labels
    assert sum(plate["confident_labels"].values()) == round(8 * (1 - plate["rejected_or_flagged_fraction"]))
    fb = report["false_blast"]  # "round" as the blast class: every confident round call on a non-round cell
    assert fb["normal_cells"] == 48 - 8 and fb["blast_classes"] == ["round"]
    assert "should be rejected: platelet (n=8)" in proc.stdout and "false blast:" in proc.stdout


def test_map_aliases_a_folder_to_a_label(tiny_bundle, labelled, tmp_path):
    root = tmp_path / "aliased"
    shutil.copytree(labelled, root)
    (root / "Round").rename(root / "circular")
    out = tmp_path / "a.json"
    proc = edge("eval", tiny_bundle, root, "--map", "circular=round", "--json", out, "--baseline-images", "0")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["per_class"]["round"]["support"] == 8


def test_several_sources_are_scored_together_each_file_once_and_one_by_one(
    tiny_bundle, labelled, synthetic_split, tmp_path
):
    """Two labs' folders at once (a file both hold counts once), with each source's own accuracy and
    recall: where a model that learned the lab shows it."""
    lab_a, lab_b = tmp_path / "lab-a", tmp_path / "lab-b"
    shutil.copytree(labelled, lab_a)
    shutil.copytree(synthetic_split / "train" / "round", lab_b / "circular")  # 24 new cells
    shutil.copytree(labelled / "LOBED", lab_b / "lobed")  # byte-identical to lab a's: counted once
    out = tmp_path / "two.json"
    proc = edge(
        "eval", tiny_bundle, lab_a, lab_b, "--map", "circular=round", "--json", out, "--baseline-images", "0"
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["n"] == 40 + 24
    a, b = (report["per_source"][f"{tmp_path.name}/{name}"] for name in ("lab-a", "lab-b"))
    assert a["n"] == 40 and b["n"] == 24
    assert set(a["recall"]) == set(SPELLINGS) and set(b["recall"]) == {"round"}
    assert "source " in proc.stdout


def test_eval_counts_unreadable_files_apart_and_exits_1(tiny_bundle, labelled, tmp_path):
    root = tmp_path / "with-bad"
    shutil.copytree(labelled, root)
    (root / "dense" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    out = tmp_path / "eval.json"
    proc = edge("eval", tiny_bundle, root, "--json", out, "--baseline-images", "0")
    assert proc.returncode == 1
    assert f"error: {root / 'dense' / 'broken.png'}: truncated PNG" in proc.stderr
    report = json.loads(out.read_text())
    assert report["n"] == 40 and report["n_failed"] == 1 and "speedup" not in report


def test_label_matching_ignores_case_underscores_and_hyphens(tmp_path):
    assert normalize_label("Seg-Neutrophil") == normalize_label("seg_neutrophil") == "segneutrophil"
    labels = ["basophil", "seg_neutrophil"]
    for folder in ("BASOPHIL", "Seg-Neutrophil"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.jpg").write_bytes(b"x")
    images = scan_labelled(tmp_path, labels)
    assert images.targets.tolist() == [0, 1] and [i.folder for i in images.items] == [
        "BASOPHIL",
        "Seg-Neutrophil",
    ]
    (tmp_path / "lymphocyte").mkdir()
    with pytest.raises(DataError, match="lymphocyte match no label"):
        scan_labelled(tmp_path, labels)


def test_empty_or_missing_labelled_dir(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        scan_labelled(tmp_path / "nope", ["a"])
    (tmp_path / "a").mkdir()
    with pytest.raises(DataError, match="no images found"):
        scan_labelled(tmp_path, ["a"])
    assert images_in(tmp_path) == []


def test_links_never_count_a_file_twice_nor_leave_the_folder(tiny_bundle, labelled, tmp_path):
    """`ln -s . DIR/myeloblast/self` gave n=450 for 50 images, `ln -s ..` 21.9 % accuracy (issue 15)."""
    root = tmp_path / "linked"
    shutil.copytree(labelled, root)
    (root / "Round" / "self").symlink_to(".", target_is_directory=True)
    (root / "Round" / "parent").symlink_to("..", target_is_directory=True)
    (root / "LOBED" / "outside").symlink_to(labelled / "dense", target_is_directory=True)
    plain, linked = tmp_path / "plain.json", tmp_path / "linked.json"
    assert edge("eval", tiny_bundle, labelled, "--json", plain, "--baseline-images", "0").returncode == 0
    proc = edge("eval", tiny_bundle, root, "--json", linked, "--baseline-images", "0")
    assert proc.returncode == 0, proc.stderr
    a, b = json.loads(plain.read_text()), json.loads(linked.read_text())
    assert b["n"] == a["n"] == 40
    assert b["accuracy"] == a["accuracy"] and b["confusion"] == a["confusion"]


def test_macro_averages_are_over_the_classes_that_have_cells():
    # Issue 23: edge eval averaged F1 over every class of the bundle, those with no cell too (0.113 on
    # tecom-wbc for a 9-class bundle and 5 classes of cells); the average is over classes with cells.
    from edge.metrics import classification_report, format_report

    labels = ["a", "b", "c", "d"]
    report = classification_report([0, 0, 1, 1], [0, 0, 1, 2], labels)  # c predicted once, d never
    f1 = report["per_class"]
    assert report["macro_classes"] == ["a", "b"]
    assert report["macro_f1"] == pytest.approx((f1["a"]["f1"] + f1["b"]["f1"]) / 2)
    assert report["macro_recall"] == pytest.approx(0.75)
    assert "macro-F1 0.8333 (over the 2 classes with cells)" in format_report(report)
    full = classification_report([0, 1, 2, 3], [0, 1, 2, 3], labels)
    assert full["macro_f1"] == 1.0 and "(over" not in format_report(full)
