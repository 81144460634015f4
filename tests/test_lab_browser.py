"""The review page in a real headless Chromium (Debian's /usr/bin/chromium through Playwright) against
a real `edge run` on 127.0.0.1: a technician reviews cells by key and by click and signs the slide,
then the database says so. And the write guard, with real HTTP requests."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.synthetic import make_dataset
from tests.test_daemon_acceptance import Daemon, wait_rows
from tests.test_review_serve import MALFORMED

TOKEN = "review-test-token-0123456789"
LOOK_MS = 1100  # how long the test looks at a cell before deciding (edge.results.verification.MIN_REVIEW_S)
CHROMIUM = "/usr/bin/chromium"
# Debian's chromium, headless, with nothing reaching out and a fresh profile (the test's tmp dir).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def start_daemon(root: Path, token: str, config_text: str = "") -> tuple[Daemon, Path]:
    """`edge run` on a hot folder of 4 synthetic cells: it classifies them and stays up (a slide
    that is done), with 'granular' as alert class so that the queue is not empty (or `config_text`)."""
    images = make_dataset(
        root / "cells", per_class=1, classes=("granular", "round", "lobed", "dense"), seed=11
    )
    inbox = root / "inbox"
    inbox.mkdir()
    for i, path in enumerate(sorted(images.rglob("*.jpg"))):
        shutil.copy(path, inbox / f"{i:02d}_{path.name}")
    config = root / "edge-run.toml"
    config.write_text(
        (config_text or '[archive]\nalert_classes = ["granular"]\nmin_free_mb = 0\n')
        + (f'[http]\ntoken = "{token}"\n' if token else "")
    )
    db = root / "results.db"
    daemon = Daemon(
        ["--config", config, "--bundle", root.parent / "bundle", "--source", f"folder:{inbox}", "--db", db,
         "--session", "SLIDE-7", "--region", "1.0", "--http", "127.0.0.1:0", "--lab", "cvtcolor"],
        cwd=root,
    )  # fmt: skip
    daemon.wait_url()
    wait_rows(db, 4)
    return daemon, db


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, tiny_bundle):
    root = tmp_path_factory.mktemp("review")
    shutil.copytree(tiny_bundle, root / "bundle")
    (root / "slide").mkdir()
    d, db = start_daemon(root / "slide", TOKEN)
    yield d, db
    d.proc.terminate()
    d.wait()


def post(url: str, body, headers: dict) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def chromium():
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing (.ci/run installs Debian's chromium)")
        pytest.skip(f"{CHROMIUM} not installed (apt install chromium)")
    return pytest.importorskip("playwright.sync_api")


def test_a_technician_reviews_cells_and_signs_the_slide_in_a_browser(daemon, tmp_path):
    sync_api = chromium()
    d, db = daemon
    with sqlite3.connect(db) as con:
        before = con.execute("SELECT id, label FROM results ORDER BY id").fetchall()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        page = browser.new_page()
        page.goto(d.url + f"review?token={TOKEN}")  # the token once; the page keeps it for its writes
        page.wait_for_selector("#queue button")
        queue = page.evaluate("state.cells.map((c) => [c.id, c.label])")
        labels = page.evaluate("state.labels")
        assert len(queue) >= 1 and labels[-1] == "unknown"
        page.fill("#reviewer", "A. Tech")
        page.locator("#crop").click()  # focus off the name field: keys go to the review
        page.wait_for_timeout(LOOK_MS)  # a look at the cell: a faster decision decides nothing

        # 1. reclassify the first cell with a key press: the digit of another label
        first_id, first_label = queue[0]
        others = [label for label in labels if label != "unknown"]
        new_label = next(label for label in others if label != first_label)
        page.keyboard.press(str(others.index(new_label) + 1))
        page.wait_for_function(f"state.cells.find((c) => c.id === {first_id}).review !== null")
        assert "reclassified" in page.text_content("#msg")
        assert page.is_disabled("#sign") == (len(queue) > 1)  # the slide waits for its whole queue

        # 2. the others: one confirmed with a click, the rest with Enter
        for n in range(len(queue) - 1):
            pending = page.evaluate("state.cells.filter((c) => !c.review).length")
            page.wait_for_timeout(LOOK_MS)
            if n == 0:
                page.click("#actions button.primary")
            else:
                page.keyboard.press("Enter")
            page.wait_for_function(f"state.cells.filter((c) => !c.review).length === {pending - 1}")

        # 3. sign
        page.wait_for_function("!document.getElementById('sign').disabled")
        page.click("#sign")
        page.wait_for_function(
            "document.getElementById('signstate').textContent.startsWith('signed by A. Tech')"
        )
        assert page.is_disabled("#actions button.primary")  # a signed slide takes no review

        # the live page shows the verified count beside the model's
        page.goto(d.url)
        page.wait_for_function(
            "document.getElementById('reviewlink').textContent.includes('signed by A. Tech')"
        )
        assert "verified" in page.text_content("#counts")
        browser.close()

    with sqlite3.connect(db) as con:
        reviews = con.execute("SELECT result_id, label, reviewer FROM reviews ORDER BY id").fetchall()
        signoffs = con.execute("SELECT session_id, action, name, cells FROM signoffs").fetchall()
        after = con.execute("SELECT id, label FROM results ORDER BY id").fetchall()
    assert reviews[0] == (first_id, new_label, "A. Tech")
    assert sorted(r[0] for r in reviews) == sorted(c[0] for c in queue)
    assert all(label == dict(queue)[cid] for cid, label, _ in reviews[1:])  # confirmed: the model's label
    assert signoffs == [("SLIDE-7", "sign", "A. Tech", 4)]
    assert after == before  # the model's rows are untouched


def test_writes_need_the_token_in_a_header_never_a_cookie_or_a_get(daemon):
    d, _ = daemon
    api = d.url + "api/review"
    body = {"cell": 1, "label": "round", "reviewer": "Mallory"}
    json_type = {"Content-Type": "application/json"}
    # the cookie lets the page's GETs through but is what a cross-site form would carry: refused
    status, reply = post(api, body, {**json_type, "Cookie": f"edge_token={TOKEN}"})
    assert status == 401 and "Authorization: Bearer" in reply["error"]
    status, _ = post(api + f"?token={TOKEN}", body, json_type)
    assert status == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    status, reply = post(
        api, b"cell=1&label=round", {**auth, "Content-Type": "application/x-www-form-urlencoded"}
    )
    assert status == 415
    status, reply = post(api, body, {**auth, **json_type, "Origin": "http://evil.example"})
    assert status == 403 and "cross-origin" in reply["error"]
    status, reply = post(api + "/sign", {"reviewer": "Mallory"}, {**auth, **json_type})
    assert status == 409  # the right token, the wrong moment: the slide is signed (or its queue not done)
    code, _, _ = d.get(f"/api/review/sign?token={TOKEN}")
    assert code == 405  # a GET never changes state


def test_without_a_token_writes_need_the_review_header_and_a_loopback_host(tmp_path_factory, tiny_bundle):
    root = tmp_path_factory.mktemp("review-open")
    shutil.copytree(tiny_bundle, root / "bundle")
    (root / "slide").mkdir()
    d, db = start_daemon(root / "slide", token="")
    try:
        api = d.url + "api/review"
        with sqlite3.connect(db) as con:
            cell = con.execute("SELECT id FROM results ORDER BY id LIMIT 1").fetchone()[0]
        body = {"cell": cell, "label": "round", "reviewer": "A. Tech"}
        json_type = {"Content-Type": "application/json"}
        status, reply = post(api, body, json_type)
        assert status == 403 and "X-Edge-Review" in reply["error"]
        status, reply = post(api, body, {**json_type, "X-Edge-Review": "1", "Host": "rebound.example:80"})
        assert status == 403 and "loopback" in reply["error"]
        status, reply = post(api, body, {**json_type, "X-Edge-Review": "1"})
        assert status == 200 and reply["review"]["label"] == "round"
        # malformed input (a null reviewer, a list for a session, a cell id of 10**30...): 400, one line
        for bad, _ in MALFORMED:
            status, reply = post(api, bad, {**json_type, "X-Edge-Review": "1"})
            assert status == 400 and "\n" not in reply["error"], (bad, status, reply)
        with sqlite3.connect(db) as con:
            assert con.execute("SELECT reviewer FROM reviews").fetchall() == [("A. Tech",)]
    finally:
        d.proc.terminate()
        d.wait()


# -- the Raspberry Pi touch display, 800 x 480 (issue 23) --------------------------------------------

PI_DISPLAY = {"width": 800, "height": 480}
# Every visible control a finger must hit, and its size: WCAG's 44 x 44 CSS px target.
SMALL_TARGETS = """() => [...document.querySelectorAll('button, a, input, select')]
  .filter((e) => e.offsetParent !== null)
  .map((e) => { const r = e.getBoundingClientRect(); return [e.id || e.textContent.trim().slice(0, 20), r.width, r.height]; })
  .filter(([, w, h]) => w < 44 || h < 44)"""


def red_and_green_pixels(jpeg: bytes) -> tuple[int, int]:
    """Pixels of the page's alert red (#c0392b) and of its 'ok' green box in a JPEG, give or take."""
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).astype(int)
    near = lambda bgr: int((np.abs(image - np.array(bgr)).sum(axis=2) < 60).sum())  # noqa: E731
    return near((43, 57, 192)), near((60, 170, 40))


