"""Daemon parts in-process: config validation, the drop-oldest queue, differential alerts,
the archive's disk guard, sd_notify datagrams, and the systemd unit checks."""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import subprocess
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.bundle import Uncertainty
from edge.daemon.archive import FlaggedArchive
from edge.daemon.capture import DropOldestQueue, Skipped
from edge.daemon.config import AlertRule, ArchiveConfig, ConfigError, DifferentialConfig, load_config
from edge.daemon.differential import DifferentialCount
from edge.daemon.modes import CellMode, scale_box
from edge.daemon.notify import SystemdNotifier
from edge.daemon.processor import CellResult, FrameResult
from edge.daemon.sinks import LiveView
from edge.daemon.sources import Frame
from edge.daemon.web import render_preview
from edge.predict import Prediction
from edge.preprocess import center_region
from edge.results.store import ResultRow, ResultStore

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "toml, key",
    [
        ('[source]\nfps = "fast"', "source.fps: expected a number"),
        ("[source]\nfsp = 10", "source.fsp: unknown key"),
        ("[pipeline]\nregion = 1.5", "pipeline.region: must be in (0, 1]"),
        ('[pipeline]\nmode = "zoom"', "pipeline.mode: expected auto, cell or field"),
        ("[pipeline.field]\ntrack_iou = 0", "pipeline.field.track_iou: must be in (0, 1]"),
        ("[pipeline.field]\nmax_age = 3", "pipeline.field.max_age: unknown key"),
        ('[store]\nsynchronous = "off"', "store.synchronous:"),
        ('[[differential.alerts]]\nname = "x"\nclasses = []', "differential.alerts[0].classes:"),
        (
            '[[differential.alerts]]\nname = "x"\nclasses = ["myeloblast"]\nmin_fraction = "20%"',
            "differential.alerts[0].min_fraction: expected a number",
        ),
        ("[source.picamera2]\nlores_size = [640]", "source.picamera2.lores_size:"),
        ("[source]\nmax_pixels = 0", "source.max_pixels: must be a positive number of pixels"),
        ("[source]\nmax_pixels = 1.5e7", "source.max_pixels: expected an integer"),
        ('[http]\nlisten = "0.0.0.0:8080"', "http.token:"),
        ('[http]\nlisten = "localhost"', "http.listen:"),
        ("source = 3", "source: expected a table"),
        ("[source\n", "not valid TOML"),
    ],
)
def test_config_errors_name_the_key(tmp_path, toml, key):
    path = tmp_path / "c.toml"
    path.write_text(toml + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert key in str(err.value) and "\n" not in str(err.value)


def test_example_config_is_valid_and_flags_override_it():
    c = load_config(
        ROOT / "systemd" / "edge-run.toml", {"source": {"uri": "sim", "fps": 5.0}, "http": {"listen": "off"}}
    )
    assert c.source.uri == "sim" and c.source.fps == 5.0 and c.source.picamera2.lores_format == "YUV420"
    assert c.differential.alerts[0].classes == ["myeloblast"] and c.store.synchronous == "normal"


def test_non_loopback_with_a_long_token_is_accepted():
    c = load_config(overrides={"http": {"listen": "0.0.0.0:8080", "token": "lab-page-" + "7f3a9c21"}})
    assert c.http.listen == "0.0.0.0:8080"


def _frame(i):
    return Frame(image=np.zeros((2, 2, 3), np.uint8), ref=str(i), frame_id=i)


def test_live_queue_drops_the_oldest_frame_and_counts_every_drop():
    q, stop = DropOldestQueue(3), threading.Event()
    dropped = sum(q.put(_frame(i), drop_oldest=True, stop=stop) for i in range(10))
    assert dropped == 7
    assert [q.get(0).frame_id for _ in range(3)] == [7, 8, 9]
    assert q.get(0) is None


def test_live_queue_never_drops_a_skipped_record():
    q, stop = DropOldestQueue(2), threading.Event()
    q.put(Skipped(0, "bad.jpg", "truncated", 0.0), drop_oldest=True, stop=stop)
    for i in range(1, 5):
        q.put(_frame(i), drop_oldest=True, stop=stop)
    items = [q.get(0) for _ in range(len(q))]
    assert isinstance(items[0], Skipped) and items[-1].frame_id == 4


def test_file_queue_waits_instead_of_dropping():
    q, stop = DropOldestQueue(2), threading.Event()
    for i in range(2):
        q.put(_frame(i), drop_oldest=False, stop=stop)
    t = threading.Thread(target=q.put, args=(_frame(2), False, stop))
    t.start()
    t.join(0.3)
    assert t.is_alive(), "a full file-source queue must block"
    assert q.get(1).frame_id == 0
    t.join(2)
    assert [q.get(0).frame_id for _ in range(2)] == [1, 2]


def test_cell_mode_crop_is_edge_preprocess_center_region_and_scales_to_the_main_stream():
    img = np.arange(480 * 640 * 3, dtype=np.uint32).reshape(480, 640, 3).astype(np.uint8)
    (crop,) = CellMode(0.5).crops(img)
    assert np.array_equal(crop.image, center_region(img, 0.5)) and crop.box == (200, 120, 240, 240)
    assert scale_box(crop.box, img.shape, (1520, 2028, 3)) == (634, 380, 760, 760)


def test_differential_alert_fires_at_the_fraction_only_after_min_cells():
    rule = AlertRule(name="blast fraction", classes=["myeloblast"], min_fraction=0.2, min_cells=10)
    d = DifferentialCount(DifferentialConfig(alerts=[rule]), ["myeloblast", "monocyte"])
    fired = []
    for _ in range(3):
        fired += d.add("myeloblast", False)  # 100% blasts, but only 3 cells: no alert yet
    assert not fired and not d.alerts()[0].active
    for _ in range(7):
        fired += d.add("monocyte", False)
    assert [a.name for a in fired] == ["blast fraction"] and d.alerts()[0].fraction == 0.3
    for _ in range(10):
        d.add("monocyte", False)  # 3 / 20 = 15%: below threshold again
    assert not d.alerts()[0].active
    assert d.table()[0] == {
        "label": "monocyte",
        "count": 17,
        "percent": 85.0,
        "interval_percent": [64.0, 94.8],
        "white_cell": True,
    }


def test_the_differential_is_of_white_cells_and_platelets_never_move_an_alert():
    """Erythroblasts and platelets are counted per 100 white cells, outside the 100 %: a field full of
    platelet calls neither fills a 100-cell differential nor dilutes (or raises) the blast fraction."""
    rule = AlertRule(name="blast fraction", classes=["myeloblast"], min_fraction=0.2, min_cells=10)
    labels = ["myeloblast", "neutrophil", "platelet", "erythroblast"]
    d = DifferentialCount(DifferentialConfig(alerts=[rule]), labels, ["myeloblast", "neutrophil"])
    for _ in range(50):
        d.add("platelet", False)
    for _ in range(3):
        d.add("myeloblast", False)
    for _ in range(5):
        d.add("neutrophil", False)
    assert d.total == 8 and d.confident_total == 8  # the 50 platelets are not white cells
    assert not d.alerts()[0].active and d.alerts()[0].cells == 8  # 8 white cells < min_cells 10
    fired = [a.name for _ in range(2) for a in d.add("erythroblast", False)]
    assert not fired
    fired = [a.name for _ in range(2) for a in d.add("neutrophil", False)]
    assert fired == ["blast fraction"] and d.alerts()[0].fraction == 0.3
    rows = {r["label"]: r for r in d.table()}
    # a count per 100 white cells (it may pass 100) is never under a key called percent (issue 23)
    assert rows["platelet"]["per_100_white"] == 500.0 and "percent" not in rows["platelet"]
    assert "interval_percent" not in rows["platelet"]
    assert rows["myeloblast"]["percent"] == 30.0 and rows["myeloblast"]["white_cell"]


def test_mqtt_sends_erythroblasts_and_platelets_per_100_white_cells_not_as_a_percent():
    # Issue 23: the retained differential sent erythroblasts as "percent": 916.7, a count per 100 white
    # cells under the key a lab sums to 100.
    from edge.daemon.mqtt.messages import differential_payload

    labels = ["myeloblast", "neutrophil", "erythroblast"]
    d = DifferentialCount(DifferentialConfig(), labels, ["myeloblast", "neutrophil"])
    assert differential_payload("scope", "S", d)["counts"][0]["per_100_white"] is None  # no white cell yet
    for label, n in (("erythroblast", 11), ("myeloblast", 1), ("neutrophil", 3)):
        for _ in range(n):
            d.add(label, False)
    rows = {r["label"]: r for r in differential_payload("scope", "S", d)["counts"]}
    assert rows["erythroblast"] == {
        "label": "erythroblast",
        "count": 11,
        "per_100_white": 275.0,
        "white_cell": False,
    }
    white = [r for r in rows.values() if r["white_cell"]]
    assert sum(r["percent"] for r in white) == 100.0 and all("per_100_white" not in r for r in white)
    assert rows["myeloblast"]["percent"] == 25.0 and rows["myeloblast"]["percent_95ci"][1] > 25.0


def test_differential_warns_about_classes_the_model_lacks():
    d = DifferentialCount(DifferentialConfig(), ["round", "lobed"])
    assert d.warnings and "myeloblast" in d.warnings[0]


def test_archive_saves_flagged_crops_with_a_sidecar(tmp_path):
    a = FlaggedArchive(ArchiveConfig(alert_classes=["myeloblast"]), tmp_path, "s1")
    assert a.reason("myeloblast", False) == "alert_class" and a.reason("monocyte", True) == "uncertain"
    assert a.reason("monocyte", False) is None
    name = a.save(
        np.full((50, 50, 3), 128, np.uint8), {"frame_id": 3, "crop_index": 0, "label": "myeloblast"}
    )
    assert (tmp_path / "s1" / name).stat().st_size > 0 and (
        tmp_path / "s1" / name.replace(".jpg", ".json")
    ).exists()
    assert a.state().state == "active" and a.state().saved == 1
    assert (tmp_path / "s1" / name).stat().st_mode & 0o777 == 0o640


def test_disk_guard_pauses_archiving_not_classification(tmp_path):
    a = FlaggedArchive(ArchiveConfig(min_free_mb=1e12), tmp_path, "s1")
    assert a.save(np.zeros((8, 8, 3), np.uint8), {"frame_id": 0, "crop_index": 0, "label": "x"}) is None
    state = a.state()
    assert state.state == "paused_low_disk" and state.skipped_low_disk == 1 and state.saved == 0
    assert list((tmp_path / "s1").iterdir()) == []


def test_sd_notify_sends_datagrams_to_a_real_socket(tmp_path):
    path = tmp_path / "n.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(1)
    n = SystemdNotifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "30000000"})
    assert n.watchdog_interval == 15.0
    assert n.ready("classifying sim") and n.watchdog() and not n.watchdog() and n.stopping()
    got = [server.recv(256).decode() for _ in range(3)]
    assert got == ["READY=1\nSTATUS=classifying sim", "WATCHDOG=1", "STOPPING=1"]


