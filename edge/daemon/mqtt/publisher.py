"""The publisher thread: owns the paho-mqtt client, sends the outbox, marks what the broker acknowledged.

One thread does everything MQTT (connect, `client.loop()`, publish, PUBACK handling, watermarks),
rather than paho's own network thread plus ours: no lock between callbacks and the outbox state,
every connection error is caught here with its reason (for the page), and the back-off and the
SIGTERM drain deadline are ours to keep. The pipeline never waits for it: a broker that is down
costs nothing but rows waiting in results.db.

While the broker is away the thread holds at most `max_inflight` messages in memory (paho keeps
them, and sends them again with DUP set on reconnect); the rest of the backlog stays in SQLite and
is read a batch at a time.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edge.daemon.mqtt.client import HANDED_OVER, SUCCESS, error_string, make_client, reason
from edge.daemon.mqtt.config import MqttConfig
from edge.daemon.mqtt.messages import Topics, cell_payload, encode, status_payload, topic_level
from edge.daemon.status import Status
from edge.results.outbox import STREAMS, Outbox

ACK_COMMIT_S = 0.2  # the watermark is written this soon after a PUBACK (or after `limit` PUBACKs)
POLL_S = 1.0  # look for new rows at least this often, even without a wake-up from the pipeline
CONNACK_TIMEOUT_S = 15.0
COUNT_S = 1.0  # how often `queued` is counted from the database
OFFLINE_WAIT_S = 0.5  # clean shutdown: how long to wait for "offline" to be acknowledged

log = logging.getLogger(__name__)


class Stream:
    """One outbox stream. Rows go out in id order; the watermark moves over acknowledged rows only."""

    def __init__(self, name: str, acked_through: int):
        self.name = name
        self.acked_through = acked_through  # as last written to the database
        self.cursor = acked_through  # the highest row id handed to the client
        self.inflight: set[int] = set()  # published, no PUBACK yet
        self.retry: set[int] = set()  # refused by the broker (MQTT 5 reason code): sent again later
        self.more = True  # there may be rows after the cursor
        self.sent = 0

    def safe_through(self) -> int:
        waiting = self.inflight | self.retry
        return min(waiting) - 1 if waiting else self.cursor


class MqttPublisher:
    def __init__(
        self,
        config: MqttConfig,
        db_path: str | Path,
        synchronous: str = "normal",
        status_fn: Callable[[], Status] | None = None,
    ):
        self.config = config
        self.status_fn = status_fn
        self.device = config.device or topic_level(socket.gethostname())
        self.topics = Topics(config.prefix, self.device)
        self.client = make_client(
            config,
            self.device,
            self.topics.available,
            self._on_connect,
            self._on_disconnect,
            self._on_publish,
        )
        self.outbox = Outbox(db_path, config.backfill, synchronous)
        self.streams = {name: Stream(name, self.outbox.acked_through(name)) for name in STREAMS}
        self._mids: dict[int, tuple[str | None, int, str]] = {}  # paho message id -> (stream, row id, topic)
        self.limit = config.max_inflight
        # state for the page and the summary
        self.state = "connecting"
        self.connected = False
        self.connects = 0
        self.reconnects = 0
        self.refused = 0
        self.last_error = ""
        self.last_error_at: float | None = None
        self.last_ack_at: float | None = None
        self.queued = {name: 0 for name in STREAMS}
        # thread control
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._deadline = 0.0
        self._connecting_since: float | None = None
        self._next_attempt = 0.0
        self._backoff = 1.0
        self._refusal = ""
        self._refused_at = -1e9
        self._retry_at = 0.0
        self._persisted_at = 0.0
        self._counted_at = 0.0
        self._polled_at = 0.0
        self._acked_view = {name: s.acked_through for name, s in self.streams.items()}
        self._status_at = 0.0
        self._differential: dict | None = None
        self._differential_dirty = False
        self._differential_at = 0.0
        self._final_sent = False
        self.thread = threading.Thread(target=self._run, name="mqtt", daemon=True)

    # -- called from other threads ---------------------------------------------------------------
    def start(self, status_fn: Callable[[], Status] | None = None) -> None:
        """`status_fn`: the daemon's status, sent every status_interval_s (it exists once the daemon does)."""
        self.status_fn = status_fn or self.status_fn
        self.thread.start()

    def wake(self) -> None:
        """New rows were committed."""
        self._wake.set()

    def offer_differential(self, payload: dict) -> None:
        """The latest running differential; published at most every differential_interval_s."""
        self._differential = payload
        self._differential_dirty = True

    def stop(self) -> None:
        """SIGTERM: send what is queued for up to drain_s, mark it, say offline, disconnect."""
        self._deadline = time.monotonic() + self.config.drain_s
        self._stopping.set()
        self._wake.set()
        # A connection attempt in progress may take up to paho's connect timeout (5 s) to give up.
        if self.thread.ident is not None:
            self.thread.join(self.config.drain_s + OFFLINE_WAIT_S + 6)
        if not self.thread.is_alive():
            self.outbox.close()

    def snapshot(self) -> dict:
        """For /api/status, /metrics and the summary; never the password."""
        cells, events = self.streams["cells"], self.streams["events"]
        return {
            "enabled": True,
            "state": self.state,
            "broker": self.config.broker,
            "tls": self.config.tls.enabled,
            "username": self.config.username,
            "topics": self.topics.base + "/#",
            "device": self.device,
            "queued": self.queued["cells"] + self.queued["events"],
            "queued_cells": self.queued["cells"],
            "queued_events": self.queued["events"],
            "inflight": len(self._mids),
            "sent": cells.sent + events.sent,
            "sent_cells": cells.sent,
            "sent_events": events.sent,
            "acked_through": self._acked_view["cells"],
            "refused": self.refused,
            "reconnects": self.reconnects,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "last_ack_at": self.last_ack_at,
        }

    # -- paho callbacks (run inside client.loop(), in this thread) --------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self._connecting_since = None
        if reason_code.is_failure:
            self._refusal = f"broker refused the connection: {reason_code}"
            return  # paho closes the socket and calls _on_disconnect
        self.connected, self.state, self._backoff, self._refusal = True, "connected", 1.0, ""
        self.reconnects += int(self.connects > 0)
        self.connects += 1
        # MQTT 5 brokers say how many unacknowledged messages they take (mosquitto: 20).
        receive_max = getattr(properties, "ReceiveMaximum", None) if properties is not None else None
        self.limit = min(self.config.max_inflight, receive_max or self.config.max_inflight)
        log.info(f"mqtt: connected to {self.config.broker} as {self.topics.base}")
        self._publish_extra(self.topics.available, b"online")
        self._status_at = 0.0  # status and the differential right away
        self._differential_dirty = self._differential is not None

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        was = self.connected
        self.connected, self._connecting_since = False, None
        if self._stopping.is_set() and not self._refusal:
            self.state = "stopped"
            return
        message = self._refusal or f"connection to {self.config.broker} lost ({reason_code})"
        if time.monotonic() - self._refused_at < 2.0:  # mosquitto 2.0.11 hangs up after refusing a PUBLISH
            message = f"{self.last_error}; the broker then closed the connection"
        self._failed(message, loud=was)

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        stream_name, row_id, topic = self._mids.pop(mid, (None, 0, ""))
        stream = self.streams.get(stream_name) if stream_name else None
        if reason_code.is_failure:  # MQTT 5 only: e.g. "Not authorized" from the broker's ACL
            self.refused += 1
            self._refused_at = time.monotonic()
            what = "it is kept and sent again" if stream is not None else "a newer one will follow"
            self._error(f"broker refused a message on {topic} ({reason_code}); {what}", loud=True)
            if stream is not None:
                stream.inflight.discard(row_id)
                stream.retry.add(row_id)
                self._retry_at = time.monotonic() + self.config.reconnect_max_s
            return
        self.last_ack_at = time.time()
        if stream is not None:
            stream.inflight.discard(row_id)
            stream.sent += 1

    # -- the thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                if self._step():
                    break
            except Exception as exc:  # noqa: BLE001 - the publisher must never take the daemon down
                self._error(f"publisher error: {reason(exc)}", loud=True)
                self._drop_connection()
                time.sleep(1.0)
        try:
            self._finish()
        except Exception as exc:  # noqa: BLE001
            self._error(f"publisher error at shutdown: {reason(exc)}", loud=True)

    def _step(self) -> bool:
        """One turn of the loop; True when the thread should end."""
        now = time.monotonic()
        if self._stopping.is_set() and (not self.connected or now >= self._deadline or self._drained()):
            return True
        if not self.connected and self._connecting_since is None:
            if now < self._next_attempt:
                self._stopping.wait(min(0.2, self._next_attempt - now))
                self._count_if_due(now)
                return False
            self._connect(now)
            return False
        busy = self._fill(now) if self.connected else False
        rc = self.client.loop(timeout=0.0 if busy else 0.05)
        if rc != SUCCESS and (self.connected or self._connecting_since is not None):
            self._drop_connection()  # on_disconnect has run when paho saw the loss itself
        if self._connecting_since is not None and now - self._connecting_since > CONNACK_TIMEOUT_S:
            self._drop_connection(f"no answer (CONNACK) from {self.config.broker}")
        if self.connected:
            self._publish_due(now)
        self._persist(now)
        self._count_if_due(now)
        return False

    def _connect(self, now: float) -> None:
        self.state = "connecting"
        try:
            self.client.reconnect()  # TCP, TLS and CONNECT; the CONNACK arrives in client.loop()
            self._connecting_since = now
        except (OSError, ValueError) as exc:  # refused, unreachable, DNS, TLS verification, ...
            self._failed(f"cannot connect to {self.config.broker}: {reason(exc)}")

    def _drop_connection(self, message: str = "") -> None:
        """Give up on this connection; the next reconnect() closes its socket and opens a new one."""
        if self.connected or self._connecting_since is not None:
            self.connected, self._connecting_since = False, None
            self._failed(message or self._refusal or f"connection to {self.config.broker} lost")

    def _failed(self, message: str, loud: bool = True) -> None:
        self.state = "disconnected"
        self._error(message, loud=loud)
        self._next_attempt = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.config.reconnect_max_s)

    def _error(self, message: str, loud: bool) -> None:
        if loud and message != self.last_error:  # an hour of retries is one line, not 400
            log.warning(f"mqtt: {message}")
        self.last_error, self.last_error_at = message, time.time()

    # -- sending -------------------------------------------------------------------------------
    def _fill(self, now: float) -> bool:
        """Hand rows to the client up to the inflight limit; True if it published anything."""
        if self._wake.is_set():
            self._wake.clear()
            for s in self.streams.values():
                s.more = True
        published = False
        for s in self.streams.values():
            if s.retry and now >= self._retry_at:
                ids = sorted(s.retry)[: max(0, self.limit - len(self._mids))]
                for row in self.outbox.rows_by_id(s.name, ids):
                    s.retry.discard(row["id"])
                    published |= self._publish_row(s, row)
            room = self.limit - len(self._mids)
            if room <= 0 or not s.more:
                continue
            rows = self.outbox.rows_after(s.name, s.cursor, room)
            s.more = len(rows) == room
            for row in rows:
                published |= self._publish_row(s, row)
        if not published and now - self._polled_at > POLL_S:
            self._polled_at = now
            for s in self.streams.values():
                s.more = True
        return published

    def _publish_row(self, stream: Stream, row: dict) -> bool:
        if stream.name == "cells":
            topic, payload = self.topics.cells, encode(cell_payload(self.device, row))
        else:
            topic, payload = self.topics.below(row["topic"]), row["payload"].encode()
        info = self.client.publish(topic, payload, qos=1)
        if info.rc not in HANDED_OVER:  # NO_CONN is tracked all the same: paho sends it after the CONNACK
            raise RuntimeError(f"publish on {topic} failed ({error_string(info.rc)})")
        self._mids[info.mid] = (stream.name, row["id"], topic)
        stream.inflight.add(row["id"])
        stream.cursor = max(stream.cursor, row["id"])
        return True

    def _publish_extra(self, topic: str, payload: bytes, retain: bool = True) -> None:
        """Status, availability and the differential: QoS 1 and retained, not through the outbox
        (a newer one replaces a lost one)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc in HANDED_OVER:
            self._mids[info.mid] = (None, 0, topic)

    def _publish_due(self, now: float) -> None:
        if len(self._mids) >= self.limit:
            return
        d = self._differential
        if (
            self._differential_dirty
            and d is not None
            and (now - self._differential_at >= self.config.differential_interval_s or d.get("ended"))
        ):
            self._differential_dirty, self._differential_at = False, now
            self._publish_extra(self.topics.differential(d["session_id"]), encode(d))
        if self.status_fn is not None and now - self._status_at >= self.config.status_interval_s:
            self._status_at = now
            self._publish_extra(self.topics.status, encode(status_payload(self.device, self.status_fn())))

    def _drained(self) -> bool:
        if self._mids or any(s.more or s.retry for s in self.streams.values()):
            return False
        return not self._differential_dirty

    # -- bookkeeping ---------------------------------------------------------------------------
    def _persist(self, now: float, force: bool = False) -> None:
        """Write the watermarks every ACK_COMMIT_S, or as soon as `limit` more rows were acknowledged
        (a backlog drains at thousands a second): a crash repeats at most about 2 x limit messages."""
        due = force or now - self._persisted_at >= ACK_COMMIT_S
        if not due and all(s.safe_through() - s.acked_through < self.limit for s in self.streams.values()):
            return
        self._persisted_at = now
        for s in self.streams.values():
            safe = s.safe_through()
            if safe > s.acked_through:
                self.outbox.set_acked_through(s.name, safe)
                s.acked_through = safe
            self._acked_view[s.name] = safe  # what snapshot() shows: sets are not read from other threads

    def _count_if_due(self, now: float, force: bool = False) -> None:
        if not force and now - self._counted_at < COUNT_S:
            return
        self._counted_at = now
        for s in self.streams.values():
            self.queued[s.name] = self.outbox.pending(s.name, s.safe_through())

    def _finish(self) -> None:
        """Mark what was acknowledged; if connected, say "offline" (retained) and disconnect. The last
        status counts what is queued now: the count of up to COUNT_S ago missed the rows sent since."""
        self._persist(time.monotonic(), force=True)
        self._count_if_due(time.monotonic(), force=True)
        if self.connected:
            if self.status_fn is not None:
                self._publish_extra(
                    self.topics.status, encode(status_payload(self.device, self.status_fn(), "stopped"))
                )
            self._publish_extra(self.topics.available, b"offline")
            end = time.monotonic() + OFFLINE_WAIT_S
            while self._mids and self.connected and time.monotonic() < end:
                if self.client.loop(timeout=0.05) != SUCCESS:
                    break
            self._persist(time.monotonic(), force=True)
            self.client.disconnect()
            self.client.loop(timeout=0.05)
        self.connected, self.state = False, "stopped"
        self._count_if_due(time.monotonic(), force=True)
