"""Reviews and sign-off on a real results.db: the queue, append-only reviews that never touch the
model's rows, what "verified" counts, signing, re-opening, and an old database gaining the tables."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge.daemon.differential import wilson_interval
from edge.lab.slide import load_slide
from edge.results.reviews import ReviewBook, ReviewError
from edge.results.schema import SCHEMA
from edge.results.store import ResultStore
from tests.lab_slides import LABELS, write_slide

ALERTS = ["myeloblast"]
CHOICES = [*LABELS, "unknown"]
CELLS = (
    [("seg_neutrophil", 0.99, False)] * 12
    + [("monocyte", 0.98, False)] * 4
    + [("basophil", 0.55, True)] * 2
    + [("myeloblast", 0.97, False)] * 2
    + [("erythroblast", 0.99, False)] * 3
    + [("unknown", 0.3, True)]
)


@pytest.fixture()
def slide_db(tmp_path) -> Path:
    db = tmp_path / "results.db"
    write_slide(db, "SLIDE-1", CELLS)
    return db


def model_labels(db: Path) -> list[str]:
    with sqlite3.connect(db) as con:
        return [r[0] for r in con.execute("SELECT label FROM results ORDER BY id")]


def test_an_existing_results_db_gains_the_review_tables(tmp_path):
    db = tmp_path / "old.db"
    old_schema = SCHEMA.split("-- A technician's look")[0]  # what results.db held before reviews
    with sqlite3.connect(db) as con:
        con.executescript(old_schema)
        con.execute("INSERT INTO sessions VALUES ('S', 1, NULL, 'x', 'b', 'sim', 'cell', 'h', '{}')")
    ResultStore(db).close()
    with sqlite3.connect(db) as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"reviews", "signoffs", "results", "sessions"} <= tables
        assert con.execute("SELECT id FROM sessions").fetchall() == [("S",)]


def test_queue_puts_alert_classes_then_unknown_then_uncertain_and_reviews_append(slide_db):
    book = ReviewBook(slide_db)
    queue = book.queue("SLIDE-1", ALERTS)
    assert [c.reason for c in queue] == ["alert_class"] * 2 + ["unknown"] + ["uncertain"] * 2
    assert [c.label for c in queue] == ["myeloblast", "myeloblast", "unknown", "basophil", "basophil"]
    before = model_labels(slide_db)
    cell = queue[3].id
    book.review("SLIDE-1", cell, "monocyte", "A. Tech", CHOICES)
    book.review("SLIDE-1", cell, "basophil", "B. Lead", CHOICES)  # a second look: the latest wins
    assert model_labels(slide_db) == before  # the model's answer is never overwritten
    with sqlite3.connect(slide_db) as con:
        rows = con.execute("SELECT result_id, label, reviewer FROM reviews ORDER BY id").fetchall()
    assert rows == [(cell, "monocyte", "A. Tech"), (cell, "basophil", "B. Lead")]
    assert book.latest_reviews("SLIDE-1")[cell].label == "basophil"
    # reviewed cells go to the back of the queue, the rest keep their order
    assert [c.id for c in book.queue("SLIDE-1", ALERTS)][-1] == cell


@pytest.mark.parametrize(
    "cell, label, reviewer, status",
    [(1, "lymphocyte", "A. Tech", 400), (1, "monocyte", "  ", 400), (9999, "monocyte", "A", 404)],
)
def test_bad_reviews_are_refused_with_a_reason(slide_db, cell, label, reviewer, status):
    book = ReviewBook(slide_db)
    with pytest.raises(ReviewError) as err:
        book.review("SLIDE-1", cell, label, reviewer, CHOICES)
    assert err.value.status == status and "\n" not in str(err.value)


def test_signing_needs_every_queued_cell_and_locks_reviews_until_reopened(slide_db):
    book = ReviewBook(slide_db)
    queue = book.queue("SLIDE-1", ALERTS)
    for c in queue[:-1]:
        book.review("SLIDE-1", c.id, c.label, "A. Tech", CHOICES)
    with pytest.raises(ReviewError, match="1 cell"):
        book.sign("SLIDE-1", "A. Tech", ALERTS)
    book.review("SLIDE-1", queue[-1].id, "monocyte", "A. Tech", CHOICES)
    state = book.sign("SLIDE-1", "A. Tech", ALERTS)
    assert state.signed and state.name == "A. Tech" and state.cells == len(CELLS)
    with pytest.raises(ReviewError, match="signed by A. Tech"):
        book.review("SLIDE-1", queue[0].id, "basophil", "B. Lead", CHOICES)
    with pytest.raises(ReviewError, match="already signed"):
        book.sign("SLIDE-1", "B. Lead", ALERTS)
    reopened = book.reopen("SLIDE-1", "B. Lead", "wrong basophil")
    assert reopened.status == "reopened" and reopened.note == "wrong basophil"
    book.review("SLIDE-1", queue[0].id, "basophil", "B. Lead", CHOICES)
    assert book.sign("SLIDE-1", "B. Lead", ALERTS).name == "B. Lead"
    with sqlite3.connect(slide_db) as con:
        log = con.execute("SELECT action, name FROM signoffs ORDER BY id").fetchall()
    assert log == [("sign", "A. Tech"), ("reopen", "B. Lead"), ("sign", "B. Lead")]


def test_cells_recorded_after_the_signature_void_it(slide_db):
    book = ReviewBook(slide_db)
    for c in book.queue("SLIDE-1", ALERTS):
        book.review("SLIDE-1", c.id, c.label, "A. Tech", CHOICES)
    book.sign("SLIDE-1", "A. Tech", ALERTS)
    write_slide(slide_db, "SLIDE-1", [("monocyte", 0.99, False)] * 2)  # the daemon continues the slide
    state = book.sign_state("SLIDE-1")
    assert state.status == "changed" and state.cells_since == 2 and not state.signed
    book.review("SLIDE-1", book.queue("SLIDE-1", ALERTS)[0].id, "myeloblast", "A. Tech", CHOICES)


def test_verified_counts_and_intervals(slide_db):
    book = ReviewBook(slide_db)
    queue = {c.label: c for c in book.queue("SLIDE-1", ALERTS)}
    book.review("SLIDE-1", queue["basophil"].id, "monocyte", "A. Tech", CHOICES)
    book.review("SLIDE-1", queue["myeloblast"].id, "unknown", "A. Tech", CHOICES)
    book.review("SLIDE-1", queue["unknown"].id, "seg_neutrophil", "A. Tech", CHOICES)
    slide = load_slide(slide_db, "SLIDE-1")
    rows = {r.cls.label: r for r in slide.rows()}
    # white cells: 12 neutrophils + 4 monocytes + 2 basophils + 2 blasts; unknown and erythroblasts not
    assert slide.white_cells(False) == 20 and slide.white_cells(True) == 20
    assert (rows["monocyte"].model.n, rows["monocyte"].verified.n) == (4, 5)
    assert (rows["basophil"].verified.n, rows["myeloblast"].verified.n) == (1, 1)
    assert (rows["seg_neutrophil"].verified.n, slide.unknown) == (13, (1, 1))
    assert rows["erythroblast"].per_100_white and rows["erythroblast"].verified.percent == pytest.approx(15.0)
    low, high = wilson_interval(5, 20)
    assert rows["monocyte"].verified.interval == pytest.approx((100 * low, 100 * high))
    assert slide.reviewed == (0, 3)
    # "verified" is one definition (edge/results/verification.py): the live page's and the report's agree
    summary = book.summary("SLIDE-1", max_age_s=0)
    decided = {"monocyte": 1, "unknown": 1, "seg_neutrophil": 1}
    assert summary["verified"] == slide.verification.verified == decided
    assert (summary["reviewed"], summary["queued"]) == (slide.verification.reviewed, 5) == (3, 5)


# -- a review that means something (issue 23) -------------------------------------------------------


def test_nothing_is_verified_before_a_review_and_reviewed_counts_the_queue(slide_db):
    book = ReviewBook(slide_db)
    summary = book.summary("SLIDE-1", max_age_s=0)
    # before any review nothing is verified: not the model's count (12 neutrophils, 4 monocytes...)
    assert summary["verified"] == {} and load_slide(slide_db, "SLIDE-1").verification.verified == {}
    assert (summary["reviewed"], summary["queued"], summary["text"]) == (0, 5, "reviewed 0 of 5")
    cell = book.queue("SLIDE-1", ALERTS)[0]
    book.review("SLIDE-1", cell.id, "myeloblast", "A. Tech", CHOICES, seconds=2.5)
    summary = book.summary("SLIDE-1", max_age_s=0)
    assert summary["verified"] == {"myeloblast": 1} and summary["text"] == "reviewed 1 of 5"


def test_a_decision_faster_than_a_look_is_recorded_but_decides_nothing(slide_db):
    book = ReviewBook(slide_db)
    queue = book.queue("SLIDE-1", ALERTS)
    for c in queue:  # a held Enter: every cell "confirmed" in 0.15 s
        review = book.review("SLIDE-1", c.id, c.label, "A. Tech", CHOICES, seconds=0.15)
        assert review.too_fast
    with sqlite3.connect(slide_db) as con:
        times = [r[0] for r in con.execute("SELECT seconds FROM reviews ORDER BY id")]
    assert times == [0.15] * len(queue)  # recorded, with the time each took
    v = book.verification("SLIDE-1")
    assert (v.verified, v.reviewed, v.too_fast, v.pending) == ({}, 0, 5, 5)
    assert all(c.review is None and c.hasty.too_fast for c in book.queue("SLIDE-1", ALERTS))
    with pytest.raises(ReviewError, match="5 cell.* not reviewed yet .*5 decided too fast"):
        book.sign("SLIDE-1", "A. Tech", ALERTS)
    # a look: the cell is decided, and a later hasty press does not undo it
    first = queue[0]
    book.review("SLIDE-1", first.id, "monocyte", "A. Tech", CHOICES, seconds=1.8)
    book.review("SLIDE-1", first.id, "basophil", "A. Tech", CHOICES, seconds=0.05)
    decided = next(c for c in book.queue("SLIDE-1", ALERTS) if c.id == first.id)
    assert decided.review.label == "monocyte" and decided.hasty.label == "basophil"
    assert book.verification("SLIDE-1").verified == {"monocyte": 1}
    # untimed reviews (recorded before decisions were timed) still decide
    for c in book.queue("SLIDE-1", ALERTS)[:4]:
        book.review("SLIDE-1", c.id, c.label, "A. Tech", CHOICES)
    assert book.sign("SLIDE-1", "A. Tech", ALERTS).signed


@pytest.mark.parametrize(
    "name, reason",
    [
        (None, "expected a string"),
        ("", "required, and not blank"),
        (" \t ", "required, and not blank"),
        ("A\x00Tech", "printable"),
        ("\u202eevil", "printable"),
        ("x" * 81, "at most 80"),
        (["A. Tech"], "expected a string"),
    ],
)
def test_a_reviewer_name_is_required_non_blank_and_printable(slide_db, name, reason):
    book = ReviewBook(slide_db)
    cell = book.queue("SLIDE-1", ALERTS)[0].id
    for act in (
        lambda: book.review("SLIDE-1", cell, "monocyte", name, CHOICES),
        lambda: book.sign("SLIDE-1", name, ALERTS),
    ):
        with pytest.raises(ReviewError, match=reason) as err:
            act()
        assert err.value.status == 400 and "\n" not in str(err.value)
    with sqlite3.connect(slide_db) as con:
        assert con.execute("SELECT COUNT(*) FROM reviews").fetchone()[0] == 0


def sign_all(book: ReviewBook) -> None:
    for c in book.queue("SLIDE-1", ALERTS):
        book.review("SLIDE-1", c.id, c.label, "A. Tech", CHOICES)
    book.sign("SLIDE-1", "A. Tech", ALERTS)


@pytest.mark.parametrize("note", ["", "   ", None])
def test_a_reopen_needs_a_reason(slide_db, note):
    book = ReviewBook(slide_db)
    sign_all(book)
    with pytest.raises(ReviewError, match="reason") as err:
        book.reopen("SLIDE-1", "B. Lead", note)
    assert err.value.status == 400 and book.sign_state("SLIDE-1").signed


def test_new_cells_that_void_a_signature_record_a_reopen_with_the_first_change(slide_db):
    book = ReviewBook(slide_db)
    sign_all(book)
    write_slide(slide_db, "SLIDE-1", [("myeloblast", 0.97, False)])  # the daemon continues the slide
    assert book.sign_state("SLIDE-1").status == "changed"
    covered = book.queue("SLIDE-1", ALERTS)[-1]  # a cell the signature covered
    book.review("SLIDE-1", covered.id, "monocyte", "B. Lead", CHOICES)
    book.review("SLIDE-1", covered.id, "basophil", "B. Lead", CHOICES)
    with sqlite3.connect(slide_db) as con:
        log = con.execute("SELECT action, name, note FROM signoffs ORDER BY id").fetchall()
    assert [row[:2] for row in log] == [("sign", "A. Tech"), ("reopen", "B. Lead")]  # recorded once
    assert "1 cell(s) recorded after A. Tech signed" in log[1][2]
    new = book.queue("SLIDE-1", ALERTS)[0]
    book.review("SLIDE-1", new.id, "myeloblast", "B. Lead", CHOICES)
    assert book.sign("SLIDE-1", "B. Lead", ALERTS).signed
