"""The `mqtt:` source (adapters.mqtt.MqttIngress) against a real MQTT broker and the session's nats-server.

Hub tests run the shipped flow flows/meter-vendor4-push.yaml with its topic, client id and output
subject made this test's own. Every test runs against both production brokers (the `mqtt_broker`
fixture: nats-server's MQTT listener and Mosquitto).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiomqtt
import nats
import pytest
import pytest_asyncio
import structlog.testing

from adapters.mqtt import MqttEndpointConfig, MqttIngress, content_type, identity_of
from engine.config import HubConfig
from engine.errors import PublishFailed
from engine.ingress import Landing
from engine.runtime import Hub
from engine.spec import Flow
from engine.streams import ensure_streams
from sandbox.meters import ManualClock, MqttPublisher, Vendor4Platform
from sandbox.mqtt_broker import HUB_PASSWORD, HUB_USER, VENDOR4_PASSWORD, VENDOR4_USER, MqttBroker
from schemas.meter import MeterReading
from tests.helpers import StreamReader, project_from, started_hub

ROOT = Path(__file__).resolve().parents[1]
os.environ["MQTT_TEST_PASSWORD"] = HUB_PASSWORD
UTC = timezone.utc


@pytest.fixture
def broker(mqtt_broker: MqttBroker) -> MqttBroker:
    return mqtt_broker


@pytest_asyncio.fixture(scope="module")
async def js(nats_url: str) -> AsyncIterator[Any]:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_streams(js, HubConfig())  # HUB_INGRESS among them
    yield js
    await nc.close()


def records(meters: int = 3, days: int = 1) -> list[dict[str, Any]]:
    """Vendor 4's records for `meters` meters over `days` days of March 2025."""
    platform = Vendor4Platform(meters, clock=ManualClock(datetime(2025, 4, 2, tzinfo=UTC)))
    return platform.records(datetime(2025, 3, 10, tzinfo=UTC), datetime(2025, 3, 10 + days, tzinfo=UTC))


async def publish(broker: MqttBroker, unique: str, items: list[dict[str, Any]]) -> None:
    async with MqttPublisher(broker.host, broker.port, username=VENDOR4_USER, password=VENDOR4_PASSWORD,
                             client_id=f"pub-{unique}", topic_prefix=f"{unique}/readings") as pub:
        await pub.publish_many(items)


def endpoint_for(broker: MqttBroker) -> MqttEndpointConfig:
    return MqttEndpointConfig.model_validate({
        "adapter": "mqtt", "host": broker.host, "port": broker.port, "tls": False, "username": HUB_USER,
        "password": {"env": "MQTT_TEST_PASSWORD"}, "keepalive": "5s", "timeout": "5s"})


def shipped_flow(broker: MqttBroker, unique: str, tmp: Path) -> Any:
    """The shipped vendor-4 push flow, with this test's topics, client id and output subject."""
    text = (ROOT / "flows" / "meter-vendor4-push.yaml").read_text()
    for old, new in (("name: meter-vendor4-push", f"name: v4push-{unique}"),
                     ("vendor4/readings/#", f"{unique}/readings/#"), ("plu-hub-vendor4", f"hub-{unique}"),
                     ("meter.reading.collected", f"{unique}.meter.reading.collected")):
        assert old in text
        text = text.replace(old, new)
    return project_from(tmp, f"""
        streams:
          - {{name: {unique.upper()}, subjects: ["{unique}.>"]}}
        endpoints:
          vendor4_broker:
            adapter: mqtt
            host: ${{VENDOR4_MQTT_HOST:-{broker.host}}}
            port: ${{VENDOR4_MQTT_PORT:-{broker.port}}}
            tls: false
            username: {HUB_USER}
            password: {{env: MQTT_TEST_PASSWORD}}
            keepalive: 5s
            timeout: 5s
        """, text)


def ingress_of(hub: Hub, unique: str) -> MqttIngress:
    return hub.ingresses[f"v4push-{unique}"]


async def connected_hub(project: Any, nats_url: str, unique: str) -> Hub:
    hub = await started_hub(project, nats_url)
    await ingress_of(hub, unique).wait_for(lambda i: i.connected)
    return hub


async def count_on(js: Any, stream: str, subject: str) -> int:
    info = await js.stream_info(stream, subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0)


