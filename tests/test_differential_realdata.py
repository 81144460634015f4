"""The committed differential bundle on real data (issue 13): the numbers its model card states, on the
sources it was trained on, on a microscope it never saw (tecom-wbc), after site calibration, on debris
cut from real fields, and the daemon on normal blood. Skipped, with the reason, where
../shared/data (EDGE_DATA_DIR) is absent.

The bounds are the measured values (docs/differential.md) rounded down (up for the false-blast rates)
by about one cell, so a changed model or preprocessing that loses ground fails here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge.bundle import Bundle
from edge.daemon.config import DEFAULT_BUNDLE
from edge.site import ALERT_WITHHELD
from tests.daemon_cli import edge_cli, replay_summary

pytestmark = pytest.mark.realdata
ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "models" / "differential-int8"
LABELS = [
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "myeloblast",
    "neutrophil",
    "platelet",
]

# measured (docs/differential.md), rounded by about a cell; a rejected cell counts as wrong
VAL_ACCURACY = 0.971  # 97.25 % of 1,999
MYELOBLAST_RECALL = 0.985  # 99.0 % of 200
NEUTROPHIL_RECALL_EACH_SOURCE = 0.97  # 97.5 % (pbc-8class), 99.0 % (blood-5class)
TECOM_ACCURACY = 0.555  # 56.0 % of 300: far below the goal of 85 %
# normal cells called myeloblast: none without a flag, since the gate flags every cell of a microscope
# that differs; without the gate's flag, 21.0 % (pinned so that it can only improve)
TECOM_FALSE_BLAST_WITHOUT_GATE = 0.215
TECOM_ADAPTED_ACCURACY = 0.885  # 89.1 % of the 229 cells not used to adapt
BCCD_FRAMES_ACCURACY = 0.665  # 66.8 % of the 277 labelled cells of bccd-frames, uncalibrated
BCCD_FRAMES_FALSE_BLAST_WITHOUT_GATE = 0.055  # 5.4 %
DEBRIS_REJECTED_OR_FLAGGED = 0.99  # 100 % of 457 (3.3 % rejected; the rest flagged by the gate)
BCCD_WBC_FALSE_BLAST_WITHOUT_GATE = 0.045  # 4.0 % of BCCD's 300 white cells


def evaluate(tmp_path: Path, *args) -> dict:
    out = tmp_path / f"eval-{len(list(tmp_path.glob('eval-*.json')))}.json"
    done = edge_cli("eval", *args, "--json", out, "--baseline-images", "0", timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(out.read_text())


def test_the_differential_is_the_daemons_default_and_rejects():
    bundle = Bundle.load(BUNDLE)
    assert DEFAULT_BUNDLE == BUNDLE.name and bundle.labels == LABELS
    assert bundle.manifest.rejection is not None and bundle.manifest.embedding is not None
    assert bundle.preprocess_spec.color == "white_balance"
    assert bundle.manifest.input.dtype == "uint8" and bundle.manifest.model["precision"] == "int8"


def test_the_training_sources_each_lab_alike(realdata, tmp_path):
    r = evaluate(
        tmp_path,
        BUNDLE,
        realdata / "pbc-8class" / "val",
        realdata / "blood-5class" / "val",
        "--map",
        "seg_neutrophil=neutrophil",
    )
    assert r["accuracy"] >= VAL_ACCURACY  # a rejected cell counts as wrong
    assert r["per_class"]["myeloblast"]["recall"] >= MYELOBLAST_RECALL
    sources = r["per_source"]
    assert sources["pbc-8class/val"]["recall"]["neutrophil"] >= NEUTROPHIL_RECALL_EACH_SOURCE
    assert sources["blood-5class/val"]["recall"]["neutrophil"] >= NEUTROPHIL_RECALL_EACH_SOURCE


def gate_fired(r: dict) -> None:
    """The gate called the microscope different within 50 white cells, so no blast goes unflagged."""
    assert r["site"]["decision"] == "differs" and r["site"]["cells_checked"] <= 50, r["site"]
    assert r["false_blast"]["false_blast"] == 0


def test_a_microscope_it_never_saw(realdata, tmp_path):
    r = evaluate(tmp_path, BUNDLE, realdata / "tecom-wbc")
    assert r["accuracy"] >= TECOM_ACCURACY
    gate_fired(r)
    assert r["false_blast"]["false_blast_rate_without_gate"] <= TECOM_FALSE_BLAST_WITHOUT_GATE


def test_whole_fields_of_a_microscope_it_never_saw(realdata, tmp_path):
    frames = realdata / "bccd-frames"
    r = evaluate(tmp_path, BUNDLE, "--frames", frames / "JPEGImages", "--labels", frames / "wbc-labels.csv")
    assert r["n"] == 277 and r["accuracy"] >= BCCD_FRAMES_ACCURACY
    gate_fired(r)
    assert r["false_blast"]["false_blast_rate_without_gate"] <= BCCD_FRAMES_FALSE_BLAST_WITHOUT_GATE


def test_site_calibration_with_twenty_cells_a_class(realdata, tmp_path):
    site, rest = tmp_path / "site", tmp_path / "rest"
    split = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "split_site.py"), realdata / "tecom-wbc", "--per-class", "20"]
        + ["--at-most-half", "--site", str(site), "--rest", str(rest)],
        capture_output=True,
        text=True,
    )
    assert split.returncode == 0, split.stderr
    adapted = tmp_path / "differential-tecom"
    done = edge_cli("adapt", BUNDLE, site, "--out", adapted, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    record = Bundle.load(adapted).manifest.calibration["site_adaptation"]
    assert record["after"]["accuracy"] >= record["before"]["accuracy"]
    r = evaluate(tmp_path, adapted, rest)  # the cells not used to adapt
    assert r["accuracy"] >= TECOM_ADAPTED_ACCURACY


def test_debris_from_real_fields_is_rejected_or_flagged(realdata, tmp_path):
    sets = tmp_path / "bccd-sets"
    made = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "make_bccd_sets.py"),
            realdata / "bccd-frames",
            "--out",
            str(sets),
        ],
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    for kind in ("debris/rbc_only", "debris/background", "debris/blurred", "wbc/wbc"):
        assert any((sets / kind).iterdir())
    r = evaluate(tmp_path, BUNDLE, sets / "debris")
    folders = r["should_be_rejected"]["folders"]
    assert set(folders) == {"rbc_only", "background", "blurred"}
    assert r["should_be_rejected"]["rejected_or_flagged_fraction"] >= DEBRIS_REJECTED_OR_FLAGGED
    # the white cells of the same fields (normal blood, another microscope): few called a blast
    wbc = evaluate(tmp_path, BUNDLE, sets / "wbc")
    gate_fired(wbc)
    assert wbc["false_blast"]["false_blast_rate_without_gate"] <= BCCD_WBC_FALSE_BLAST_WITHOUT_GATE


@pytest.mark.parametrize("mode", ["cell", "field"])
def test_the_daemon_gives_no_blast_figure_on_an_uncalibrated_microscope(realdata, tmp_path, mode):
    """The daemon on BCCD's 292 fields of normal blood, a microscope the bundle never saw (the 5-class
    model said "ALERT blast fraction: 52 % myeloblast"; last round's differential gave 13.5 %, with
    no word that the microscope was never calibrated). The gate finds it differs within 50 cells:
    every cell goes to review, and the blast figure is withheld with the reason, in either mode."""
    _, s = replay_summary(BUNDLE, realdata / "bccd-frames" / "JPEGImages", tmp_path, "--mode", mode)
    assert s["frames_classified"] == 292 and s["alerts"] == []
    assert s["site"]["decision"] == "differs" and s["site"]["cells_checked"] <= 50, s["site"]
    (blast,) = [a for a in s["alert_rules"] if a["name"] == "blast fraction"]
    assert blast["withheld"] == ALERT_WITHHELD and not blast["active"], blast
