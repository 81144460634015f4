"""`edge run` as the technician's machine runs it: real subprocesses, real SQLite, real HTTP on
127.0.0.1, real signals (SIGTERM, SIGKILL) and a real sd_notify datagram socket."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge.bundle import Bundle
from edge.synthetic import make_dataset
from tests.daemon_cli import edge_run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def replay_dir(tmp_path_factory) -> Path:
    """200 synthetic cell images (5 classes x 40)."""
    return make_dataset(tmp_path_factory.mktemp("replay"), per_class=40, seed=5)


def replay_args(bundle, replay_dir, db, *extra) -> list:
    """The `edge run` arguments every test here shares: replay the images into `db`, then `extra`."""
    return ["--bundle", bundle, "--source", f"replay:{replay_dir}", "--db", db, *extra]


class Daemon:
    """`edge run ...` in a subprocess; collects stdout and the page address."""

    started: list[Daemon] = []  # for stop_leftovers()

    @classmethod
    def stop_leftovers(cls, since: int) -> None:
        """Kill the daemons started after the first `since` that still run: a test that failed before
        its SIGTERM, with a --loop replay that never ends, would leave one taking a core for the rest
        of the session (tests/conftest.py). Those of a wider-scoped fixture came before `since`."""
        for d in cls.started[since:]:
            if d.proc.poll() is None:
                d.proc.kill()
                d.proc.wait(10)
        del cls.started[since:]

    def __init__(self, args, cwd: Path, env: dict | None = None):
        full_env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "EDGE_RUN_TOKEN")
        }
        full_env.update({"TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge.cli", "run", *map(str, args)],
            cwd=cwd,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.url: str | None = None
        self.has_url = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        Daemon.started.append(self)

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("page: "):
                self.url = line.split(" ", 1)[1].strip()
                self.has_url.set()

    def wait_url(self, timeout=60) -> str:
        assert self.has_url.wait(timeout), (
            f"no page address; stderr: {self.proc.stderr.read() if self.proc.poll() is not None else ''}"
        )
        return self.url

    def get(self, path: str, headers: dict | None = None) -> tuple[int, str, str]:
        req = urllib.request.Request(self.url.rstrip("/") + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.headers.get("Content-Type", ""), r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()

    def wait(self, timeout=60) -> int:
        rc = self.proc.wait(timeout)
        self.reader.join(5)
        self.stderr = self.proc.stderr.read()
        return rc


def rows(db: Path) -> int:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT COUNT(*) FROM results").fetchone()[0]


def wait_rows(db: Path, n: int, timeout=60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if db.exists() and rows(db) >= n:
                return
        except sqlite3.OperationalError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"fewer than {n} rows after {timeout} s")


def check_clean(db: Path, labels: list[str]) -> int:
    """integrity_check ok, and every row whole: all fields set, JSON valid, one frame row per result frame."""
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("PRAGMA foreign_key_check").fetchall() == []
    n = 0
    for label, conf, probs, unc, sha, timings, box in con.execute(
        "SELECT label, confidence, probabilities, uncertain, model_sha, timings, box FROM results"
    ):
        probs = json.loads(probs)
        assert label in labels and sorted(probs) == sorted(labels) and 0 <= conf <= 1 and unc in (0, 1)
        assert (
            len(sha) == 64
            and {"invoke", "preprocess", "capture"} <= set(json.loads(timings))
            and len(json.loads(box)) == 4
        )
        n += 1
    mismatched = con.execute(
        "SELECT COUNT(*) FROM frames f WHERE f.status = 'classified' AND f.n_results !="
        " (SELECT COUNT(*) FROM results r WHERE r.session_id = f.session_id AND r.frame_id = f.frame_id)"
    ).fetchone()[0]
    assert mismatched == 0
    con.close()
    return n


def labels_of(bundle: Path) -> list[str]:
    return json.loads((bundle / "manifest.json").read_text())["labels"]


def test_replay_200_with_max_frames_150_gives_150_rows_and_serves_status_and_metrics(
    tiny_bundle, replay_dir, tmp_path
):
    db = tmp_path / "results.db"
    d = Daemon(
        replay_args(tiny_bundle, replay_dir, db, "--fps", 40, "--max-frames", 150, "--http", "127.0.0.1:0"),
        tmp_path,
    )
    d.wait_url()
    wait_rows(db, 5)
    code, ctype, body = d.get("/api/status")
    assert code == 200 and ctype.startswith("application/json")
    status = json.loads(body)
    assert status["model"]["labels"] == labels_of(tiny_bundle) and status["frames"]["processed"] >= 5
    code, ctype, body = d.get("/metrics")
    assert code == 200 and ctype.startswith("text/plain")
    families = {
        f.name: f for f in text_string_to_metric_families(body)
    }  # raises on malformed exposition text
    for name in (
        "edge_inference_ms",
        "edge_camera_fps",
        "edge_processed_fps",
        "edge_frames_skipped",
        "edge_reconnects",
        "edge_uncertain_ratio",
        "edge_archive_state",
    ):
        assert name in families, name
    assert {s.labels["reason"] for s in families["edge_frames_skipped"].samples} == {"queue_full", "corrupt"}
    assert families["edge_inference_ms"].samples[0].value > 0
    code, ctype, body = d.get("/")
    assert code == 200 and "Differential count" in body
    with urllib.request.urlopen(d.url + "frame.jpg", timeout=5) as r:
        jpeg, crops = r.read(), json.loads(r.headers["X-Edge-Crops"])
    assert r.headers["Content-Type"] == "image/jpeg" and jpeg[:2] == b"\xff\xd8"
    assert crops and crops[0]["label"] in labels_of(tiny_bundle)  # the caption of exactly this picture
    assert d.wait() == 0, d.stderr
    assert rows(db) == 150
    assert check_clean(db, labels_of(tiny_bundle)) == 150
    assert any("150 classified" in line for line in d.lines)
    # Every uncertain cell is archived (the tiny model has no alert class) as JPEG + sidecar JSON.
    with sqlite3.connect(db) as con:
        uncertain = con.execute("SELECT COUNT(*) FROM results WHERE uncertain").fetchone()[0]
    jpegs = sorted((tmp_path / "flagged").rglob("*.jpg"))
    assert len(jpegs) == uncertain and all(p.with_suffix(".json").exists() for p in jpegs)
    if jpegs:
        meta = json.loads(jpegs[0].with_suffix(".json").read_text())
        assert meta["reason"] == "uncertain" and meta["uncertain"] is True


def test_kill_9_mid_run_leaves_a_clean_database_with_every_committed_row(tiny_bundle, replay_dir, tmp_path):
    db = tmp_path / "results.db"
    d = Daemon(
        replay_args(tiny_bundle, replay_dir, db, "--fps", 20, "--loop", "--http", "off"),
        tmp_path,
    )
    wait_rows(db, 1)
    time.sleep(2.5)  # a few seconds of steady commits, then pull the plug mid-stream
    committed_before = rows(db)
    d.proc.send_signal(signal.SIGKILL)
    assert d.wait() == -signal.SIGKILL
    n = check_clean(db, labels_of(tiny_bundle))
    assert n >= committed_before >= 20
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_kill_9_during_fast_commits_repeatedly(tiny_bundle, replay_dir, tmp_path):
    # Unpaced replay commits hundreds of frames a second, so the kill lands inside or between
    # transactions; the same database is reopened by the next run each time.
    db = tmp_path / "results.db"
    total = 0
    for delay in (0.4, 0.9, 0.65):
        d = Daemon(
            replay_args(tiny_bundle, replay_dir, db, "--loop", "--http", "off"),
            tmp_path,
        )
        wait_rows(db, total + 1)
        time.sleep(delay)
        d.proc.send_signal(signal.SIGKILL)
        d.wait()
        n = check_clean(db, labels_of(tiny_bundle))
        assert n > total
        total = n
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == 3


def test_sigterm_drains_and_exits_0_within_5_s(tiny_bundle, replay_dir, tmp_path):
    db = tmp_path / "results.db"
    d = Daemon(
        replay_args(
            tiny_bundle,
            replay_dir,
            db,
            "--fps",
            20,
            "--loop",
            "--http",
            "127.0.0.1:0",
            "--summary-json",
            tmp_path / "summary.json",
        ),
        tmp_path,
    )
    d.wait_url()
    wait_rows(db, 10)
    t0 = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    rc = d.wait(timeout=10)
    elapsed = time.monotonic() - t0
    assert rc == 0 and elapsed < 5, (rc, elapsed, d.stderr)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ended_by"] == "signal"
    assert rows(db) == summary["results"] == summary["frames_classified"]
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT ended IS NOT NULL FROM sessions").fetchone()[0] == 1
        # The close checkpoint folded the WAL into the database file.
        assert not (tmp_path / "results.db-wal").exists() or (tmp_path / "results.db-wal").stat().st_size == 0


def test_non_loopback_bind_needs_a_token_and_the_token_is_enforced(tiny_bundle, replay_dir, tmp_path):
    r = edge_run("--bundle", tiny_bundle, "--http", "0.0.0.0:0", "--db", tmp_path / "x.db", cwd=tmp_path)
    assert r.returncode == 2 and "http.token" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    token = "s3cret-token-for-the-lab"
    config = tmp_path / "edge.toml"
    config.write_text("[archive]\nmin_free_mb = 1e12\n[source]\nfps = 20.0\nloop = true\n")
    d = Daemon(
        replay_args(
            tiny_bundle,
            replay_dir,
            tmp_path / "t.db",
            "--config",
            config,
            "--http",
            "127.0.0.1:0",
            "--max-frames",
            60,
        ),
        tmp_path,
        env={"EDGE_RUN_TOKEN": token},
    )
    d.wait_url()
    assert d.get("/api/status")[0] == 401
    code, _, body = d.get("/api/status", {"Authorization": f"Bearer {token}"})
    assert code == 200
    # The disk guard (threshold far above any free space) pauses archiving, never classification.
    assert json.loads(body)["archive"]["state"] == "paused_low_disk"
    assert d.wait() == 0
    assert rows(tmp_path / "t.db") == 60


def test_systemd_notify_ready_watchdog_stopping(tiny_bundle, replay_dir, tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    d = Daemon(
        replay_args(
            tiny_bundle, replay_dir, tmp_path / "n.db", "--fps", 20, "--max-frames", 40, "--http", "off"
        ),
        tmp_path,
        env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"},
    )
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except TimeoutError:
            if d.proc.poll() is not None:
                break
    assert d.wait() == 0
    kinds = [m.splitlines()[0] for m in messages]
    assert kinds[0] == "READY=1" and kinds[-1] == "STOPPING=1"
    assert kinds.count("WATCHDOG=1") >= 2  # 40 frames at 20 fps, pinged every 0.2 s


def test_bundle_that_fails_to_load_is_one_line_and_non_zero(tmp_path, tiny_bundle):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text((tiny_bundle / "manifest.json").read_text())
    (broken / "model.tflite").write_bytes(b"not a model")
    for bundle in (tmp_path / "missing", broken):
        r = edge_run(
            "--bundle", bundle, "--db", tmp_path / "b.db", "--http", "off", "--max-frames", 1, cwd=tmp_path
        )
        assert r.returncode == 3, r.stderr
        errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and str(bundle) in errors[0] and "Traceback" not in r.stderr


def test_config_error_names_the_key(tmp_path, tiny_bundle):
    config = tmp_path / "bad.toml"
    config.write_text('[source]\nfps = "fast"\n')
    r = edge_run("--config", config, "--bundle", tiny_bundle, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == "error: source.fps: expected a number, got str 'fast'"


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MB filesystem (tmpfs), where the database runs out of space as on a small SD card."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or 'needs root'})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_under_the_database_never_stops_classification(
    tiny_bundle, replay_dir, small_disk, tmp_path
):
    # Issue 15, defect 5: with --db on a 2 MB tmpfs, "database or disk is full" after 77 frames, exit 1,
    # no summary, and the next start failed at once.
    db = small_disk / "results.db"
    args = [
        *replay_args(tiny_bundle, replay_dir, db, "--loop", "--max-frames", "3000"),
        "--http",
        "off",
        "--archive",
        tmp_path / "flagged",
        "--session",
        "slide-1",
        "--summary-json",
        tmp_path / "s.json",
    ]
    first = edge_run(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["frames_classified"] == 3000 and summary["store"]["state"] == "full"
    assert summary["store"]["waiting"] > 0 and "keeping results in memory" in first.stderr
    stored = rows(db)
    assert 0 < stored < 3000 and stored + summary["store"]["waiting"] + summary["store"]["lost"] == 3000
    # issue 24, item 3: what was not written is said to be lost, never "0 lost"
    lost = summary["store"]["waiting"] + summary["store"]["lost"]
    assert f"(FULL: {lost} classified frame(s) never written, their results lost: " in first.stdout
    # The next start, on the same full disk, starts and classifies.
    again = edge_run(*args[:-2], "--max-frames", "5", cwd=tmp_path)
    assert again.returncode == 0 and "slide-1 ended" in again.stdout, again.stderr
    # Room again: every committed row is intact, and new rows are written.
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
    last = edge_run(
        *replay_args(tiny_bundle, replay_dir, db, "--max-frames", "20"),
        "--http",
        "off",
        "--archive",
        tmp_path / "flagged",
        "--session",
        "slide-1",
        cwd=tmp_path,
    )
    assert last.returncode == 0, last.stderr
    assert check_clean(db, Bundle.load(tiny_bundle).labels) >= stored + 20


def test_a_resumed_slide_says_what_was_there_and_replay_counts_add_up(tiny_bundle, replay_dir, tmp_path):
    # Issue 15, defect 9: a resumed session printed "0 classified of 0 captured", "latency p50 0.0 ms"
    # and "uncertain: 0" next to a differential that carried over; --max-frames 150 reported
    # "150 classified of 155 captured, 0 dropped".
    db = tmp_path / "r.db"
    args = [*replay_args(tiny_bundle, replay_dir, db), "--http", "off", "--session", "SLIDE-042"]
    first = edge_run(*args, "--max-frames", 150, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "frames this run: 150 classified of 150 captured, 0 dropped" in first.stdout
    again = edge_run(*args, "--max-frames", 150, cwd=tmp_path)  # replay starts at its first file again
    assert "continued: 150 frames and 150 cells were recorded before this run" in again.stdout, again.stdout
    assert "session SLIDE-042 continues: 150 frames and 150 cells" in again.stderr
    summary_uncertain = int(re.search(r"uncertain: (\d+)", again.stdout).group(1))
    with sqlite3.connect(db) as con:
        assert summary_uncertain == con.execute("SELECT SUM(uncertain) FROM results").fetchone()[0]


def wait_for_sigterm_handler(proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until `proc` catches SIGTERM (the SigCgt mask of /proc/PID/status): the defined moment from
    which `edge run` promises a clean stop. Before it, Python itself is still starting."""
    deadline = time.monotonic() + timeout
    bit = 1 << (signal.SIGTERM - 1)
    while time.monotonic() < deadline and proc.poll() is None:
        with open(f"/proc/{proc.pid}/status") as fh:
            caught = next(int(line.split()[1], 16) for line in fh if line.startswith("SigCgt:"))
        with open(f"/proc/{proc.pid}/cmdline", "rb") as fh:
            started = b"edge.cli" in fh.read()  # exec'd: not the forked test process's handlers
        if started and caught & bit:
            return
        time.sleep(0.002)
    raise AssertionError(f"no SIGTERM handler after {timeout} s (exit {proc.poll()})")


