"""Folder scan, splits, fingerprint, near-duplicates, the preprocess cache, and bad input at the CLI."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from convert.cache import load_images
from convert.data import near_duplicates, perceptual_hashes, stratified_kfold, stratified_split
from edge.dataset import scan_labelled
from edge.errors import DataError
from edge.preprocess import PreprocessSpec, load_image, preprocess_file
from edge.synthetic import make_dataset

ROOT = Path(__file__).resolve().parents[1]
EDGE = Path(sys.executable).with_name("edge")


def _hashes(files):
    return [hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in files]


@pytest.fixture()
def small(tmp_path) -> Path:
    make_dataset(tmp_path / "d", per_class=6, seed=5)
    return tmp_path / "d"


def test_scan_counts_and_ignores_non_images(small):
    (small / "round" / "notes.txt").write_text("not an image")
    folder = scan_labelled(small)
    assert folder.labels == sorted(p.name for p in small.iterdir())
    assert set(folder.counts().values()) == {6}
    assert [p.name for p in folder.ignored] == ["notes.txt"]
    assert all(p.suffix != ".txt" for p in folder.files)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: None, "no class subfolders"),
        (lambda d: (d / "only").mkdir(), "only one class"),
        (lambda d: [(d / n).mkdir() for n in ("a", "b")], "has no images"),
    ],
)
def test_scan_fatal_cases(tmp_path, make, message):
    root = tmp_path / "data"
    root.mkdir()
    make(root)
    with pytest.raises(DataError, match=message):
        scan_labelled(root)


def test_val_folder_must_have_the_training_classes(small, tmp_path):
    make_dataset(tmp_path / "v", per_class=2, seed=9)
    shutil.rmtree(tmp_path / "v" / "round")
    from convert.pipeline import scan_splits
    from convert.train import TrainConfig

    with pytest.raises(DataError, match="do not match"):
        scan_splits(TrainConfig(data_dir=str(small), out=str(tmp_path / "run"), val_dir=str(tmp_path / "v")))


def test_train_config_replays_known_keys_and_refuses_unknown_ones(small, tmp_path):
    """`edge train --config` used to drop keys it did not know; now each is one line naming it."""
    from convert.train import TrainConfig

    old = {"data_dir": str(small), "out": str(tmp_path / "run"), "epochs": 1, "preprocess": {"size": 224}}
    cfg = TrainConfig.from_dict(old)  # a config.json of an older run: one folder, not a list
    assert cfg.data_dir == [str(small)] and cfg.fine_tune_epochs == 1 and cfg.spec().size == 224
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg  # what config.json holds replays as it was
    for bad, message in (
        ({"learning_rate": 0.1}, "run/config.json: learning_rate: Extra inputs are not permitted"),
        ({"loss": "hinge"}, "loss: Input should be 'ce' or 'focal'"),
        ({"batch_size": 0}, "batch_size: Input should be greater than or equal to 1"),
        ({"preprocess": {"clahe_tile_grid": 0}}, "preprocess (size from img_size): clahe_tile_grid"),
        ({"folds": 5, "val_dir": [str(small)]}, "leave out --val-dir"),
    ):
        with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")) as refused:
            TrainConfig.from_dict({**old, **bad}, "run/config.json")
        assert "\n" not in str(refused.value)


def test_the_union_of_splits_has_the_fingerprint_of_the_whole_folder(small):
    """A run's data_fingerprint (all its images) compares with any folder's, by the one method."""
    from edge.hashing import fingerprint

    whole = scan_labelled(small)
    train, val = stratified_split(whole.targets, 0.3, seed=0)
    parts = [*whole.subset(train).entries(), *whole.subset(val).entries()]
    assert fingerprint(parts) == whole.fingerprint() != whole.subset(train).fingerprint()


def test_stratified_split_and_kfold_keep_proportions():
    targets = np.repeat(np.arange(3), [50, 30, 20])
    tr, va = stratified_split(targets, 0.2, seed=1)
    assert len(set(tr) & set(va)) == 0 and len(tr) + len(va) == 100
    assert np.bincount(targets[va]).tolist() == [10, 6, 4]
    folds = stratified_kfold(targets, 5, seed=1)
    seen = np.concatenate([va for _, va in folds])
    assert sorted(seen.tolist()) == list(range(100))
    for tr, va in folds:
        assert np.bincount(targets[va]).tolist() == [10, 6, 4]
        assert len(set(tr) & set(va)) == 0


def test_fingerprint_changes_with_content(small):
    folder = scan_labelled(small)
    before = folder.fingerprint()
    assert scan_labelled(small).fingerprint() == before
    victim = folder.files[0]
    victim.write_bytes(victim.read_bytes() + b"\0")
    assert scan_labelled(small).fingerprint() != before


@pytest.mark.train
def test_near_duplicates_found_across_splits(tmp_path):
    make_dataset(tmp_path / "train", per_class=5, seed=1)
    make_dataset(tmp_path / "val", per_class=3, seed=2)
    copied = sorted((tmp_path / "train" / "lobed").iterdir())[0]
    shutil.copy(copied, tmp_path / "val" / "lobed" / "copy.png")
    spec = PreprocessSpec(size=64)
    tr, va = scan_labelled(tmp_path / "train"), scan_labelled(tmp_path / "val")
    tr_img = load_images(tr.files, _hashes(tr.files), spec).images
    va_img = load_images(va.files, _hashes(va.files), spec).images
    pairs = near_duplicates(perceptual_hashes(tr_img), perceptual_hashes(va_img), tr.files, va.files)
    assert any(
        p.val_file.endswith("copy.png") and p.train_file == str(copied) and p.distance == 0 for p in pairs
    )


def test_cache_skips_corrupt_and_reuses_arrays(small, tmp_path):
    bad = small / "kidney" / "broken.jpg"
    good_jpeg = next(p for p in (small / "kidney").iterdir())
    import cv2

    ok, buf = cv2.imencode(".jpg", load_image(good_jpeg))
    bad.write_bytes(buf.tobytes()[: len(buf) // 2])  # truncated JPEG
    folder = scan_labelled(small)
    spec = PreprocessSpec(size=48)
    first = load_images(folder.files, _hashes(folder.files), spec, tmp_path / "cache")
    assert [Path(f).name for f, _ in first.skipped] == ["broken.jpg"]
    assert "truncated" in first.skipped[0][1]
    assert len(first.images) == len(folder) - 1 and not first.from_cache
    again = load_images(folder.files, _hashes(folder.files), spec, tmp_path / "cache")
    assert again.from_cache and np.array_equal(again.images, first.images)
    assert np.array_equal(again.ok, first.ok)


def _assert_identical(files, clf):
    """Training cache == preprocess_file == the Classifier's preprocess of the decoded frame."""
    spec = clf.spec
    cached = load_images(files, _hashes(files), spec)
    assert not cached.skipped
    for img, f in zip(cached.images, files, strict=True):
        assert img.dtype == np.uint8 and img.shape == (spec.size, spec.size, 3)
        assert np.array_equal(img, preprocess_file(f, spec))
        assert np.array_equal(img, clf.preprocess(load_image(f)))


