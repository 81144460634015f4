"""A real mosquitto on 127.0.0.1 for the MQTT tests, and a lab-side collector (paho-mqtt).

The broker keeps its state on disk (`persistence true`), so the collector's session and the
messages queued for it survive a broker restart, as a lab's broker would be set up; and it queues
any number of messages for a collector that is away (`max_queued_messages 0`), so that a count
that comes up short is the daemon's fault, not the broker's.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"

needs_mosquitto = pytest.mark.skipif(
    not Path(MOSQUITTO).exists(),
    reason="mosquitto not installed (apt-get install mosquitto; .ci/run installs it)",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """`mosquitto -c CONFIG` on 127.0.0.1:PORT; stop() and start() again keep the same port and state."""

    def __init__(self, root: Path, port: int | None = None, listener: str = "", extra: str = ""):
        """`listener`: the lines of the listener (default: plain MQTT on PORT, anonymous allowed)."""
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.config = self.root / "mosquitto.conf"
        self.log = self.root / "mosquitto.log"
        (self.root / "data").mkdir(exist_ok=True)
        lines = [
            # Started as root (CI), mosquitto would switch to its own user, who cannot write here.
            "user root",
            f"listener {self.port} 127.0.0.1",
            listener or "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.root / 'data'}/",
            "autosave_interval 1",
            "max_queued_messages 0",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            extra,
        ]
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> Broker:
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.proc.stderr.read().decode()} {self.log_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.log_text()}")

    def stop(self) -> None:
        """A clean stop (SIGTERM): mosquitto writes its persistence file, as on a broker reboot."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


class Collector:
    """The lab side: subscribes to PREFIX/# with QoS 1 and a persistent session, records everything."""

    def __init__(
        self, port: int, topic: str = "#", client_id: str = "lab-collector", auth=None, ca: str | None = None
    ):
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False, protocol=paho.MQTTv311
        )
        self.topic = topic
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 1)
        if auth:
            self.client.username_pw_set(*auth)
        if ca:
            self.client.tls_set(ca_certs=ca)
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        assert self.subscribed.wait(10), "collector could not subscribe"

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self.messages.append((msg.topic, msg.payload, msg.retain))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def on(self, suffix: str) -> list[dict]:
        """JSON payloads of messages whose topic ends with `suffix`."""
        with self.lock:
            return [json.loads(p) for t, p, _ in self.messages if t.endswith(suffix)]

    def raw(self, suffix: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _ in self.messages if t.endswith(suffix)]

    def cell_ids(self) -> Counter:
        return Counter(m["msg_id"] for m in self.on("/cells"))

    def wait_cells(self, expected: set[str], timeout: float = 60.0) -> Counter:
        """Wait until every msg_id in `expected` has arrived; returns the count of each id received."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.cell_ids()
            if expected <= set(got):
                return got
            time.sleep(0.2)
        got = self.cell_ids()
        missing = expected - set(got)
        raise AssertionError(
            f"{len(missing)} of {len(expected)} committed cells never arrived, e.g. {sorted(missing)[:3]}"
        )
