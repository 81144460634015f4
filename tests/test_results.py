"""results.db kept by edge.results: a database written by an earlier release opens and carries on, with
nothing lost; an older schema gains what it lacks; a file that is not a results database is one line.

tests/fixtures/results-v3.sql is a database as fd78459 wrote it (before edge.results existed), through
that commit's ResultStore, ReviewBook and Outbox: its header says what it holds."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge.lab.slide import load_slide, pick_session
from edge.results.outbox import Outbox
from edge.results.reviews import ReviewBook
from edge.results.schema import SCHEMA, SCHEMA_VERSION, ResultsError
from edge.results.store import ResultRow, ResultStore

FIXTURE = Path(__file__).parent / "fixtures" / "results-v3.sql"
LABELS = ["basophil", "erythroblast", "monocyte", "myeloblast", "seg_neutrophil"]


@pytest.fixture()
def old_db(tmp_path) -> Path:
    db = tmp_path / "results.db"
    with sqlite3.connect(db) as con:
        con.executescript(FIXTURE.read_text(encoding="utf-8"))
    return db


def tables(db: Path) -> dict[str, str]:
    with sqlite3.connect(db) as con:
        return dict(con.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name"))


def all_columns(db: Path) -> dict[str, list[tuple[str, str]]]:
    """Each table's columns and their types (an added column's CREATE text differs; its column not)."""
    with sqlite3.connect(db) as con:
        names = [
            r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        ]
    return {t: columns(db, t) for t in names}


def test_an_old_database_ends_with_the_tables_of_a_new_one(old_db, tmp_path):
    new = tmp_path / "new.db"
    ResultStore(new).close()
    Outbox(new).close()
    before = all_columns(old_db)
    ResultStore(old_db).close()
    after = all_columns(old_db)
    assert after == all_columns(new)  # session_sites and reviews.seconds are new; nothing else changes
    assert set(after) - set(before) == {"session_sites"}
    assert after["reviews"] == before["reviews"] + [("seconds", "REAL")]
    assert {t: c for t, c in before.items() if t != "reviews"} == {
        t: after[t] for t in before if t != "reviews"
    }
    with sqlite3.connect(old_db) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 7


@pytest.mark.parametrize("has", ["session_sites", "reviews.seconds"])
def test_a_version_4_database_of_either_kind_gains_what_the_other_added(old_db, tmp_path, has):
    """Two branches each made a schema 4 (session_sites; reviews.seconds): either opens as schema 5."""
    new = tmp_path / "new.db"
    ResultStore(new).close()
    Outbox(new).close()
    with sqlite3.connect(old_db) as con:
        if has == "session_sites":
            con.execute(tables(new)["session_sites"])
        else:
            con.execute("ALTER TABLE reviews ADD COLUMN seconds REAL")
        con.execute("PRAGMA user_version = 4")
    ResultStore(old_db).close()
    assert all_columns(old_db) == all_columns(new)
    with sqlite3.connect(old_db) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5


def test_the_daemon_carries_on_a_session_of_an_old_database(old_db):
    store = ResultStore(old_db)
    store.start_session("SLIDE-B", "cd" * 32, "models/mobilenetv2-int8", "folder:/data/in", "field", {})
    assert store.next_frame_id() == 2
    assert store.session_totals() == {"frames": 2, "corrupt": 1, "cells": 2}
    counts = store.session_counts()
    assert (counts.counts, counts.confident, counts.uncertain) == (
        {"monocyte": 1, "myeloblast": 1},
        {"monocyte": 1},
        1,
    )
    assert store.done_refs("folder:/data/in") == {"f0.jpg", "broken.jpg"}
    assert store.corrupt_refs("folder:/data/in") == {"broken.jpg": "1234:5678"}  # retried once it changes
    assert store.flagged_cells({"myeloblast"}) == {(0, 1)}
    assert store.session_config("SLIDE-A")["archive"]["alert_classes"] == ["myeloblast"]
    probs = {n: 0.2 for n in LABELS}
    store.write_frame(
        2,
        1.9e9 + 2,
        "folder:/data/in",
        "f2.jpg",
        [ResultRow(0, (0, 0, 9, 9), "basophil", 0.2, probs, True, {})],
    )
    store.close()
    with sqlite3.connect(old_db) as con:
        assert con.execute(
            "SELECT id, session_id, frame_id FROM results ORDER BY id DESC LIMIT 1"
        ).fetchone() == (
            8,
            "SLIDE-B",
            2,
        )
        assert con.execute("SELECT ended IS NOT NULL FROM sessions WHERE id = 'SLIDE-B'").fetchone() == (1,)


def test_reviews_and_sign_off_of_an_old_database_carry_on(old_db):
    book = ReviewBook.existing(old_db)
    state = book.sign_state("SLIDE-A")
    assert (state.status, state.name, state.note) == ("reopened", "B. Lead", "second look")
    latest = book.latest_reviews("SLIDE-A")
    assert {i: (r.label, r.reviewer) for i, r in latest.items()} == {
        2: ("myeloblast", "B. Lead"),
        3: ("monocyte", "A. Tech"),
        4: ("unknown", "A. Tech"),
    }
    assert [s["id"] for s in book.sessions()] == ["SLIDE-B", "SLIDE-A"] == book.session_ids()
    assert book.labels("SLIDE-A") == [*LABELS, "unknown"]
    assert book.sign("SLIDE-A", "B. Lead", book.alert_classes("SLIDE-A")).signed
    book.close()
    slide = load_slide(old_db, pick_session(old_db, "SLIDE-A"))
    assert slide.sign.cells == 5 and slide.reviewed == (2, 1)  # myeloblast, unknown confirmed; basophil not
    assert dict(slide.counts(True)) == {"seg_neutrophil": 1, "myeloblast": 1, "monocyte": 2}


def test_the_mqtt_outbox_of_an_old_database_carries_on_from_its_watermark(old_db):
    outbox = Outbox(old_db, backfill=False)  # backfill applies to a first start only: this is not one
    assert outbox.acked_through("cells") == 3 and outbox.acked_through("events") == 0
    rows = outbox.rows_after("cells", 3, 10)
    assert [r["id"] for r in rows] == [4, 5, 6, 7] and rows[-1]["source_ref"] == "f0.jpg"
    assert outbox.pending("events", 0) == 1
    outbox.set_acked_through("cells", 7)
    outbox.close()
    assert Outbox(old_db).acked_through("cells") == 7


def schema_1() -> str:
    """results.db before reviews, rejection and field mode: today's schema less what was added since."""
    added = ("reason ", "rejection_score ", "track_id ", "detector_score ", "file_stat ")
    before_reviews = SCHEMA.split("-- A technician's look")[0]
    return "\n".join(line for line in before_reviews.splitlines() if not line.strip().startswith(added))