@pytest.mark.parametrize("delay", [0.2, 0.4])
def test_a_sigterm_while_starting_is_a_clean_stop(tiny_bundle, replay_dir, tmp_path, delay):
    # Issue 15, defect 8: a SIGTERM in the first 0.3 s exited 143 without creating the database.
    # Issue 24, item 9: a fixed 0.2 s after the spawn, the signal could come before Python had run a
    # line of edge (exit -15 on a loaded machine). edge.cli installs the handler before it imports
    # anything else; the signal comes `delay` seconds after that handler is in, during start-up.
    db = tmp_path / "early.db"
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "EDGE_RUN_TOKEN")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge.cli",
            "run",
            *map(str, replay_args(tiny_bundle, replay_dir, db)),
            "--http",
            "off",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    wait_for_sigterm_handler(proc)
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert db.exists() and "ended (signal)" in out


def test_session_ids_that_climb_out_of_the_archive_are_refused(tiny_bundle, replay_dir, tmp_path):
    # Issue 15, defect 8: --session ../../x wrote flagged images outside the archive directory.
    proc = edge_run(
        *replay_args(tiny_bundle, replay_dir, tmp_path / "r.db"), "--session", "../../x", cwd=tmp_path
    )
    assert proc.returncode == 2 and "store.session: '../../x': a slide id is" in proc.stderr
    assert not (tmp_path.parent / "x").exists()