def test_sd_notify_is_a_no_op_outside_systemd():
    n = SystemdNotifier({})
    assert not n.enabled and not n.ready() and not n.watchdog()


def test_watchdog_env_for_another_pid_is_ignored():
    assert (
        SystemdNotifier(
            {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}
        ).watchdog_interval
        is None
    )


needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed"
)


@needs_systemd_analyze
def test_unit_file_verifies():
    r = subprocess.run(
        ["systemd-analyze", "verify", str(ROOT / "systemd" / "edge-run.service")],
        capture_output=True,
        text=True,
    )
    problems = [line for line in r.stderr.splitlines() if "edge-run.service" in line]
    assert r.returncode == 0 and not problems, r.stderr


@needs_systemd_analyze
def test_unit_file_exposure_is_at_most_3():
    r = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(ROOT / "systemd" / "edge-run.service")],
        capture_output=True,
        text=True,
    )
    line = next(line for line in r.stdout.splitlines() if "Overall exposure level" in line)
    score = float(line.split(":")[1].split()[0])
    assert score <= 3.0, line
    unit = (ROOT / "systemd" / "edge-run.service").read_text()
    for setting in (
        "Type=notify",
        "WatchdogSec=",
        "User=edge-run",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ReadWritePaths=/var/lib/edge-run",
        "char-video4linux",
        "char-apex",
        "char-usb_device",
    ):
        assert setting in unit, setting


