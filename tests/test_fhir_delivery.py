"""`edge report --fhir-url` against real HTTP servers on 127.0.0.1 that do what a laboratory's network
does on a bad day (issue 24, item 1): redirect, drip, answer HTML, hang, lose answers. "sent" only when
the server took the bundle, within the deadline, and never twice: a tiny FHIR server that honours
ifNoneExist counts what it stored."""

from __future__ import annotations

import json
import socket
import threading
import time
from urllib.parse import parse_qsl

import pytest

from edge.results.reviews import ReviewBook
from tests.http_servers import Quiet, Server, answer
from tests.lab_slides import write_slide
from tests.test_lab_report import CELLS, edge, review_all


@pytest.fixture()
def signed_slide(tmp_path):
    db = tmp_path / "results.db"
    write_slide(db, "SLIDE-042", CELLS)
    review_all(db, "SLIDE-042", {"basophil": "monocyte"}, sign=True)
    return db


class FhirStore(Server):
    """A small FHIR server: POST a transaction Bundle to /fhir; every entry is stored, unless its
    `ifNoneExist` (identifier=system|value) matches a stored resource of its type. `misbehave` lists
    what to do with the first transactions after storing them: "hang" (no answer until the client
    gives up) or "drop" (close without answering), the answers a client never sees."""

    def __init__(self, misbehave=()):
        self.stored: dict[str, list[dict]] = {}
        self.transactions = 0
        self.misbehave = list(misbehave)
        self.lock = threading.Lock()
        outer = self

        class Handler(Quiet):
            def do_POST(self):
                if self.path != "/fhir":
                    self.send_error(404)
                    return
                bundle = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.transactions += 1
                    reply = outer.transact(bundle)
                    trick = outer.misbehave.pop(0) if outer.misbehave else None
                if trick == "hang":
                    self.connection.settimeout(120)
                    self.rfile.read(1)  # until the client closes
                    self.close_connection = True
                    return
                if trick == "drop":
                    self.close_connection = True
                    return
                answer(self, 200, json.dumps(reply).encode())

        super().__init__(Handler)

    def find(self, kind: str, query: str) -> dict | None:
        system, _, value = dict(parse_qsl(query))["identifier"].partition("|")
        for resource in self.stored.get(kind, []):
            if any(i.get("system") == system and i.get("value") == value for i in resource["identifier"]):
                return resource
        return None

    def transact(self, bundle: dict) -> dict:
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
        responses = []
        for entry in bundle["entry"]:
            kind, query = entry["request"]["url"], entry["request"].get("ifNoneExist")
            found = self.find(kind, query) if query else None
            if found is None:
                found = {**entry["resource"], "id": str(sum(map(len, self.stored.values())) + 1)}
                self.stored.setdefault(kind, []).append(found)
                responses.append({"response": {"status": "201 Created", "location": f"{kind}/{found['id']}"}})
            else:
                responses.append({"response": {"status": "200 OK", "location": f"{kind}/{found['id']}"}})
        return {"resourceType": "Bundle", "type": "transaction-response", "entry": responses}

    def counts(self) -> dict[str, int]:
        return {kind: len(items) for kind, items in self.stored.items()}


# Device, Practitioner, an Observation per class, the DiagnosticReport: one each, however often sent.
ONCE = {"Device": 1, "Practitioner": 1, "Observation": 5, "DiagnosticReport": 1}


def report(db, url, tmp_path, *flags):
    started = time.monotonic()
    run = edge("report", "--db", db, "--fhir-url", url, *flags, cwd=tmp_path)
    return run, time.monotonic() - started


def test_a_transaction_retried_after_lost_answers_is_stored_once(signed_slide, tmp_path):
    # Issue 24, item 1: a hanging server received the full bundle four times and, with no conditional
    # create, a lab system would have stored it four times.
    with FhirStore(misbehave=["hang", "drop"]) as lis:
        run, _ = report(signed_slide, lis.url, tmp_path, "--fhir-deadline", "30", "--fhir-retries", "3")
        assert run.returncode == 0, run.stderr
        assert "sent to" in run.stdout and "retrying (2/3)" in run.stderr
        assert lis.transactions == 3 and lis.counts() == ONCE
        again, _ = report(signed_slide, lis.url, tmp_path)  # the clinic sends the same slide again
        assert again.returncode == 0, again.stderr
        assert lis.transactions == 4 and lis.counts() == ONCE
        # reopened and signed again: a new report, the device is still the same one
        book = ReviewBook(signed_slide)
        book.reopen("SLIDE-042", "B. Lead", "recount")
        book.close()
        review_all(signed_slide, "SLIDE-042", {"basophil": "basophil"}, sign=True)
        third, _ = report(signed_slide, lis.url, tmp_path)
        assert third.returncode == 0, third.stderr
        assert lis.counts() == {"Device": 1, "Practitioner": 2, "Observation": 10, "DiagnosticReport": 2}


