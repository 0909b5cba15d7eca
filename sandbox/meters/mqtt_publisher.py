"""Vendor 4's real-time feed: its platform publishes each reading on an MQTT broker the hub subscribes to.

    async with MqttPublisher("127.0.0.1", broker.port, username="vendor4", password="...") as pub:
        await pub.publish(record)          # topic vendor4/readings/<record["meter"]>, QoS 1
        await pub.publish_many(records)

The payload is the vendor-4 pull record as JSON (sandbox/meters/vendor4.py), so a pushed reading
and a pulled one for the same meter and interval are the same reading. `publish` returns once the
broker has acknowledged (PUBACK): the message is the broker's problem from then on, which is what
the hub's persistent session relies on. Built on aiomqtt (paho-mqtt underneath), as the hub's
ingress is; the broker it publishes to is a production one written by others (sandbox/mqtt_broker.py:
nats-server's MQTT listener, or Mosquitto), so the client and the broker check each other.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import aiomqtt

TOPIC_PREFIX = "vendor4/readings"


class MqttPublisher:
    """One MQTT connection publishing vendor-4 readings with QoS 1."""

    def __init__(self, host: str, port: int, *, username: str | None = None, password: str | None = None,
                 client_id: str = "vendor4-platform", topic_prefix: str = TOPIC_PREFIX, qos: int = 1) -> None:
        self.topic_prefix = topic_prefix.rstrip("/")
        self.qos = qos
        self.published = 0
        self._client = aiomqtt.Client(host, port, identifier=client_id, username=username, password=password,
                                      protocol=aiomqtt.ProtocolVersion.V311, clean_session=True)
        self._connected = False

    def topic(self, record: dict[str, Any]) -> str:
        return f"{self.topic_prefix}/{record['meter']}"

    async def connect(self) -> "MqttPublisher":
        if not self._connected:
            await self._client.__aenter__()
            self._connected = True
        return self

    async def close(self) -> None:
        if self._connected:
            self._connected = False
            await self._client.__aexit__(None, None, None)

    async def __aenter__(self) -> "MqttPublisher":
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def publish(self, record: dict[str, Any]) -> None:
        """Publish one reading; returns after the broker's PUBACK."""
        await self.connect()
        await self._client.publish(self.topic(record), json.dumps(record, separators=(",", ":")), qos=self.qos)
        self.published += 1

    async def publish_many(self, records: Sequence[dict[str, Any]]) -> int:
        """Publish readings one after another (in order per meter, as the platform would); answers the count."""
        for record in records:
            await self.publish(record)
        return len(records)
