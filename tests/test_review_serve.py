"""`edge review serve`: the review page and its API without the daemon, on a real results.db, over
real HTTP on 127.0.0.1. The daemon's token rules; no session created; malformed input is a 400 with
one line, never a 500; the server's own clock catches a decision faster than a look."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.lab_slides import write_slide

TOKEN = "serve-test-token-0123456789"
JSON = {"Content-Type": "application/json"}
CELLS = [("myeloblast", 0.96, False)] * 3 + [("monocyte", 0.99, False)] * 4 + [("basophil", 0.5, True)]


class Serve:
    """`edge review serve ARGS` in a subprocess, and its page address."""

    def __init__(self, *args, cwd: Path, env: dict | None = None):
        full_env = {k: v for k, v in os.environ.items() if k != "EDGE_RUN_TOKEN"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge.cli", "review", "serve", *map(str, args)],
            cwd=cwd,
            env={**full_env, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.url = ""
        ready = threading.Event()

        def read():
            for line in self.proc.stdout:
                if line.startswith("review page: "):
                    self.url = line.split()[2].removesuffix("review")
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        assert ready.wait(60), self.proc.stderr.read() if self.proc.poll() is not None else "no address"

    def request(self, path: str, body=None, headers: dict | None = None) -> tuple[int, dict | str]:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(
            self.url + path, data=data, method="GET" if body is None else "POST", headers=headers or {}
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                status, raw, kind = r.status, r.read(), r.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            status, raw, kind = exc.code, exc.read(), exc.headers.get("Content-Type", "")
        if kind.startswith("application/json"):
            return status, json.loads(raw)
        return status, raw.decode() if kind.startswith(("text/", "image/svg")) else raw

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(30)


@pytest.fixture()
def slide_db(tmp_path) -> Path:
    db = tmp_path / "results.db"
    write_slide(db, "SLIDE-7", CELLS)
    return db


def sessions(db: Path) -> list:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT * FROM sessions").fetchall()


def test_review_and_report_without_the_daemon(slide_db, tmp_path):
    before = sessions(slide_db)
    serve = Serve("--db", slide_db, "--http", "127.0.0.1:0", cwd=tmp_path)
    try:
        assert serve.url.startswith("http://127.0.0.1:")
        status, page = serve.request("review")
        assert status == 200 and "<title>edge run · review</title>" in page
        status, queue = serve.request("api/review")  # no live session: the newest slide
        assert status == 200 and queue["session_id"] == "SLIDE-7" and queue["live_session"] is None
        assert queue["verification"]["text"] == "reviewed 0 of 4" and queue["verification"]["verified"] == {}
        assert all(c["image"] for c in queue["cells"])  # the flagged crops, from the daemon's archive
        status, _ = serve.request(queue["cells"][0]["image"])
        assert status == 200
        write = {**JSON, "X-Edge-Review": "1"}
        first, second = queue["cells"][0]["id"], queue["cells"][1]["id"]
        status, done = serve.request("api/review", {"cell": first, "label": "myeloblast", "reviewer": "A. Tech", "shown_s": 4.2}, write)  # fmt: skip
        assert status == 200 and done["review"]["seconds"] == 4.2 and not done["review"]["too_fast"]
        # the page says the next cell was on screen for 5 s; the server's clock says it was not
        status, done = serve.request("api/review", {"cell": second, "label": "myeloblast", "reviewer": "A. Tech", "shown_s": 5.0}, write)  # fmt: skip
        assert status == 200 and done["review"]["too_fast"] and done["review"]["seconds"] < 1.0
        status, queue = serve.request("api/review?session=SLIDE-7")
        assert queue["verification"]["text"] == "reviewed 1 of 4 (1 too fast, to look at again)"
        status, refused = serve.request("api/review/sign", {"reviewer": "A. Tech"}, write)
        assert status == 409 and "not reviewed yet" in refused["error"]  # the sign lock of the daemon's page
        status, report = serve.request("report?session=SLIDE-7")
        assert status == 200 and "reviewed 1 of 4" in report and "NOT SIGNED" in report
        status, icon = serve.request("favicon.ico")
        assert status == 200 and "<svg" in icon
    finally:
        assert serve.stop() == 0
    assert sessions(slide_db) == before  # no session was started


# (body, what the one-line error names): the null reviewer, list session, 10**30 cell, and more
MALFORMED = [
    ({"cell": 1, "label": "monocyte", "reviewer": None}, "reviewer: expected a string"),
    (
        {"cell": 1, "label": "monocyte", "reviewer": "A", "session": ["SLIDE-7"]},
        "session: expected a string",
    ),
    ({"cell": 10**30, "label": "monocyte", "reviewer": "A"}, "cell: must be between 1 and"),
    ({"cell": "1", "label": "monocyte", "reviewer": "A"}, "cell: expected an integer"),
    ({"cell": True, "label": "monocyte", "reviewer": "A"}, "cell: expected an integer"),
    ({"cell": 1.5, "label": "monocyte", "reviewer": "A"}, "cell: expected an integer"),
    ({"cell": 1, "label": ["monocyte"], "reviewer": "A"}, "label: expected a string"),
    ({"cell": 1, "label": "monocyte", "reviewer": "A", "shown_s": "long"}, "shown_s: expected a number"),
    ({"cell": 1, "label": "monocyte", "reviewer": "A", "shown_s": -1}, "shown_s: must be"),
    ({"cell": 1, "label": "monocyte", "reviewer": "A", "extra": 1}, "extra: unknown key"),
    ({"cell": 1, "label": "monocyte"}, "reviewer: required"),
    ({"cell": 1, "label": "monocyte", "reviewer": "\u202eA"}, "printable"),
    ([1, 2], "expected a JSON object"),
    (b"{not json", "expected a JSON object"),
]


def test_malformed_review_calls_are_a_400_with_one_line(slide_db, tmp_path):
    serve = Serve("--db", slide_db, "--http", "127.0.0.1:0", cwd=tmp_path)
    try:
        write = {**JSON, "X-Edge-Review": "1"}
        for body, key in MALFORMED:
            for path in ("api/review", "api/review/sign", "api/review/reopen"):
                status, reply = serve.request(path, body, write)
                assert status == 400, (path, body, reply)
                assert "\n" not in reply["error"] and len(reply["error"]) <= 300
                if path == "api/review":
                    assert key in reply["error"], reply
        status, reply = serve.request("api/review/reopen", {"reviewer": "A", "note": " "}, write)
        assert status == 400 and "reason" in reply["error"]
    finally:
        serve.stop()
    with sqlite3.connect(slide_db) as con:
        assert con.execute("SELECT COUNT(*) FROM reviews").fetchone()[0] == 0


def test_the_daemons_token_rules(slide_db, tmp_path):
    # beyond loopback without a token: refused before anything listens, in one line
    r = subprocess.run(
        [sys.executable, "-m", "edge.cli", "review", "serve", "--db", slide_db, "--http", "0.0.0.0:0"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
        env={k: v for k, v in os.environ.items() if k != "EDGE_RUN_TOKEN"},
    )  # fmt: skip
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "needs a token of at least 16" in r.stderr
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    serve = Serve("--db", slide_db, "--http", "127.0.0.1:0", "--token-file", token_file, cwd=tmp_path)
    try:
        status, _ = serve.request("api/review")
        assert status == 401
        status, queue = serve.request(f"api/review?token={TOKEN}")
        assert status == 200
        body = {"cell": queue["cells"][0]["id"], "label": "monocyte", "reviewer": "A. Tech"}
        status, reply = serve.request(f"api/review?token={TOKEN}", body, JSON)
        assert status == 401 and "Authorization: Bearer" in reply["error"]  # a write needs the header
        status, reply = serve.request("api/review", body, {**JSON, "Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and reply["review"]["label"] == "monocyte"
    finally:
        serve.stop()