def test_idle_connections_cannot_starve_the_page(tiny_bundle, replay_dir, tmp_path):
    # Issue 15, defect 8: about 100 idle TCP connections from 127.0.0.1 blocked the page and the API
    # until they closed (waitress's connection limit).
    d = Daemon(
        replay_args(
            tiny_bundle, replay_dir, tmp_path / "r.db", "--loop", "--fps", "10", "--http", "127.0.0.1:0"
        ),
        tmp_path,
    )
    try:
        url = urllib.parse.urlparse(d.wait_url())
        idle = [socket.create_connection((url.hostname, url.port), timeout=5) for _ in range(150)]
        try:
            status, _, body = d.get("/healthz")
            assert status == 200 and body.strip() == "ok"
        finally:
            for s in idle:
                s.close()
    finally:
        d.proc.send_signal(signal.SIGTERM)
        assert d.wait(60) == 0


def test_a_killed_sessions_archive_is_repaired_at_the_next_start_under_a_new_session(
    tiny_bundle, replay_dir, tmp_path
):
    # Issue 15, defect 8: a kill leaves images whose row never committed, half pairs and temporary
    # files. The start-up check looked only at the folder of the session starting, and a plain restart
    # starts a new session, so the killed session's folder was never checked.
    labels = labels_of(tiny_bundle)
    config = tmp_path / "c.toml"  # every cell archived, whatever the free space
    config.write_text(f"[archive]\nalert_classes = {json.dumps(labels)}\nmin_free_mb = 0\n")
    db = tmp_path / "results.db"
    args = [*replay_args(tiny_bundle, replay_dir, db), "--config", config, "--http", "off"]
    d = Daemon([*args, "--fps", 20, "--loop"], tmp_path)
    wait_rows(db, 5)
    d.proc.send_signal(signal.SIGKILL)
    assert d.wait() == -signal.SIGKILL
    with sqlite3.connect(db) as con:
        (killed,) = con.execute("SELECT id FROM sessions").fetchone()
    folder = tmp_path / "flagged" / killed
    # What a kill between writing an image and committing its row leaves, each kind written by hand
    # (frame ids far beyond the run's, so that none has a row)
    crop = next(folder.glob("*.jpg"))
    (folder / "9000000_0_round.jpg").write_bytes(crop.read_bytes())  # a pair whose row never committed
    (folder / "9000000_0_round.json").write_text("{}\n")
    (folder / "9000001_0_round.jpg").write_bytes(crop.read_bytes())  # half a pair
    (folder / ".9000002_0_round.jpg.x1y2z3").write_bytes(b"\xff\xd8")  # _atomic_write's temporary file

    restart = edge_run(*args, "--max-frames", 2, cwd=tmp_path)
    assert restart.returncode == 0, restart.stderr
    report = re.search(
        rf"archive check of session {killed}: (\d+) temporary and (\d+) incomplete file\(s\) removed, "
        r"(\d+) image\(s\) of cells never recorded moved to not-recorded/, 0 flagged cell\(s\) recorded without an image",
        restart.stderr,
    )
    assert report and min(int(n) for n in report.groups()) >= 1, restart.stderr
    assert (
        not (folder / ".9000002_0_round.jpg.x1y2z3").exists()
        and not (folder / "9000001_0_round.jpg").exists()
    )
    assert {p.name for p in (folder / "not-recorded").iterdir()} >= {
        "9000000_0_round.jpg",
        "9000000_0_round.json",
    }
    with sqlite3.connect(db) as con:
        committed = set(
            con.execute("SELECT frame_id, crop_index FROM results WHERE session_id = ?", (killed,)).fetchall()
        )
    kept = {tuple(int(n) for n in p.stem.split("_")[:2]) for p in folder.glob("*.jpg")}
    assert kept == committed and all(p.with_suffix(".json").exists() for p in folder.glob("*.jpg"))
    again = edge_run(*args, "--max-frames", 2, cwd=tmp_path)  # checked once: not read, nor reported, again
    assert again.returncode == 0, again.stderr
    assert "archive check" not in again.stderr