@pytest.fixture()
def firing_daemon(tmp_path, tiny_bundle):
    """A daemon whose alert rule fires at once, every class an alert class (each box red, each cell
    in the review queue), no token."""
    shutil.copytree(tiny_bundle, tmp_path / "bundle")
    (tmp_path / "slide").mkdir()
    labels = json.loads((tiny_bundle / "manifest.json").read_text())["labels"]
    config = (
        f"[archive]\nalert_classes = {json.dumps(labels)}\nmin_free_mb = 0\n"
        f'[[differential.alerts]]\nname = "blast fraction"\nclasses = {json.dumps(labels)}\n'
        "min_fraction = 0.01\nmin_cells = 1\n"
    )
    d, db = start_daemon(tmp_path / "slide", token="", config_text=config)
    yield d, db
    d.proc.terminate()
    d.wait()


def test_the_pages_fit_the_touch_display_and_a_firing_alert_is_on_screen(firing_daemon, tmp_path):
    sync_api = chromium()
    d, db = firing_daemon
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport=PI_DISPLAY,
        )  # fmt: skip
        page = browser.new_page()
        page.goto(d.url)
        page.wait_for_selector("#alerts .alert")
        page.wait_for_function("document.querySelectorAll('#counts tr').length > 1")
        assert page.evaluate("document.documentElement.scrollWidth") <= 800
        # read in one step: the page redraws the alerts every second, and a handle may be gone by then
        box = page.evaluate(
            "(() => { const r = document.querySelector('#alerts .alert').getBoundingClientRect();"
            " return {y: r.y, height: r.height}; })()"
        )
        assert box["y"] >= 0 and box["y"] + box["height"] <= 480, box  # seen without scrolling
        assert page.evaluate(SMALL_TARGETS) == []
        # before any review nothing is verified (not the model's count)
        verified = page.evaluate(
            "[...document.querySelectorAll('#counts tr')].slice(1).map((r) => r.cells[3].textContent)"
        )
        assert verified and set(verified) == {"0"}
        assert page.evaluate("document.querySelector('link[rel=icon]').href").endswith("favicon.svg")

        page.goto(d.url + "review")
        page.wait_for_selector("#queue button")
        assert page.evaluate("document.documentElement.scrollWidth") <= 800
        confirm = page.locator("#actions button.primary").bounding_box()
        assert confirm["y"] >= 0 and confirm["y"] + confirm["height"] <= 480, confirm
        assert page.evaluate(SMALL_TARGETS) == []

        # holding Enter decides one cell, at most: the key's repeats decide nothing
        page.fill("#reviewer", "A. Tech")
        page.locator("#crop").click()
        page.wait_for_timeout(LOOK_MS)
        for _ in range(25):
            page.keyboard.down("Enter")  # while held: repeat=true
        page.keyboard.up("Enter")
        page.wait_for_function("state.verification.reviewed === 1")
        # pressed again and again, faster than a look: recorded, too fast, and the page says so
        for _ in range(3):
            page.keyboard.press("Enter")
            page.wait_for_timeout(150)
        page.wait_for_function("document.getElementById('msg').textContent.startsWith('Too fast')")
        assert page.evaluate("state.verification.reviewed") == 1
        assert page.is_disabled("#sign")
        browser.close()

    with sqlite3.connect(db) as con:
        decisions = con.execute("SELECT seconds FROM reviews ORDER BY id").fetchall()
    assert len(decisions) <= 4 and decisions[0][0] >= 1.0 and all(s < 1.0 for (s,) in decisions[1:])
    # the live frame: alert-class cells in red boxes, none in green
    with urllib.request.urlopen(d.url + "frame.jpg", timeout=10) as r:
        red, green = red_and_green_pixels(r.read())
    assert red > 200 and green < 20, (red, green)
    with urllib.request.urlopen(d.url + "favicon.ico", timeout=10) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("image/svg+xml")