def _row(label, uncertain=False):
    return ResultRow(0, (0, 0, 8, 8), label, 0.9, {"a": 0.9, "b": 0.1}, uncertain, {"invoke": 1.0})


def test_store_continues_a_session_after_a_restart(tmp_path):
    db = tmp_path / "r.db"
    store = ResultStore(db)
    store.start_session("slide-7", "f" * 64, "bundle", "sim", "cell", {})
    for i, label in enumerate(["a", "a", "b"]):
        store.write_frame(store.next_frame_id(), 1.0 + i, "sim", f"sim:{i}", [_row(label, uncertain=i == 2)])
    store.write_skipped(store.next_frame_id(), 5.0, "sim", "sim:bad", "truncated JPEG")
    store.close()
    again = ResultStore(db)
    again.start_session("slide-7", "f" * 64, "bundle", "sim", "cell", {})
    assert again.journal_mode() == "wal"
    assert again.next_frame_id() == 4
    saved = again.session_counts()
    assert (saved.counts, saved.confident, saved.uncertain, saved.unknown) == (
        {"a": 2, "b": 1},
        {"a": 2},
        1,
        0,
    )
    assert again.done_refs("sim") == {"sim:0", "sim:1", "sim:2", "sim:bad"}
    d = DifferentialCount(DifferentialConfig(), ["a", "b"])
    d.restore(again.session_counts())
    assert d.total == 2 and d.uncertain == 1  # the unsure "b" waits for review (count_uncertain false)
    d = DifferentialCount(DifferentialConfig(count_uncertain=True), ["a", "b"])
    d.restore(again.session_counts())
    assert d.total == 3 and d.uncertain == 1
    again.close()


