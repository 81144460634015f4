"""Frame sources with real files, a real video through OpenCV, and real `edge run` restarts."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.daemon.capture import END, CaptureThread, DropOldestQueue, Skipped
from edge.daemon.config import ConfigError, load_config
from edge.daemon.sources import Frame, open_source
from edge.daemon.telemetry import Telemetry
from edge.synthetic import make_dataset, render_cell
from tests.daemon_cli import edge_run, replay_summary


def source_for(uri: str, **source):
    return open_source(load_config(overrides={"source": {"uri": uri, **source}}).source)


def truncate_jpeg(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_sim_renders_bgr_frames_with_the_centred_class_as_ref():
    src = source_for("sim", fps=1000.0, sim={"width": 320, "height": 240, "classes": ["lobed"]})
    src.open()
    frame = src.read()
    assert frame.image.shape == (240, 320, 3) and frame.image.dtype == np.uint8 and frame.ref == "sim:lobed"


def test_replay_missing_path_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="source.uri"):
        source_for(f"replay:{tmp_path / 'nope'}")


def test_replay_skips_and_records_corrupt_files(tiny_bundle, tmp_path):
    frames = make_dataset(tmp_path / "frames", per_class=2, seed=4)
    bad = sorted(frames.rglob("*.jpg"))[:2]
    for p in bad:
        truncate_jpeg(p)
    (frames / "round" / "empty.png").write_bytes(b"")
    db = tmp_path / "r.db"
    _, summary = replay_summary(tiny_bundle, frames, tmp_path)
    assert (
        summary["ended_by"] == "source exhausted"
        and summary["corrupt"] == 3
        and summary["frames_classified"] == 8
    )
    with sqlite3.connect(db) as con:
        skipped = dict(
            con.execute("SELECT source_ref, detail FROM frames WHERE status = 'corrupt'").fetchall()
        )
        assert con.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 8
    assert set(skipped) == {str(p.relative_to(frames)) for p in bad} | {"round/empty.png"}
    assert "truncated JPEG" in skipped[str(bad[0].relative_to(frames))]


def test_hot_folder_processes_each_file_once_across_restarts(tiny_bundle, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    rng = np.random.default_rng(0)

    def drop(names):
        for name in names:
            cv2.imwrite(str(inbox / name), render_cell("round", rng, 96))

    drop([f"a{i}.jpg" for i in range(5)])
    (inbox / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    config = tmp_path / "c.toml"
    config.write_text("[source.folder]\npoll_s = 0.05\nsettle_s = 0.1\n")
    db = tmp_path / "f.db"
    common = [
        "--config",
        config,
        "--bundle",
        tiny_bundle,
        "--source",
        f"folder:{inbox}",
        "--db",
        db,
        "--http",
        "off",
    ]
    r1 = edge_run(*common, "--max-frames", 5, cwd=tmp_path)
    assert r1.returncode == 0, r1.stderr
    # Issue 23: a hot folder's summary gave the wait for files to settle as latency, and a frame rate
    # of the files' arrival; it says what was measured: each file's processing after it was read.
    speed = next(line for line in r1.stdout.splitlines() if line.startswith("  speed:"))
    assert "fps" not in speed and "latency" not in speed and "the wait for a file" in speed
    assert speed.startswith("  speed: 5 files taken in "), speed
    drop([f"b{i}.jpg" for i in range(3)])
    r2 = edge_run(*common, "--max-frames", 3, cwd=tmp_path)
    assert r2.returncode == 0, r2.stderr
    with sqlite3.connect(db) as con:
        refs = [r[0] for r in con.execute("SELECT source_ref FROM frames WHERE status = 'classified'")]
        corrupt = [r[0] for r in con.execute("SELECT source_ref FROM frames WHERE status = 'corrupt'")]
        sessions = con.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
    assert sorted(refs) == sorted([f"a{i}.jpg" for i in range(5)] + [f"b{i}.jpg" for i in range(3)])
    assert corrupt == ["broken.jpg"] and sessions == 2


def test_folder_waits_for_files_still_being_written(tmp_path):
    src = source_for(f"folder:{tmp_path}", folder={"poll_s": 0.02, "settle_s": 0.3})
    src.open()
    cv2.imwrite(str(tmp_path / "x.png"), np.zeros((20, 20, 3), np.uint8))
    assert src._scan() == []  # just appeared: not settled yet
    got = src.read()
    assert got.ref == "x.png" and got.image.shape == (20, 20, 3)


def write_video(path: Path, n: int) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    assert writer.isOpened()
    for i in range(n):
        writer.write(np.full((120, 160, 3), 20 * i, np.uint8))
    writer.release()
    return path


def test_replay_of_a_video_file(tmp_path):
    src = source_for(f"replay:{write_video(tmp_path / 'v.avi', 4)}")
    src.open()
    refs = []
    while (frame := src.read()) is not None:
        refs.append(frame.ref)
    assert refs == [f"v.avi#{i}" for i in range(4)]


def test_opencv_source_reconnects_with_backoff_when_the_stream_ends(tmp_path):
    # A real cv2.VideoCapture whose stream "disconnects" after 3 frames (the end of a file reads like an
    # unplugged camera: read() returns False); the capture thread must close, back off, reopen, and count.
    src = source_for(f"opencv:{write_video(tmp_path / 'cam.avi', 3)}", reconnect_max_s=0.05)
    telemetry, stop, queue = Telemetry(), threading.Event(), DropOldestQueue(100)
    capture = CaptureThread(src, queue, telemetry, stop, reconnect_max_s=0.05)
    capture.start()
    frames = []
    while len(frames) < 8:
        item = queue.get(timeout=5)
        assert item is not None and item is not END
        if isinstance(item, Frame):
            frames.append(item)
    stop.set()
    capture.join(5)
    assert telemetry.reconnects >= 2 and telemetry.source_errors >= 2
    assert [f.frame_id for f in frames] == list(range(8))  # ids keep counting across reconnects


def test_capture_thread_turns_corrupt_files_into_skipped_records(tmp_path):
    make_dataset(tmp_path / "d", per_class=1, classes=("round",), seed=0)
    truncate_jpeg(next((tmp_path / "d").rglob("*.jpg")))
    src = source_for(f"replay:{tmp_path / 'd'}")
    telemetry, stop, queue = Telemetry(), threading.Event(), DropOldestQueue(4)
    capture = CaptureThread(src, queue, telemetry, stop)
    capture.start()
    assert isinstance(queue.get(5), Skipped) and queue.get(5) is END
    assert telemetry.corrupt == 1


def test_opencv_gstreamer_and_device_arguments():
    from edge.daemon.sources.opencv import capture_args

    assert capture_args("0") == (0, cv2.CAP_V4L2)
    assert capture_args("/dev/video2") == ("/dev/video2", cv2.CAP_V4L2)
    assert capture_args("gst:videotestsrc ! appsink") == ("videotestsrc ! appsink", cv2.CAP_GSTREAMER)
    assert capture_args("rtsp://cam/stream")[1] == cv2.CAP_ANY


def test_idle_hot_folder_keeps_the_capture_heartbeat_fresh(tmp_path):
    # The watchdog must tell an idle folder (normal) from a capture stuck in a driver call.
    src = source_for(f"folder:{tmp_path}", folder={"poll_s": 0.05})
    telemetry, stop, queue = Telemetry(), threading.Event(), DropOldestQueue(4)
    capture = CaptureThread(src, queue, telemetry, stop)
    capture.start()
    time.sleep(0.6)
    age = time.monotonic() - capture.heartbeat
    stop.set()
    capture.join(2)
    assert age < 1.0 and telemetry.captured == 0  # the watchdog threshold is 10 s; polls are 0.05 s apart


def test_default_source_is_the_simulated_microscope(tiny_bundle, tmp_path):
    db = tmp_path / "sim.db"
    r = edge_run("--bundle", tiny_bundle, "--max-frames", 5, "--http", "off", "--db", db, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with sqlite3.connect(db) as con:
        refs = [row[0] for row in con.execute("SELECT source_ref FROM frames")]
        source = con.execute("SELECT source FROM sessions").fetchone()[0]
    assert source == "sim" and len(refs) >= 5 and all(ref.startswith("sim:") for ref in refs)


def test_one_hostile_file_never_puts_the_hot_folder_into_a_crash_loop(tiny_bundle, tmp_path):
    # Issue 15, defect 1: a name that is not UTF-8 (UnicodeEncodeError at the SQLite insert) or a PNG
    # declaring 100000 x 100000 pixels stopped edge run, and every restart hit the same file again.
    import os
    import struct
    import zlib

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    rng = np.random.default_rng(1)

    def drop(name):
        ok, buf = cv2.imencode(".jpg", render_cell("round", rng, 96))
        with open(
            os.fsencode(inbox) + b"/" + (name if isinstance(name, bytes) else name.encode()), "wb"
        ) as fh:
            fh.write(buf.tobytes())
        time.sleep(0.02)  # distinct mtimes: the folder is taken oldest first

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    drop("a0.jpg")
    drop(b"b_Zelle_\xe4.jpg")
    bomb = inbox / "bomb.png"
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    bomb.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )
    time.sleep(0.02)
    drop("c0.jpg")
    config = tmp_path / "c.toml"
    config.write_text("[source.folder]\npoll_s = 0.05\nsettle_s = 0.1\n")
    db = tmp_path / "f.db"
    common = [
        "--config",
        config,
        "--bundle",
        tiny_bundle,
        "--source",
        f"folder:{inbox}",
        "--db",
        db,
        "--http",
        "off",
    ]
    first = edge_run(*common, "--max-frames", 3, cwd=tmp_path)
    assert first.returncode == 0, first.stderr

    def frames():
        with sqlite3.connect(db) as con:
            return con.execute("SELECT source_ref, status, detail FROM frames ORDER BY rowid").fetchall()

    assert [(ref, status) for ref, status, _ in frames()] == [
        ("a0.jpg", "classified"),
        ("b_Zelle_\\xe4.jpg", "classified"),
        ("bomb.png", "corrupt"),
        ("c0.jpg", "classified"),
    ]
    assert "declares 100000 x 100000 pixels" in frames()[2][2]
    drop("d0.jpg")
    second = edge_run(*common, "--max-frames", 1, cwd=tmp_path)  # no crash loop: the bomb is not taken again
    assert second.returncode == 0, second.stderr
    assert frames()[-1][:2] == ("d0.jpg", "classified") and len(frames()) == 5
    # The file changes (its writer finished, or it was copied again): it is taken once more.
    ok, buf = cv2.imencode(".png", render_cell("lobed", rng, 96))
    bomb.write_bytes(buf.tobytes())
    third = edge_run(*common, "--max-frames", 1, cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert frames()[-1][:2] == ("bomb.png", "classified")


def _png_declaring(width: int, height: int) -> bytes:
    """A 60-byte PNG whose header declares width x height (a decompression bomb's calling card)."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def test_replay_of_hostile_files_records_each_one_and_classifies_the_rest(tiny_bundle, tmp_path):
    # Issue 15, defect 1 for replay: a name that is not UTF-8 ended `edge run --source replay:` with
    # UnicodeEncodeError at the SQLite insert, before any later file was classified.
    import os

    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(2)

    def write(name: bytes, data: bytes) -> None:
        with open(os.fsencode(frames) + b"/" + name, "wb") as fh:
            fh.write(data)

    def jpeg() -> bytes:
        return cv2.imencode(".jpg", render_cell("round", rng, 96))[1].tobytes()

    write(b"a0.jpg", jpeg())
    write(b"b_Zelle_\xe4.jpg", jpeg())  # decodes: the name alone used to stop the daemon
    write(b"b_halb_\xe4.jpg", jpeg()[:300])  # truncated, and its name is not UTF-8 either
    write(b"bomb.png", _png_declaring(100_000, 100_000))
    write(b"c0.jpg", jpeg())
    db = tmp_path / "r.db"
    r, summary = replay_summary(tiny_bundle, frames, tmp_path)
    assert summary["frames_classified"] == 3 and summary["corrupt"] == 2
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT source_ref, status, detail FROM frames ORDER BY frame_id").fetchall()
    # Stored and printed as edge.dataset.printable writes them: lossless, \xNN for bytes that are not UTF-8
    assert [(ref, status) for ref, status, _ in rows] == [
        ("a0.jpg", "classified"),
        ("b_Zelle_\\xe4.jpg", "classified"),
        ("b_halb_\\xe4.jpg", "corrupt"),
        ("bomb.png", "corrupt"),
        ("c0.jpg", "classified"),
    ]
    assert "truncated JPEG" in rows[2][2] and "declares 100000 x 100000 pixels" in rows[3][2]
    assert "skipped corrupt frame b_halb_\\xe4.jpg: truncated JPEG" in r.stderr


# No real image is known to decode and then break the cell mode or the classifier (1 x 1, 1 x 5000,
# gray and 16-bit frames all classify), so the fault is planted: the real daemon, with its cell mode
# raising on one image size, as a bug in a later stage would.
BROKEN_STAGE = """
import sys

from edge import cli
from edge.daemon import modes

real = modes.CellMode.crops


def crops(self, image, timestamp=None, ahead=None):
    if image.shape[:2] == (77, 77):
        raise RuntimeError("this stage breaks on 77 x 77 images")
    return real(self, image, timestamp)


modes.CellMode.crops = crops
cli.main(sys.argv[1:])
"""


def test_a_file_that_breaks_a_later_stage_is_recorded_once_and_the_folder_goes_on(tiny_bundle, tmp_path):
    # Issue 15, defect 1: only decoding was guarded. A file that decoded but then failed in the mode or
    # the classifier ended edge run with no row written, so every restart took it again.
    entry = tmp_path / "broken_stage.py"
    entry.write_text(BROKEN_STAGE)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    rng = np.random.default_rng(3)

    def drop(name: str, side: int = 96) -> None:
        cv2.imwrite(str(inbox / name), render_cell("round", rng, side))
        time.sleep(0.02)  # distinct mtimes: the folder is taken oldest first

    drop("a0.jpg")
    drop("b_poison.jpg", side=77)
    drop("c0.jpg")
    config = tmp_path / "c.toml"
    config.write_text("[source.folder]\npoll_s = 0.05\nsettle_s = 0.1\n")
    db = tmp_path / "f.db"
    common = ["--config", config, "--bundle", tiny_bundle, "--source", f"folder:{inbox}", "--db", db]
    common += ["--http", "off", "--summary-json", tmp_path / "s.json"]

    first = edge_run(*common, "--max-frames", 3, cwd=tmp_path, entry=entry)
    assert first.returncode == 0, first.stderr

    def frames():
        with sqlite3.connect(db) as con:
            return con.execute("SELECT source_ref, status, detail FROM frames ORDER BY rowid").fetchall()

    assert [(ref, status) for ref, status, _ in frames()] == [
        ("a0.jpg", "classified"),
        ("b_poison.jpg", "corrupt"),
        ("c0.jpg", "classified"),
    ]
    reason = frames()[1][2]
    assert reason.startswith("processing failed: RuntimeError: this stage breaks on 77 x 77 images at ")
    assert f"skipped corrupt frame b_poison.jpg: {reason}" in first.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["corrupt"] == 1 and summary["frames_classified"] == 2
    drop("d0.jpg")
    second = edge_run(*common, "--max-frames", 1, cwd=tmp_path, entry=entry)  # the same fault is still there
    assert second.returncode == 0, second.stderr
    assert [row[:2] for row in frames()[3:]] == [
        ("d0.jpg", "classified")
    ]  # the broken file is not taken again


def test_the_pixel_limit_comes_from_the_config_and_the_command_line(tiny_bundle, tmp_path):
    # Issue 15, defect 1: the pixel limit was fixed at 64 MP; source.max_pixels / --max-pixels set it.
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(4)
    cv2.imwrite(str(frames / "a_large.png"), render_cell("round", rng, 100))  # 10,000 pixels
    cv2.imwrite(str(frames / "b_small.png"), render_cell("round", rng, 60))  # 3,600 pixels
    config = tmp_path / "c.toml"
    config.write_text("[source]\nmax_pixels = 5000\n")
    common = ["--config", config, "--bundle", tiny_bundle, "--source", f"replay:{frames}", "--http", "off"]

    def frames_of(db):
        with sqlite3.connect(db) as con:
            return con.execute("SELECT source_ref, status, detail FROM frames ORDER BY frame_id").fetchall()

    r = edge_run(*common, "--db", tmp_path / "a.db", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert frames_of(tmp_path / "a.db") == [
        ("a_large.png", "corrupt", "declares 100 x 100 pixels, over the limit of 5,000 (max_pixels)"),
        ("b_small.png", "classified", ""),
    ]
    assert "skipped corrupt frame a_large.png: declares 100 x 100 pixels, over the limit of 5,000" in r.stderr
    r = edge_run(*common, "--max-pixels", 20_000, "--db", tmp_path / "b.db", cwd=tmp_path)  # the flag wins
    assert r.returncode == 0, r.stderr
    assert [status for _, status, _ in frames_of(tmp_path / "b.db")] == ["classified", "classified"]
