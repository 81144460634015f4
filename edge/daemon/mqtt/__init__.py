"""Results to the lab over MQTT (`[mqtt]` in the daemon's TOML config).

    config.py     the [mqtt] table as pydantic models, with its bounds and checks (each error names its key)
    messages.py   the topic layout and the JSON payloads
    client.py     the paho-mqtt client, made from the config (credentials, TLS, last will)
    publisher.py  the thread that owns the client: connects, publishes, marks acknowledged
    sink.py       the pipeline's side: wakes the publisher, records alerts, offers the differential

What the broker has acknowledged is kept in results.db beside the results (edge/results/outbox.py).
Nothing here is imported unless [mqtt] names a broker; paho-mqtt is imported by client.py only.
docs/daemon.md ("Results to the lab over MQTT") describes the topics and the delivery guarantee.
"""
