"""The page of `edge run` under connections that hold it without asking for anything (issue 24, item 4):
1,005 connections sending their headers slowly kept it unreachable for a minute, and 1,100 idle ones
for 15 s. Real sockets on 127.0.0.1 against the real daemon; the page must answer within 2 s."""

from __future__ import annotations

import resource
import signal
import socket
import threading
import time
import urllib.parse
import urllib.request

import pytest

from tests.test_daemon_acceptance import Daemon, replay_args


class Holders:
    """`n` connections to the page kept open from a thread: each sends the start of a request and
    then, with `drip`, one more header byte per connection every `every` seconds (slow headers);
    without, nothing (idle). A connection the server closes is opened again, as an attacker would."""

    def __init__(self, host: str, port: int, n: int, drip: bool, every: float = 1.0):
        self.addr, self.n, self.drip, self.every = (host, port), n, drip, every
        self.socks: list[socket.socket | None] = [None] * n
        self.reopened = 0
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def open(self) -> socket.socket | None:
        try:
            s = socket.create_connection(self.addr, timeout=2)
            if self.drip:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: edge\r\n")
            s.setblocking(False)
            return s
        except OSError:
            return None

    def run(self) -> None:
        for i in range(self.n):
            self.socks[i] = self.open()
        self.ready.set()
        while not self.stop.wait(self.every):
            for i, s in enumerate(self.socks):
                try:
                    if s is None:
                        raise OSError
                    s.send(b"X" if self.drip else b"")
                    if not self.drip and s.recv(1) == b"":  # closed by the server
                        raise OSError
                except BlockingIOError:
                    pass
                except OSError:
                    if s is not None:
                        s.close()
                    self.socks[i] = self.open()
                    self.reopened += 1
                if self.stop.is_set():
                    break

    def __enter__(self):
        self.thread.start()
        assert self.ready.wait(120), "could not open the connections"
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(30)
        for s in self.socks:
            if s is not None:
                s.close()


@pytest.fixture(scope="module")
def page(tiny_bundle, tmp_path_factory):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2500 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (2500, hard))
    tmp = tmp_path_factory.mktemp("page")
    frames = tmp / "frames"
    from edge.synthetic import make_dataset

    make_dataset(frames, per_class=4, seed=3)
    d = Daemon(
        replay_args(tiny_bundle, frames, tmp / "r.db", "--loop", "--fps", "2", "--http", "127.0.0.1:0"), tmp
    )
    try:
        url = urllib.parse.urlparse(d.wait_url())
        yield d, url.hostname, url.port
    finally:
        d.proc.send_signal(signal.SIGTERM)
        assert d.wait(60) == 0, d.stderr[-2000:]


def answers_within(d: Daemon, seconds: float) -> list[float]:
    """The page asked three times, a second apart: each must answer 200 within `seconds`."""
    took = []
    for _ in range(3):
        started = time.monotonic()
        with urllib.request.urlopen(d.url.rstrip("/") + "/healthz", timeout=seconds) as r:
            assert r.status == 200 and r.read().strip() == b"ok"
        took.append(time.monotonic() - started)
        time.sleep(1)
    return took


@pytest.mark.parametrize("n,drip", [(1000, True), (1100, False)], ids=["1000-slow-headers", "1100-idle"])
def test_connections_that_never_finish_a_request_cannot_starve_the_page(page, n, drip):
    d, host, port = page
    with Holders(host, port, n, drip) as holders:
        time.sleep(3)  # the attack is on: every connection open, the slow ones dripping
        took = answers_within(d, 2.0)
        assert max(took) < 2.0, took
        # and the slow ones are really being sent: the guard closes them (old ones make room, none
        # may take longer than the request time-out), the attacker opens them again
        if drip:
            time.sleep(12)
            assert holders.reopened >= n, holders.reopened
            assert max(answers_within(d, 2.0)) < 2.0
