"""The pipeline's side of MQTT, after the store has committed the frame (and the differential has
counted it): wake the publisher, commit an event for each alert that started firing, and offer
the running differential. Nothing here touches the network."""

from __future__ import annotations

from edge.daemon.differential import DifferentialCount
from edge.daemon.mqtt.messages import alert_event, differential_payload
from edge.daemon.mqtt.publisher import MqttPublisher
from edge.daemon.processor import FrameResult
from edge.daemon.sinks import Sink


class MqttSink(Sink):
    name = "mqtt"

    def __init__(self, publisher: MqttPublisher, differential: DifferentialCount, session_id: str):
        self.publisher, self.differential, self.session_id = publisher, differential, session_id
        # A continued session starts with its restored counts: rules already firing are not news.
        self._active = {a.name for a in differential.alerts() if a.active}
        self._offer()

    def _offer(self, ended: bool = False) -> None:
        self.publisher.offer_differential(
            differential_payload(self.publisher.device, self.session_id, self.differential, ended)
        )

    def on_frame(self, result: FrameResult) -> None:
        alerts = self.differential.alerts()
        for alert in alerts:
            if alert.active and alert.name not in self._active:
                msg_id, payload = alert_event(
                    self.publisher.device, self.session_id, alert, result.frame.frame_id
                )
                self.publisher.outbox.add_event(msg_id, "alerts", payload)
        self._active = {a.name for a in alerts if a.active}
        self._offer()
        self.publisher.wake()

    def finish(self) -> None:
        """The run ends: the last differential of this run, marked ended."""
        self._offer(ended=True)