def test_a_frame_and_its_results_commit_together_or_not_at_all(tmp_path):
    store = ResultStore(tmp_path / "r.db")
    store.start_session("s", "f" * 64, "bundle", "sim", "cell", {})
    bad = _row("a")
    bad.probabilities = {"a": float("nan")}  # NaN is not valid JSON for SQLite's json_valid CHECK
    with pytest.raises(sqlite3.IntegrityError):
        store.write_frame(0, 1.0, "sim", "x", [_row("a"), bad])
    assert store.db.execute("SELECT COUNT(*) FROM frames").fetchone()[0] == 0
    assert store.db.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 0
    store.close()


def test_cell_mode_region_in_pixels_clips_to_the_frame():
    img = np.zeros((480, 640, 3), np.uint8)
    assert CellMode(0.5, 224).crops(img)[0].box == (208, 128, 224, 224)
    assert CellMode(0.5, 1000).crops(img)[0].box == (80, 0, 480, 480)


def test_wilson_interval_matches_the_textbook_values():
    from edge.daemon.differential import wilson_interval

    lo, hi = wilson_interval(20, 100)  # 20 % of 100 cells: 13.3 % to 28.9 % (Wilson, 95 %)
    assert round(lo, 3) == 0.133 and round(hi, 3) == 0.289
    assert wilson_interval(0, 10)[0] == 0.0 and 0.27 < wilson_interval(0, 10)[1] < 0.28
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_alerts_count_only_confident_known_cells_and_wait_for_100_of_them():
    # Issue 13: unknown and uncertain cells never move the blast fraction, and the rule waits for a
    # 100-cell differential of confident, known cells.
    d = DifferentialCount(DifferentialConfig(), ["myeloblast", "monocyte"])  # default rule: 20 % of 100
    assert d.config.alerts[0].min_cells == 100
    fired = []
    for _ in range(60):
        fired += d.add("myeloblast", True)  # unsure blasts: counted in the differential, not the alert
        fired += d.add("unknown", True)  # rejected cells: counted nowhere
    for _ in range(99):
        fired += d.add("monocyte", False)
    assert not fired and d.alerts()[0].cells == 99 and d.unknown == 60 and d.seen["myeloblast"] == 60
    # issue 23: the differential counts the alert's cells, so an unsure blast waits for review in both
    assert d.counts["myeloblast"] == 0 and d.uncertain == 120
    fired += d.add("myeloblast", False)  # 1 confident blast of 100 confident cells: 1 %
    assert not fired and d.alerts()[0].cells == 100 and d.alerts()[0].fraction == 0.01
    for _ in range(30):
        fired += d.add("myeloblast", False)  # 31 of 130: 23.8 %, with its Wilson interval
    (alert,) = d.alerts()
    assert [a.name for a in fired] == ["blast fraction"] and alert.active
    assert alert.interval[0] < alert.fraction < alert.interval[1]


