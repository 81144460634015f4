"""The [mqtt] table of the daemon's config. No network and no file I/O here (the password file
and the TLS files are read when the publisher is set up, and an unreadable one is a one-line error
naming its key)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# A topic level of ours must not hold MQTT's separators or wildcards.
_LEVEL = re.compile(r"^[^/+#\x00]+$")


@dataclass
class MqttTlsConfig:
    enabled: bool = False
    ca: str = ""  # CA bundle that signed the broker's certificate; empty: the system's CAs
    cert: str = ""  # client certificate, for brokers that require one (mutual TLS)
    key: str = ""  # its private key; empty when `cert` holds both


@dataclass
class MqttConfig:
    host: str = ""  # empty: MQTT off
    port: int = 0  # 0: 1883, or 8883 with TLS
    prefix: str = "edge-hemato"  # topics are PREFIX/DEVICE/...; may hold "/" (e.g. "clinic-a/lab")
    device: str = ""  # empty: this machine's host name
    client_id: str = ""  # empty: edge-run-DEVICE (two clients with one id keep kicking each other off)
    username: str = ""
    password: str = ""  # prefer password_file: the config file is often world-readable
    password_file: str = ""
    protocol: str = "5"  # "5" or "3.1.1"; 5 lets the broker refuse a message (ACL) instead of dropping it
    keepalive_s: int = 30
    reconnect_max_s: float = 30.0  # back-off ceiling between connection attempts (from 1 s, doubling)
    max_inflight: int = 20  # QoS 1 messages awaiting PUBACK; also capped by the broker's Receive Maximum
    drain_s: float = 2.0  # SIGTERM: time to send what is queued; the rest waits for the next start
    status_interval_s: float = 30.0
    differential_interval_s: float = 1.0  # the running differential, at most this often
    # The first start with MQTT also sends the results already in the database (false: only new ones).
    backfill: bool = True
    tls: MqttTlsConfig = field(default_factory=MqttTlsConfig)

    @property
    def enabled(self) -> bool:
        return bool(self.host)

    @property
    def broker_port(self) -> int:
        return self.port or (8883 if self.tls.enabled else 1883)

    @property
    def broker(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.broker_port}"


def validate_mqtt(m: MqttConfig, check) -> None:
    """`check(ok, key, message)` raises the config's one-line error."""
    if not m.enabled:
        return
    check(0 <= m.port <= 65535, "mqtt.port", f"must be between 1 and 65535 (0: the default), got {m.port}")
    levels = m.prefix.split("/")
    check(
        bool(m.prefix) and all(_LEVEL.match(level) for level in levels),
        "mqtt.prefix",
        f"expected topic levels without +, # or empty levels (e.g. edge-hemato or clinic/lab), got {m.prefix!r}",
    )
    check(
        m.device == "" or bool(_LEVEL.match(m.device)),
        "mqtt.device",
        f"must not contain /, + or #, got {m.device!r}",
    )
    check(m.protocol in ("5", "3.1.1"), "mqtt.protocol", f'expected "5" or "3.1.1", got {m.protocol!r}')
    check(
        not (m.password and m.password_file), "mqtt.password_file", "give password or password_file, not both"
    )
    check(
        bool(m.username) or not (m.password or m.password_file),
        "mqtt.username",
        "a password needs a username",
    )
    check(m.keepalive_s >= 5, "mqtt.keepalive_s", f"must be >= 5, got {m.keepalive_s}")
    check(m.reconnect_max_s >= 1, "mqtt.reconnect_max_s", f"must be >= 1, got {m.reconnect_max_s}")
    check(
        1 <= m.max_inflight <= 1000, "mqtt.max_inflight", f"must be between 1 and 1000, got {m.max_inflight}"
    )
    check(0 <= m.drain_s <= 60, "mqtt.drain_s", f"must be between 0 and 60, got {m.drain_s}")
    check(m.status_interval_s >= 1, "mqtt.status_interval_s", "must be >= 1")
    check(m.differential_interval_s >= 0, "mqtt.differential_interval_s", "must be >= 0")
    t = m.tls
    check(
        t.enabled or not (t.ca or t.cert or t.key), "mqtt.tls.enabled", "ca/cert/key are set but TLS is off"
    )
    check(bool(t.cert) or not t.key, "mqtt.tls.cert", "a key needs its certificate")