def _classifier(bundle_dir):
    from edge.bundle import Bundle
    from edge.predict import Classifier

    return Classifier(Bundle.load(bundle_dir))


def test_training_and_device_preprocessing_bit_identical(synthetic_split, tiny_bundle):
    _assert_identical(scan_labelled(synthetic_split / "val").files[:10], _classifier(tiny_bundle))


@pytest.mark.realdata
def test_bit_identical_on_real_jpegs(realdata, tiny_bundle):
    root = realdata / "blood-5class" / "val"
    files = [sorted((root / c).iterdir())[0] for c in sorted(os.listdir(root))]
    _assert_identical(files, _classifier(tiny_bundle))


def _edge(*args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([str(EDGE), *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


@pytest.mark.train
@pytest.mark.parametrize("layout", ["empty", "single"])
def test_cli_bad_folders_one_line_no_traceback(tmp_path, layout):
    root = tmp_path / "data"
    root.mkdir()
    if layout == "single":
        make_dataset(root, per_class=2, seed=1)
        for extra in sorted(root.iterdir())[1:]:
            shutil.rmtree(extra)
    result = _edge("train", str(root), "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert str(root) in lines[0]


def test_several_sources_with_a_class_map_count_duplicates_once_and_drop_conflicts(tmp_path):
    from convert.pipeline import scan_splits
    from convert.train import TrainConfig

    a = make_dataset(tmp_path / "lab_a", per_class=4, classes=("round", "lobed"), seed=1)
    b = make_dataset(tmp_path / "lab_b", per_class=3, classes=("round",), seed=2)
    (b / "round").rename(b / "Rund")  # lab B names the class differently: --map rund=round
    same = sorted((a / "round").iterdir())[0]
    shutil.copy(same, b / "Rund" / "copy_of_a.jpg")  # the same image in both labs: counted once
    clash = sorted((a / "lobed").iterdir())[0]
    shutil.copy(clash, b / "Rund" / "mislabelled.jpg")  # the same bytes under two labels: dropped
    cfg = TrainConfig(data_dir=[str(a), str(b)], out=str(tmp_path / "run"), class_map=["rund=round"])
    images, _ = scan_splits(cfg)
    assert images.labels == ["lobed", "round"]
    assert images.counts() == {"lobed": 3, "round": 7}  # 4 + 3 round, the copy once; the clash gone
    assert len(images.duplicates) == 1 and images.duplicates[0][1].endswith("copy_of_a.jpg")
    assert len(images.conflicts) == 1 and any("mislabelled.jpg" in f for f in images.conflicts[0])
    sources = {Path(s["path"]).name: s for s in images.sources()}
    assert sources["lab_a"]["per_class"] == {"lobed": 3, "round": 4}
    assert sources["lab_b"]["per_class"] == {"round": 3}
    assert len(sources["lab_a"]["fingerprint"]) == 64 != sources["lab_b"]["fingerprint"]


def test_links_never_count_a_file_twice_nor_reach_outside_the_folder(tmp_path):
    # Issue 15, defect 2: `ln -s . DIR/cls/self` gave n=450 for 50 images, `ln -s .. ...` 21.9 %.
    root = make_dataset(tmp_path / "val", per_class=5, classes=("round", "lobed"), seed=3)
    outside = make_dataset(tmp_path / "elsewhere", per_class=5, classes=("round",), seed=4)
    (root / "round" / "self").symlink_to(".", target_is_directory=True)
    (root / "round" / "parent").symlink_to("..", target_is_directory=True)
    (root / "lobed" / "away").symlink_to(outside / "round", target_is_directory=True)
    (root / "lobed" / "one.jpg").symlink_to(next((outside / "round").iterdir()))
    (root / "LOBED").symlink_to("lobed", target_is_directory=True)  # the same class folder twice
    images = scan_labelled(root, ["lobed", "round"])
    assert images.counts() == {"lobed": 5, "round": 5}
    assert len({os.path.realpath(p) for p in images.files}) == len(images) == 10
