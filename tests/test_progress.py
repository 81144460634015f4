"""Progress bars on every command that can run longer than a few seconds (issue 23): a bar on stderr
when a person watches it (a terminal), nothing when the output goes to a file, a pipe or a log.
Each command runs twice: with stderr on a pseudo-terminal, and captured as a script would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge.synthetic import make_dataset
from tests.terminal import edge_at_terminal

REJECT_BUNDLE = Path(__file__).resolve().parent / "fixtures" / "tiny-reject-int8"


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("cells") / "scope", per_class=8, seed=3)


def captured(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd
    )


def has_bar(stderr: str, label: str) -> bool:
    """tqdm's bar: `label:  40%|████      | 16/40 [...]`."""
    return any(
        label in line and "|" in line and "%" in line for line in stderr.replace("\r", "\n").splitlines()
    )


def test_eval_and_classify_draw_a_bar_at_a_terminal_and_nothing_in_a_pipe(tiny_bundle, cells, tmp_path):
    code, out, err = edge_at_terminal("eval", tiny_bundle, cells, "--baseline-images", 10, cwd=tmp_path)
    assert code == 0 and has_bar(err, "evaluating") and has_bar(err, "sequential baseline"), err
    assert "evaluating" not in out  # the bar is on stderr; stdout is the report
    quiet = captured("eval", tiny_bundle, cells, "--baseline-images", 10, cwd=tmp_path)
    assert quiet.returncode == 0 and "evaluating" not in quiet.stderr + quiet.stdout
    # classify: records to a file (stdout not a terminal) while a person watches stderr
    code, out, err = edge_at_terminal("classify", tiny_bundle, cells, "--csv", cwd=tmp_path)
    assert code == 0 and has_bar(err, "classifying"), err
    assert out.splitlines()[0].startswith("path,label,") and "classifying" not in out
    quiet = captured("classify", tiny_bundle, cells, "--csv", cwd=tmp_path)
    assert "classifying" not in quiet.stderr + quiet.stdout


def test_adapt_shows_each_step(cells, tmp_path):
    code, out, err = edge_at_terminal("adapt", REJECT_BUNDLE, cells, "--out", tmp_path / "a", cwd=tmp_path)
    assert code == 0, err
    for step in ("reading the site's cells", "embedding the site's cells", "scoring after calibration"):
        assert has_bar(err, step), (step, err)
    quiet = captured("adapt", REJECT_BUNDLE, cells, "--out", tmp_path / "b", cwd=tmp_path)
    assert quiet.returncode == 0 and "embedding" not in quiet.stderr + quiet.stdout


def test_report_and_review_export_of_a_slide(tmp_path):
    from tests.lab_slides import write_slide
    from tests.test_lab_report import CELLS, review_all

    db = tmp_path / "results.db"
    write_slide(db, "SLIDE-7", CELLS)
    review_all(db, "SLIDE-7", {}, sign=True)
    code, out, err = edge_at_terminal("report", "--db", db, "--out", tmp_path / "r.html", cwd=tmp_path)
    assert code == 0 and has_bar(err, "report SLIDE-7"), err
    assert out.startswith("report: ")
    code, out, err = edge_at_terminal(
        "review", "export", "--db", db, "--out", tmp_path / "site", cwd=tmp_path
    )
    assert code == 0 and has_bar(err, "exporting SLIDE-7"), err
    quiet = captured("report", "--db", db, "--out", tmp_path / "q.html", cwd=tmp_path)
    assert quiet.returncode == 0 and "SLIDE-7:" not in quiet.stderr and quiet.stderr == ""
