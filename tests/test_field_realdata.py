"""Field mode on the real microscope fields of ../shared/data/bccd-frames (EDGE_DATA_DIR): the committed
detector bundle reproduces the numbers its manifest records, the classical baseline, BCCD's annotation
quirks, the split, and `edge run --mode field` on a still stage. Skipped, with the reason, where the
data is absent."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge.bundle import Bundle
from edge.cli import cli
from edge.detect.detector import Detector
from edge.detect.eval_run import run_on_frames
from edge.detect.evaluate import match
from edge.detect.voc import assign_splits, near_duplicates, read_voc, split_frames
from tests.daemon_cli import edge_run

pytestmark = pytest.mark.realdata
ROOT = Path(__file__).resolve().parents[1]
DETECTOR = ROOT / "models" / "wbc-detector-int8"


@pytest.fixture(scope="module")
def bccd(realdata) -> Path:
    path = realdata / "bccd-frames"
    if not (path / "Annotations").is_dir():
        pytest.skip(f"{path} not found (set EDGE_DATA_DIR)")
    return path


def test_bccd_quirks_split_and_duplicates(bccd):
    frames = read_voc(bccd)
    assert len(frames) == 292
    notes = " ".join(n for f in frames for n in f.notes)
    for name in ("BloodImage_00113", "BloodImage_00338", "BloodImage_00343"):
        assert name in notes
    assert [(a, b) for a, b, _ in near_duplicates(frames)] == [("BloodImage_00037", "BloodImage_00038")]
    assigned = assign_splits(frames)
    assert assigned["BloodImage_00037"] == assigned["BloodImage_00038"]
    val = split_frames(frames, "val", assigned)
    # the detector bundle recorded the same val frames
    recorded = Bundle.load(DETECTOR).manifest.training["split"]["val"]["files"]
    assert sorted(f.image.name for f in val) == sorted(recorded)


def test_committed_detector_reproduces_its_manifest_on_val(bccd):
    bundle = Bundle.load(DETECTOR)
    frames = read_voc(bccd)
    wanted = set(bundle.manifest.training["split"]["val"]["files"])
    run = run_on_frames(Detector(bundle), [f for f in frames if f.image.name in wanted])
    r = run.report
    recorded = {m.name: m.value for m in bundle.manifest.metrics if m.split == "bccd-frames/val"}
    assert r.ap50 == pytest.approx(recorded["ap50"], abs=1e-4)
    assert r.ap50_95 == pytest.approx(recorded["ap50_95"], abs=1e-4)
    assert r.recall == pytest.approx(recorded["recall"], abs=1e-4)
    assert r.ap50 >= 0.98 and r.recall >= 0.99 and r.precision >= 0.95  # the goals


def test_classical_baseline_on_val(bccd):
    result = CliRunner().invoke(cli, ["eval-detector", "classical", str(bccd), "--split", "val", "--json"])
    r = json.loads(result.stdout)
    assert r["frames"] == 52 and 0.9 <= r["ap50"] <= 1.0


def test_edge_detect_finds_the_annotated_white_cells(bccd):
    frame = next(f for f in read_voc(bccd) if f.stem == "BloodImage_00070")  # two white cells
    result = CliRunner().invoke(
        cli, ["detect", str(ROOT / "models" / "mobilenetv2-int8"), str(frame.image), "--json"]
    )
    record = json.loads(result.stdout.splitlines()[0])
    assert (record["width"], record["height"]) == (640, 480)
    from edge.detect.decode import Detection
    from edge.detect.voc import truth

    dets = [Detection(tuple(c["box"]), c["score"], c["kind"]) for c in record["cells"]]
    assert sum(1 for m in match(dets, truth(frame), 0.5) if m) == 2


def test_a_still_stage_counts_its_cells_once(bccd, tmp_path):
    still = tmp_path / "still"
    still.mkdir()
    shutil.copy(bccd / "JPEGImages" / "BloodImage_00070.jpg", still)
    db = tmp_path / "r.db"
    r = edge_run(
        "--mode",
        "field",
        "--bundle",
        ROOT / "models" / "mobilenetv2-int8",
        "--source",
        f"replay:{still}",
        "--loop",
        "--max-frames",
        "100",
        "--db",
        db,
        "--http",
        "off",
        "--summary-json",
        tmp_path / "s.json",
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["frames_classified"] == 100 and s["field"]["fields_seen"] == 1
    with sqlite3.connect(db) as con:
        (rows,) = con.execute("SELECT COUNT(*) FROM results").fetchone()
    assert rows == 2 == s["field"]["cells_counted"]
    assert np.isclose(s["field"]["cells_per_frame"], 2.0)


def test_field_modes_models_compute_the_same_on_one_thread_as_on_two_on_real_cells(bccd, realdata):
    """Field mode gives each model half the cores; on real fields and real cells (pbc-8class/val, every
    8th of the first 1,600; the first 100 BCCD fields) the outputs are the same bytes on 1 and 2 threads."""
    import cv2

    from edge.predict import Classifier

    cells = sorted((realdata / "pbc-8class" / "val").glob("*/*.jpg"))[::8][:200]
    fields = sorted((bccd / "JPEGImages").glob("*.jpg"))[:100]
    if not cells:
        pytest.skip(f"{realdata / 'pbc-8class' / 'val'} not found (set EDGE_DATA_DIR)")
    classifier_bundle, outputs, found = Bundle.load(ROOT / "models" / "differential-int8"), {}, {}
    for threads in (1, 2):
        classifier = Classifier.open(classifier_bundle, "cpu", threads=threads)
        got = []
        for path in cells:
            classifier.classify_images([cv2.imread(str(path))])
            got.append(np.concatenate([v.ravel() for v in classifier.backend.named_outputs().values()]))
        outputs[threads] = np.stack(got)
        detector = Detector.open(Bundle.load(DETECTOR), "cpu", threads=threads)
        found[threads] = [
            [(d.score, d.int_box()) for d in detector.detect(cv2.imread(str(f)))[0]] for f in fields
        ]
    assert len(cells) == 200 and np.array_equal(outputs[1], outputs[2])
    assert len(fields) == 100 and found[1] == found[2]