async def test_each_published_reading_arrives_once_as_a_canonical_reading(
        broker: MqttBroker, js: Any, nats_url: str, unique: str, tmp_path: Path) -> None:
    """Readings published by vendor 4 arrive once each on meter.reading.collected as MeterReadings, each acked after its store."""
    sent = records(3, 2)
    hub = await connected_hub(shipped_flow(broker, unique, tmp_path), nats_url, unique)
    out = await StreamReader.open(js, f"{unique}.meter.reading.collected")
    try:
        await publish(broker, unique, sent)
        await out.wait_for(len(sent))
        ingress = ingress_of(hub, unique)
        await ingress.wait_for(lambda i: i.acked == len(sent))
    finally:
        await hub.stop()
        await out.sub.unsubscribe()
    readings = [MeterReading.model_validate(p) for p in out.payloads()]
    assert sorted((r.meter_id, r.read_at) for r in readings) == sorted(
        (s["meter"], datetime.fromisoformat(s["intervalEnd"])) for s in sent)
    assert {r.source for r in readings} == {"vendor4/push"}
    assert (ingress.received, ingress.stored, ingress.duplicates) == (len(sent), len(sent), 0)
    assert await count_on(js, unique.upper(), f"{unique}.meter.reading.collected") == len(sent)


async def test_readings_published_while_the_hub_is_down_arrive_after_it_comes_back(
        broker: MqttBroker, js: Any, nats_url: str, unique: str, tmp_path: Path) -> None:
    """What vendor 4 publishes after the hub stopped (and the broker saw it leave) arrives when the hub starts again."""
    project = shipped_flow(broker, unique, tmp_path)
    await (await connected_hub(project, nats_url, unique)).stop()
    await broker.wait_disconnected(f"hub-{unique}")
    sent = records(4)
    await publish(broker, unique, sent)
    hub = await started_hub(project, nats_url)
    out = await StreamReader.open(js, f"{unique}.meter.reading.collected")
    try:
        got = await out.wait_for(len(sent))
        await ingress_of(hub, unique).wait_for(lambda i: i.acked == len(sent))
    finally:
        await hub.stop()
        await out.sub.unsubscribe()
    assert sorted(json.loads(m.data)["meter_id"] for m in got) == sorted(s["meter"] for s in sent)


async def test_the_same_reading_published_twice_is_one_message(
        broker: MqttBroker, js: Any, nats_url: str, unique: str, tmp_path: Path) -> None:
    """A reading the vendor sends twice is stored once (same topic and bytes) and published once."""
    [twice, marker] = records(2)
    hub = await connected_hub(shipped_flow(broker, unique, tmp_path), nats_url, unique)
    out = await StreamReader.open(js, f"{unique}.meter.reading.collected")
    try:
        await publish(broker, unique, [twice, twice, marker])
        got = await out.wait_for(2)  # the marker came after the repeat: the repeat had its chance
        ingress = ingress_of(hub, unique)
        await ingress.wait_for(lambda i: i.acked == 3)
    finally:
        await hub.stop()
        await out.sub.unsubscribe()
    assert [json.loads(m.data)["meter_id"] for m in got] == [twice["meter"], marker["meter"]]
    assert (ingress.received, ingress.stored, ingress.duplicates) == (3, 2, 1)
    assert await count_on(js, unique.upper(), f"{unique}.meter.reading.collected") == 2


class FailingOnce(Landing):
    """A Landing whose first store fails as if JetStream had not confirmed."""

    calls = 0

    async def store_many(self, items: list[Any]) -> list[Any]:
        self.calls += 1
        if self.calls == 1:
            return [PublishFailed("injected: no publish ack") for _ in items]
        return await super().store_many(items)


def ingress_for(broker: MqttBroker, js: Any, unique: str, landing_cls: type[Landing] = Landing) -> MqttIngress:
    flow = Flow.model_validate({"name": f"mqtt-{unique}", "source": {"mqtt": {
        "endpoint": "b", "topics": [f"{unique}/readings/#"], "client_id": f"hub-{unique}"}},
        "steps": [{"publish": f"{unique}.out"}]})
    return MqttIngress(flow, flow.source.mqtt, endpoint_for(broker),  # type: ignore[union-attr]
                       landing_cls(flow, js, 5.0, "mqtt"), None)