class Redirect(Server):
    """Answers a POST to /fhir with `code` to `target`; answers any GET with a transaction-response
    (what a careless follower would take as success) and records it."""

    def __init__(self, code: int, target: str | None = None):
        self.gets: list[str] = []
        outer = self

        class Handler(Quiet):
            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(code)
                self.send_header("Location", target or "/moved")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self):
                outer.gets.append(self.path)
                answer(self, 200, b'{"resourceType": "Bundle", "type": "transaction-response"}')

        super().__init__(Handler)


@pytest.mark.parametrize("code", [301, 302, 303])
def test_a_redirect_is_not_followed_as_a_get(signed_slide, tmp_path, code):
    # Issue 24, item 1: after a 302, urllib turned the POST into a GET and the command said "sent".
    with Redirect(code) as lis:
        run, _ = report(signed_slide, lis.url, tmp_path)
    assert run.returncode == 6 and "sent to" not in run.stdout
    assert lis.gets == []
    assert run.stderr.strip().count("\n") == 0, run.stderr
    assert f"HTTP {code} redirect to /moved: a POST is not followed as a GET" in run.stderr


@pytest.mark.parametrize("code", [307, 308])
def test_a_307_or_308_re_posts_the_bundle_where_it_points(signed_slide, tmp_path, code):
    with FhirStore() as store, Redirect(code, store.url) as lis:
        run, _ = report(signed_slide, lis.url, tmp_path)
        assert run.returncode == 0, run.stderr
        assert lis.gets == [] and store.transactions == 1 and store.counts() == ONCE


class Answers(Server):
    """Answers every POST with `status`, `content_type` and `body`."""

    def __init__(self, status: int, content_type: str, body: bytes):
        self.posts = 0
        outer = self

        class Handler(Quiet):
            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                outer.posts += 1
                answer(self, status, body, content_type)

        super().__init__(Handler)


@pytest.mark.parametrize(
    "content_type,body",
    [
        ("text/html", b"<!doctype html><html><body>Please log in</body></html>"),
        ("application/fhir+json", b'{"resourceType": "OperationOutcome", "issue": []}'),
        ("application/fhir+json", b'{"resourceType": "Bundle", "type": "searchset"}'),
        ("application/json", b""),
    ],
)
def test_a_2xx_that_is_not_a_transaction_response_is_not_sent(signed_slide, tmp_path, content_type, body):
    # Issue 24, item 1: a 200 with an HTML body counted as "sent".
    with Answers(200, content_type, body) as lis:
        run, _ = report(signed_slide, lis.url, tmp_path)
    assert run.returncode == 6 and "sent to" not in run.stdout, run.stdout
    assert "not a FHIR transaction-response Bundle" in run.stderr and lis.posts == 1
    assert run.stderr.strip().count("\n") == 0, run.stderr


class Drip:
    """A raw TCP server on 127.0.0.1 that reads the request and then sends `reply` one byte every
    `every` seconds, for as long as the client listens."""

    def __init__(self, reply: bytes, every: float = 0.5):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/fhir"
        self.reply, self.every, self.stop = reply, every, threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)

    def serve(self):
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self.drip, args=(conn,), daemon=True).start()

    def drip(self, conn):
        with conn:
            conn.settimeout(5)
            try:
                conn.recv(1 << 20)
                for byte in self.reply:
                    if self.stop.wait(self.every):
                        return
                    conn.sendall(bytes([byte]))
            except OSError:
                return

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.sock.close()


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"a" * 4000,  # headers that never end
        b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b" " * 100000,  # a body that never ends
    ],
    ids=["headers", "body"],
)
def test_a_dripping_server_cannot_hold_the_command_past_its_deadline(signed_slide, tmp_path, reply):
    # Issue 24, item 1: a server that drips one byte every 5 s held the command for ever.
    with Drip(reply) as lis:
        run, took = report(signed_slide, lis.url, tmp_path, "--fhir-deadline", "4", "--fhir-retries", "1")
    assert run.returncode == 6 and "sent to" not in run.stdout
    assert "deadline" in run.stderr and run.stderr.strip().count("\n") <= 1, run.stderr
    assert took < 4 + 40  # the deadline plus the CLI's start-up on a loaded machine; the drip is endless


@pytest.mark.parametrize(
    "url", ["file:///etc/hostname", "data:,hello", "ftp://127.0.0.1/fhir", "http://", "lis.local/fhir"]
)
def test_only_http_urls_are_sent_to(signed_slide, tmp_path, url):
    # Issue 24, item 1: file:// and data: URLs counted as "sent".
    run, _ = report(signed_slide, url, tmp_path)
    assert run.returncode == 2 and "sent to" not in run.stdout
    assert run.stderr.strip().count("\n") == 0 and "not an http(s) URL" in run.stderr, run.stderr
