"""What `edge run`'s summary says a full database cost (issue 24, item 3): a tiny store limit lost
every result and said "(FULL: 3 frame(s) not written, 0 lost)"; the same "0 lost" followed frames that
were dropped. Frames still waiting in memory at the end are never written: they are lost, and the line
says so; results lost to an overflowing backlog are said even when the disk had room again at the end.
The states come from a real StoreSink on a real capped ResultStore."""

from __future__ import annotations

import numpy as np

from edge.bundle import Uncertainty
from edge.commands.run import store_note
from edge.daemon.config import ConfigError, load_config
from edge.daemon.processor import CellResult, FrameResult
from edge.daemon.sinks import StoreSink
from edge.daemon.sources import Frame
from edge.predict import to_prediction
from edge.results.store import ResultStore


def fill(sink: StoreSink, n: int) -> None:
    pred = to_prediction(np.array([0.9, 0.1]), ["a", "b"], Uncertainty())
    for i in range(n):
        frame = Frame(np.zeros((8, 8, 3), np.uint8), ref=f"sim:{i}", frame_id=i)
        sink.on_frame(FrameResult(frame, [CellResult(0, (0, 0, 8, 8), (0, 0, 8, 8), pred)], {"invoke": 1.0}))


def test_the_summary_says_what_a_full_database_cost(tmp_path):
    store = ResultStore(tmp_path / "r.db", max_db_mb=0.07)  # SQLite reports the cap as a full disk
    store.start_session("s", "f" * 64, "bundle", "sim", "cell", {})
    sink = StoreSink(store, "sim")
    sink.RETRY_S, sink.BACKLOG = 0.0, 100
    fill(sink, 400)
    state = sink.state()
    assert state["state"] == "full" and state["waiting"] == 100 and state["lost"] > 0
    note = store_note(state)
    lost = state["waiting"] + state["lost"]
    assert note.startswith(f" (FULL: {lost} classified frame(s) never written, their results lost: ")
    assert "100 still waiting for room when the run ended" in note
    assert f"{state['lost']} beyond what memory holds while the disk was full" in note
    assert "0 lost" not in note

    # Room again before the end: what waited is written, what overflowed earlier is still lost.
    store.db.execute("PRAGMA max_page_count=1000000")
    sink.retry(force=True)
    state = sink.state()
    assert state["state"] == "ok" and state["waiting"] == 0 and state["lost"] > 0
    assert store_note(state) == (
        f" ({state['lost']} classified frame(s) never written, their results lost: "
        f"{state['lost']} beyond what memory holds while the disk was full)"
    )
    store.close()


def test_a_full_disk_that_cost_nothing_says_so_and_a_tiny_limit_is_refused(tmp_path):
    assert store_note({"state": "ok", "waiting": 0, "lost": 0, "last_error": ""}) == ""
    # The schema could not be written, and no frame came: nothing lost, nothing written.
    assert store_note({"state": "full", "waiting": 0, "lost": 0, "last_error": "full"}) == (
        " (FULL: nothing could be written; no result was waiting)"
    )
    # A limit below what a schema and a session need is refused before anything runs (issue 24, 3).
    cfg = tmp_path / "edge-run.toml"
    cfg.write_text("[store]\nmax_db_mb = 0.001\n")
    try:
        load_config(cfg)
    except ConfigError as exc:
        assert str(exc).startswith("store.max_db_mb: ") and "\n" not in str(exc)
    else:
        raise AssertionError("max_db_mb = 0.001 was accepted")