async def stored(js: Any, ingress: MqttIngress, count: int) -> list[Any]:
    reader = await StreamReader.open(js, ingress.landing.subject)
    try:
        return await reader.wait_for(count, timeout=5)
    finally:
        await reader.sub.unsubscribe()


async def test_a_failed_store_is_not_acked_and_comes_again_after_a_reconnect(
        broker: MqttBroker, js: Any, unique: str) -> None:
    """A message whose store fails gets no PUBACK; the ingress reconnects and the broker's redelivery is stored."""
    ingress = ingress_for(broker, js, unique, FailingOnce)
    with structlog.testing.capture_logs() as logs:
        await ingress.start()
        try:
            await ingress.wait_for(lambda i: i.connected)
            [record] = records(1)
            await publish(broker, unique, [record])
            await ingress.wait_for(lambda i: i.stored == 1 and i.reconnects == 1)  # the backlog may beat the SUBACK
        finally:
            await ingress.stop()
    assert (ingress.received, ingress.failed, ingress.stored, ingress.acked, ingress.reconnects) == (2, 1, 1, 1, 1)
    [msg] = await stored(js, ingress, 1)
    assert json.loads(msg.data) == record
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["mqtt_store_failed"]


async def test_the_ingress_reconnects_after_the_broker_restarts(broker: MqttBroker, js: Any, unique: str) -> None:
    """A broker restart is one outage with one warning; the ingress reconnects, subscribes again and stores what comes next."""
    ingress = ingress_for(broker, js, unique)
    with structlog.testing.capture_logs() as logs:
        await ingress.start()
        try:
            await ingress.wait_for(lambda i: i.connected)
            await broker.restart()
            await ingress.wait_for(lambda i: i.reconnects == 1 and i.connected, timeout=15)
            await publish(broker, unique, records(2))
            await ingress.wait_for(lambda i: i.acked == 2)
        finally:
            await ingress.stop()
    assert ingress.stored == 2
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["mqtt_unavailable"]


async def test_headers_say_the_topic_and_whether_the_payload_is_json(broker: MqttBroker, js: Any, unique: str) -> None:
    """A stored message carries its topic and a JSON or octet-stream content-type; its id is topic plus payload hash."""
    ingress = ingress_for(broker, js, unique)
    await ingress.start()
    try:
        await ingress.wait_for(lambda i: i.connected)
        async with aiomqtt.Client(broker.host, broker.port, username=VENDOR4_USER, password=VENDOR4_PASSWORD,
                                  identifier=f"pub-{unique}") as client:
            await client.publish(f"{unique}/readings/a", b'{"x": 1}', qos=1)
            await client.publish(f"{unique}/readings/b", b"\x00binary", qos=1)
        await ingress.wait_for(lambda i: i.acked == 2)
    finally:
        await ingress.stop()
    first, second = await stored(js, ingress, 2)
    assert (first.headers["content-type"], first.headers["Hub-Mqtt-Topic"]) == ("application/json", f"{unique}/readings/a")
    assert (second.headers["content-type"], second.data) == ("application/octet-stream", b"\x00binary")
    assert first.headers["Nats-Msg-Id"] == ingress.landing.message_id(identity_of(f"{unique}/readings/a", b'{"x": 1}'))
    assert content_type(b"not json") == "application/octet-stream"


def test_the_endpoint_block_validates_and_cannot_be_called() -> None:
    """The config/sandbox.yaml block validates; a misspelt key is refused; the adapter says it is a source only."""
    from adapters.mqtt import MqttAdapter

    block = {"adapter": "mqtt", "host": "127.0.0.1", "port": 18830, "tls": False, "username": "plu-hub",
             "password": {"env": "VENDOR4_MQTT_PASSWORD"}, "keepalive": "30s", "timeout": "10s"}
    config = MqttEndpointConfig.model_validate(block)
    assert (config.circuit_breaker, config.keepalive) == (None, 30.0)
    with pytest.raises(ValueError):
        MqttEndpointConfig.model_validate({**block, "tsl": True})
    assert "source only" in (MqttAdapter("vendor4_broker", config, None).check_operation(None) or "")