def test_rate_meters_stay_bounded_when_no_one_reads_them():
    # Issue 15, defect 3: the fps meters were trimmed only inside rate(): 128 B a frame with --http off.
    from edge.daemon.telemetry import RateMeter

    meter = RateMeter(window_s=10.0)
    for i in range(100_000):
        meter.tick(now=i * 0.1)  # 10 fps for 10,000 s, never read
    assert len(meter.times) <= 101


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1.0"])
def test_timing_settings_refuse_nan_infinity_and_negatives(tmp_path, value):
    # Issue 15, defect 8: settle_s, poll_s and dwell_s accepted NaN, infinity and negatives.
    for key in ("folder]\nsettle_s", "folder]\npoll_s", "sim]\ndwell_s"):
        cfg = tmp_path / "c.toml"
        section, name = key.split("]\n")
        cfg.write_text(f"[source.{section}]\n{name} = {value}\n")
        with pytest.raises(ConfigError, match=f"source.{section}.{name}: "):
            load_config(cfg)


def test_a_full_database_keeps_results_in_order_and_writes_them_when_there_is_room(tmp_path):
    # Issue 15, defect 5: a full disk under the database stopped classification for good. Here the
    # database is capped (store.max_db_mb), which SQLite reports exactly as a full disk.
    import sqlite3 as sq

    from edge.daemon.capture import Skipped
    from edge.daemon.processor import CellResult, FrameResult
    from edge.daemon.sinks import StoreSink
    from edge.predict import to_prediction

    db = tmp_path / "r.db"
    store = ResultStore(db, max_db_mb=0.07)
    store.start_session("s", "f" * 64, "bundle", "sim", "cell", {})
    sink = StoreSink(store, "sim")
    sink.RETRY_S = 0.0
    pred = to_prediction(np.array([0.9, 0.1]), ["a", "b"], Uncertainty())
    for i in range(400):
        frame = Frame(np.zeros((8, 8, 3), np.uint8), ref=f"sim:{i}", frame_id=i)
        sink.on_frame(FrameResult(frame, [CellResult(0, (0, 0, 8, 8), (0, 0, 8, 8), pred)], {"invoke": 1.0}))
    sink.on_skipped(Skipped(400, "sim:bad", "truncated", 1.0), "sim")
    state = sink.state()
    assert state["state"] == "full" and state["waiting"] > 0 and state["lost"] == 0
    committed = sq.connect(db).execute("SELECT COUNT(*) FROM results").fetchone()[0]
    assert 0 < committed < 400 and committed + state["waiting"] == 401
    # Space comes back (the cap is lifted): everything waiting is written, oldest first.
    store.db.execute("PRAGMA max_page_count=1000000")
    sink.retry(force=True)
    assert sink.state() == {"state": "ok", "waiting": 0, "lost": 0, "last_error": ""}
    con = sq.connect(db)
    assert con.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 400
    ids = [r[0] for r in con.execute("SELECT frame_id FROM frames ORDER BY rowid")]
    assert ids == list(range(401))
    store.close()


