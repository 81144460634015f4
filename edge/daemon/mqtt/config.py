"""The [mqtt] table of the daemon's config. No network and no file I/O here (the password file
and the TLS files are read when the publisher is set up, and an unreadable one is a one-line error
naming its key)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from edge.daemon.section import Section, invalid

# A topic level of ours must not hold MQTT's separators or wildcards.
_LEVEL = re.compile(r"^[^/+#\x00]+$")


class MqttTlsConfig(Section):
    enabled: bool = False
    ca: str = ""  # CA bundle that signed the broker's certificate; empty: the system's CAs
    cert: str = ""  # client certificate, for brokers that require one (mutual TLS)
    key: str = ""  # its private key; empty when `cert` holds both

    @model_validator(mode="after")
    def _consistent(self) -> MqttTlsConfig:
        if not self.enabled and (self.ca or self.cert or self.key):
            raise invalid("ca/cert/key are set but TLS is off", "enabled")
        if self.key and not self.cert:
            raise invalid("a key needs its certificate", "cert")
        return self


class MqttConfig(Section):
    host: str = ""  # empty: MQTT off
    port: int = Field(0, ge=0, le=65535)  # 0: 1883, or 8883 with TLS
    prefix: str = "edge-hemato"  # topics are PREFIX/DEVICE/...; may hold "/" (e.g. "clinic-a/lab")
    device: str = ""  # empty: this machine's host name
    client_id: str = ""  # empty: edge-run-DEVICE (two clients with one id keep kicking each other off)
    username: str = ""
    password: str = ""  # prefer password_file: the config file is often world-readable
    password_file: str = ""
    protocol: Literal["5", "3.1.1"] = "5"  # 5 lets the broker refuse a message (ACL) instead of dropping it
    keepalive_s: int = Field(30, ge=5, le=65535)  # MQTT's keep alive is a 16-bit number of seconds
    # back-off ceiling between connection attempts (from 1 s, doubling)
    reconnect_max_s: float = Field(30.0, ge=1, le=3600)
    # QoS 1 messages awaiting PUBACK; also capped by the broker's Receive Maximum
    max_inflight: int = Field(20, ge=1, le=1000)
    # SIGTERM: time to send what is queued; the rest waits for the next start
    drain_s: float = Field(2.0, ge=0, le=60)
    status_interval_s: float = Field(30.0, ge=1, le=86400)
    differential_interval_s: float = Field(1.0, ge=0, le=3600)  # the running differential, at most this often
    # The first start with MQTT also sends the results already in the database (false: only new ones).
    backfill: bool = True
    tls: MqttTlsConfig = Field(default_factory=MqttTlsConfig)

    @field_validator("prefix")
    @classmethod
    def _topic_levels(cls, prefix: str) -> str:
        if not (prefix and all(_LEVEL.match(level) for level in prefix.split("/"))):
            raise invalid(
                "expected topic levels without +, # or empty levels (e.g. edge-hemato or clinic/lab), "
                f"got {prefix!r}"
            )
        return prefix

    @field_validator("device")
    @classmethod
    def _one_level(cls, device: str) -> str:
        if device and not _LEVEL.match(device):
            raise invalid(f"must not contain /, + or #, got {device!r}")
        return device

    @model_validator(mode="after")
    def _credentials(self) -> MqttConfig:
        if self.password and self.password_file:
            raise invalid("give password or password_file, not both", "password_file")
        if (self.password or self.password_file) and not self.username:
            raise invalid("a password needs a username", "username")
        return self

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