def test_a_schema_1_database_gains_the_columns_and_tables_added_since(tmp_path):
    db = tmp_path / "v1.db"
    with sqlite3.connect(db) as con:
        con.executescript(schema_1())
        con.execute("INSERT INTO sessions VALUES ('S', 1, NULL, 'x', 'b', 'sim', 'cell', 'h', '{}')")
        con.execute("INSERT INTO frames VALUES ('S', 0, 1.0, 'sim', 'sim:0', 'classified', '', 1)")
        con.execute(
            "INSERT INTO results(session_id, frame_id, crop_index, ts, box, label, confidence, probabilities,"
            " uncertain, model_sha, timings) VALUES ('S', 0, 0, 1.0, '[0,0,1,1]', 'a', 0.9, '{\"a\": 0.9}', 0, 'x', '{}')"
        )
    ResultStore(db).close()
    fresh = tmp_path / "fresh.db"
    ResultStore(fresh).close()
    for table in ("sessions", "frames", "results", "reviews", "signoffs"):
        assert columns(db, table) == columns(fresh, table), table
    with sqlite3.connect(db) as con:
        row = con.execute("SELECT label, reason, track_id, detector_score FROM results").fetchone()
        assert row == ("a", None, None, None)
        assert con.execute("SELECT file_stat FROM frames").fetchone() == (None,)
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def columns(db: Path, table: str) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as con:
        return [(r[1], r[2]) for r in con.execute(f"PRAGMA table_info({table})")]


@pytest.mark.parametrize("content", [None, b"not a database at all, just text\n" * 40, b""])
def test_a_file_that_is_not_a_results_database_is_one_line(tmp_path, content):
    db = tmp_path / "x.db"
    if content is not None:
        db.write_bytes(content)
    with pytest.raises(ResultsError) as err:
        ReviewBook.existing(db)
    assert str(db) in str(err.value) and "\n" not in str(err.value) and err.value.exit_code == 2
    assert db.exists() == (content is not None)  # never created by a reader