def test_a_store_opened_on_a_full_disk_starts_and_writes_nothing_until_it_can(tmp_path):
    db = tmp_path / "r.db"
    ResultStore(db).close()  # an up-to-date database exists
    store = ResultStore(db, max_db_mb=0.0001)  # and the disk is full: no page may be added
    store.start_session("s", "f" * 64, "bundle", "sim", "cell", {})
    assert store.ready and store.next_frame_id() == 0
    from edge.results.store import StoreFull

    with pytest.raises(StoreFull, match="full"):  # the tables' empty pages fill, then no page may be added
        for i in range(1000):
            store.write_frame(i, 1.0, "sim", f"sim:{i}", [_row("a")])
    store.close()


def test_the_live_frame_draws_an_alert_class_red_an_uncertain_cell_orange_the_rest_green():
    def cell(i, label, uncertain, x):
        p = Prediction(label, 0.9, {label: 0.9}, [(label, 0.9)], uncertain, 0.5)
        return CellResult(i, (x, 20, 60, 60), (x, 20, 60, 60), p)

    live = LiveView()
    frame = Frame(np.full((120, 400, 3), 255, np.uint8), frame_id=1)
    live.on_frame(FrameResult(frame, [cell(0, "myeloblast", True, 10), cell(1, "lymphocyte", True, 150),
                                      cell(2, "neutrophil", False, 290)]))  # fmt: skip
    jpeg, _ = render_preview(live, ["myeloblast"])
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).astype(int)
    # the left edge of each box, below its caption
    # the page's colours (BGR): alert red #c0392b, uncertain orange, ok green
    for x, colour in ((10, (43, 57, 192)), (150, (0, 140, 255)), (290, (60, 170, 40))):
        assert np.abs(image[50:70, x] - np.array(colour)).sum(axis=1).mean() < 60, (x, image[60, x])


def test_words_the_screens_print():
    # Issue 23: "1 white cells"; "unknown 100%" read as "100 % unknown" (the 100 % was the model's
    # confidence in a class it then rejected).
    from edge.catalogue import caption
    from edge.wording import plural

    assert plural(1, "white cell") == "1 white cell" and plural(0, "white cell") == "0 white cells"
    assert plural(2, "alert") == "2 alerts"
    assert caption("unknown", 0.996) == "unknown" and caption("neutrophil", 0.97) == "neutrophil 97%"


def test_the_summary_says_that_uncertain_cells_include_the_unknown_ones(tiny_bundle, tmp_path):
    # Issue 23: "uncertain: 188" silently included the 156 unknown cells.
    from edge.commands.run import format_summary
    from tests.daemon_cli import edge_run

    out = tmp_path / "s.json"
    r = edge_run(
        "--bundle", tiny_bundle, "--max-frames", 3, "--http", "off", "--summary-json", out, cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads(out.read_text())
    summary.update(uncertain=188, unknown=156)
    line = next(x for x in format_summary(summary).splitlines() if x.startswith("  uncertain:"))
    assert line.startswith("  uncertain: 188 (156 of them unknown: ")
    summary.update(uncertain=3, unknown=0)
    assert "  uncertain: 3; alerts firing" in format_summary(summary)
