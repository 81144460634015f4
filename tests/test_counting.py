"""Every cell counted once (issue 23): a cell held in view is one cell, in cell mode and in field mode;
a new count needs another cell (the stage moved, the next image). Frames of a cell already counted
are classified and shown, but are no row, no review-queue entry, no differential count and no archive
image. A camera counts in field mode unless told otherwise; image files in cell mode."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.daemon.config import load_config
from edge.daemon.modes import CellMode
from edge.daemon.sources import open_source
from edge.results.reviews import ReviewBook
from edge.synthetic import make_dataset, render_field
from tests.daemon_cli import edge_run


def noisy(image: np.ndarray, rng) -> np.ndarray:
    """A camera's frame of `image`: the same view with sensor noise."""
    return np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)


def is_new(mode: CellMode, image: np.ndarray) -> bool:
    """As the processor does: cut the frame's cell, then (once it is classified) settle whether it is new."""
    crops = mode.crops(image)
    mode.settle(crops)
    return crops[0].new


def test_a_cell_held_in_view_is_counted_once_and_the_next_cell_again():
    rng = np.random.default_rng(3)
    field, _ = render_field(rng, 640, 480, center_class="lobed")
    mode = CellMode(0.5)
    assert [is_new(mode, noisy(field, rng)) for _ in range(20)] == [True] + [False] * 19
    # the stage moves: the cell stays in the centred square (side 240) until the view moved by half
    # of it, then the cell in the centre is another one
    moved = [is_new(mode, noisy(np.roll(field, dx, axis=1), rng)) for dx in range(20, 161, 20)]
    assert moved == [False] * 6 + [True, False]
    # another image (a replay's or a hot folder's next file): another cell
    other, _ = render_field(rng, 640, 480, center_class="round")
    assert [is_new(mode, other), is_new(mode, other)] == [True, False]
    assert (mode.frames, mode.counted) == (30, 3)
    mode.close()


@pytest.mark.parametrize(
    "uri, mode, chosen",
    [
        ("sim", "auto", "field"),
        ("picamera2", "auto", "field"),
        ("opencv:0", "auto", "field"),
        ("replay:cells/", "auto", "cell"),
        ("folder:/srv/export", "auto", "cell"),
        ("picamera2", "cell", "cell"),
        ("replay:frames/", "field", "field"),
    ],
)
def test_a_camera_counts_in_field_mode_and_image_files_in_cell_mode(uri, mode, chosen):
    config = load_config(overrides={"source": {"uri": uri}, "pipeline": {"mode": mode}})
    assert config.mode == chosen
    assert load_config(overrides={"source": {"uri": uri}}).pipeline.mode == "auto"  # the default


def test_the_simulated_microscope_holds_a_cell_still_before_moving_on():
    config = load_config(overrides={"source": {"uri": "sim", "fps": 10.0, "sim": {"dwell_s": 0.5}}})
    source = open_source(config.source)
    source.open()
    frames = [source.read().image for _ in range(10)]
    same = [np.array_equal(frames[0], f) for f in frames]
    assert same == [True] * 5 + [False] * 5 and all(np.array_equal(frames[5], f) for f in frames[5:])


def one_cell_folder(root: Path, image: np.ndarray) -> Path:
    folder = root / "one"
    folder.mkdir()
    cv2.imwrite(str(folder / "cell.png"), image)
    return folder


def run_and_check_one_cell(tmp_path: Path, args: list, seconds: float) -> dict:
    """`edge run ARGS --duration SECONDS` at 10 fps, then what was kept: one cell, one of everything."""
    db = tmp_path / "r.db"
    r = edge_run(*args, "--loop", "--fps", 10, "--duration", seconds, "--db", db, "--http", "off",
                 "--session", "ONE", "--summary-json", tmp_path / "s.json", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((tmp_path / "s.json").read_text())
    with sqlite3.connect(db) as con:
        frames = con.execute("SELECT COUNT(*) FROM frames WHERE status = 'classified'").fetchone()[0]
        rows = con.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    book = ReviewBook.existing(db)
    queue = book.queue("ONE", book.alert_classes("ONE"))
    book.close()
    assert frames >= 5 * seconds  # the cell was seen in every frame...
    assert (rows, len(queue), summary["results"]) == (1, 1, 1)  # ...and is one cell
    assert len(list((tmp_path / "flagged" / "ONE").glob("*.jpg"))) == 1
    return summary


@pytest.mark.parametrize("mode", ["cell", "field"])
def test_one_still_cell_replayed_is_one_cell_in_both_modes(tiny_bundle, tmp_path, mode):
    image, _ = render_field(np.random.default_rng(0), 640, 480, center_class="granular")
    labels = json.loads((tiny_bundle / "manifest.json").read_text())["labels"]
    config = tmp_path / "c.toml"  # every class flagged: the cell is in the review queue and archived
    # and an unsure cell counted too (count_uncertain), so the differential holds it: once
    config.write_text(
        f"[archive]\nalert_classes = {json.dumps(labels)}\nmin_free_mb = 0\n"
        "[differential]\ncount_uncertain = true\n"
    )
    folder = one_cell_folder(tmp_path, image)
    args = ["--config", config, "--bundle", tiny_bundle, "--source", f"replay:{folder}", "--mode", mode]
    summary = run_and_check_one_cell(tmp_path, args, 3)
    assert sum(summary["differential"].values()) + summary["unknown"] == 1


def test_a_replay_of_n_different_cells_counts_n(tiny_bundle, tmp_path):
    cells = make_dataset(tmp_path / "cells", per_class=4, seed=8)  # 20 single-cell images
    db = tmp_path / "r.db"
    r = edge_run("--bundle", tiny_bundle, "--source", f"replay:{cells}", "--db", db, "--http", "off",
                 "--region", "1.0", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT mode FROM sessions").fetchone()[0] == "cell"  # image files: cell mode
        assert con.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 20


# -- the goal of issue 23, on a real cell -------------------------------------------------------------


@pytest.mark.realdata
@pytest.mark.parametrize("mode", ["cell", "field"])
def test_goal_one_real_cell_10_s_at_10_fps_is_one_cell(realdata, tmp_path, mode):
    """`edge run --source replay:ONE --loop --fps 10 --duration 10` on one myeloblast (an alert class,
    so it waits in the review queue), with the default bundles: 1 cell counted, 1 row in the queue."""
    image = sorted((realdata / "blood-5class" / "val" / "myeloblast").iterdir())[0]
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(image, folder)
    summary = run_and_check_one_cell(tmp_path, ["--source", f"replay:{folder}", "--mode", mode], 10)
    assert summary["differential"]["myeloblast"] + summary["unknown"] == 1


@pytest.mark.realdata
def test_a_replay_of_real_single_cell_images_counts_each(realdata, tmp_path):
    folder = tmp_path / "cells"
    folder.mkdir()
    for cls in ("basophil", "monocyte", "myeloblast", "seg_neutrophil", "erythroblast"):
        for path in sorted((realdata / "blood-5class" / "val" / cls).iterdir())[:6]:
            shutil.copy(path, folder / f"{cls}_{path.name}")
    db = tmp_path / "r.db"
    r = edge_run("--source", f"replay:{folder}", "--db", db, "--http", "off", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 30