def test_the_page_token_from_a_file_never_reaches_the_database_or_the_terminal(
    tiny_bundle, replay_dir, tmp_path
):
    # Issue 15, defect 8: the page's token was stored in plain text in sessions.config.
    token = "s3cret-page-token-" + os.urandom(8).hex()
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    db = tmp_path / "r.db"
    d = Daemon(
        [*replay_args(tiny_bundle, replay_dir, db), "--token-file", token_file, "--http", "127.0.0.1:0"],
        tmp_path,
    )
    d.wait_url()
    assert d.get("/api/status")[0] == 401  # the token from the file guards the page
    assert d.get("/api/status", {"Authorization": f"Bearer {token}"})[0] == 200
    d.proc.send_signal(signal.SIGTERM)
    assert d.wait() == 0, d.stderr
    assert token not in "".join(d.lines) + d.stderr
    with sqlite3.connect(db) as con:
        tables = [t for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for row in con.execute(f"SELECT * FROM {table}"):  # noqa: S608 - names from sqlite_master
                assert not any(token in str(value) for value in row), table
        (config,) = con.execute("SELECT config FROM sessions").fetchone()
    assert json.loads(config)["http"]["token"] == "(set)"
    for path in tmp_path.glob("r.db*"):  # nor in a free page or the WAL
        assert token.encode() not in path.read_bytes(), path
