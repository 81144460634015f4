"""The paho-mqtt client, made from the [mqtt] config: protocol, client id, credentials, TLS and the last
will. The only module that imports paho-mqtt (the 'device' extra); the publisher thread drives it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edge.daemon.config import ConfigError
from edge.daemon.mqtt.config import MqttConfig
from edge.errors import MissingExtraError

try:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
except ImportError as exc:  # the 'device' extra brings paho-mqtt
    raise MissingExtraError("edge run (mqtt)", "device", exc.name or "paho-mqtt") from None

SUCCESS = MQTTErrorCode.MQTT_ERR_SUCCESS
# NO_CONN: paho keeps the message and sends it after the next CONNACK, so it counts as handed over.
HANDED_OVER = (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN)


def error_string(rc) -> str:
    return paho.error_string(rc)


def reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def read_secret(path: str, key: str) -> str:
    try:
        return Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{key}: cannot read {path} ({reason(exc)})") from None


def make_client(
    c: MqttConfig,
    device: str,
    will_topic: str,
    on_connect: Callable,
    on_disconnect: Callable,
    on_publish: Callable,
):
    """A client for `c` that has not connected yet: the publisher's thread connects (and reconnects)
    with client.reconnect(). ConfigError for unreadable credentials or certificate files."""
    v5 = c.protocol == "5"
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=c.client_id or f"edge-run-{device}",
        protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
        **({} if v5 else {"clean_session": True}),
    )
    if c.username:
        password = read_secret(c.password_file, "mqtt.password_file") if c.password_file else c.password
        client.username_pw_set(c.username, password or None)
    if c.tls.enabled:
        for key in ("ca", "cert", "key"):
            path = getattr(c.tls, key)
            if path and not Path(path).is_file():
                raise ConfigError(f"mqtt.tls.{key}: {path} is not a readable file")
        try:
            client.tls_set(ca_certs=c.tls.ca or None, certfile=c.tls.cert or None, keyfile=c.tls.key or None)
        except (
            OSError,
            ValueError,
        ) as exc:  # ssl.SSLError is an OSError: a bad PEM, a key that does not match
            raise ConfigError(f"mqtt.tls: cannot use the certificate files ({reason(exc)})") from None
    client.will_set(will_topic, "offline", qos=1, retain=True)
    client.max_inflight_messages_set(c.max_inflight)
    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_publish = on_publish
    # Stores the address only; the publisher's thread connects with client.reconnect().
    client.connect_async(c.host, c.broker_port, c.keepalive_s, **({"clean_start": True} if v5 else {}))
    return client
