"""The production MQTT brokers the hub meets (nats-server's MQTT listener, Mosquitto; sandbox/mqtt_broker.py)
keep what the hub's vendor-4 subscriber needs: a persistent session (clean_session=False) with QoS 1 gets
the messages published while it was away, again what it received but never acknowledged, across restarts.

Every test runs on both brokers (the `mqtt_broker` fixture); without mosquitto a developer sees a skip
naming the package, CI (HUB_REQUIRE_REAL_SERVERS=1) a failure.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from datetime import datetime, timezone

import aiomqtt
import pytest

from sandbox.meters import ManualClock, MqttPublisher, Vendor4Platform
from sandbox.mqtt_broker import HUB_PASSWORD, HUB_USER, VENDOR4_PASSWORD, VENDOR4_USER, MqttBroker


@pytest.fixture
def broker(mqtt_broker: MqttBroker) -> MqttBroker:
    return mqtt_broker


def hub(broker: MqttBroker, client_id: str, *, clean: bool = False, manual_ack: bool = False,
        password: str = HUB_PASSWORD) -> aiomqtt.Client:
    client = aiomqtt.Client(broker.host, broker.port, identifier=client_id, username=HUB_USER, password=password,
                            protocol=aiomqtt.ProtocolVersion.V311, clean_session=clean)
    if manual_ack:  # paho sends PUBACK only on ack(): how a hub can store in JetStream first, then acknowledge
        client._client.manual_ack_set(True)
    return client


async def publish(broker: MqttBroker, prefix: str, *meters: str) -> None:
    records = [{"meter": m, "value": i} for i, m in enumerate(meters)]
    async with MqttPublisher(broker.host, broker.port, username=VENDOR4_USER, password=VENDOR4_PASSWORD,
                             client_id=f"pub-{prefix}", topic_prefix=f"{prefix}/readings") as pub:
        await pub.publish_many(records)


async def receive(client: aiomqtt.Client, count: int) -> list[tuple[str, int]]:
    """The next `count` messages as (meter, qos), in arrival order."""
    got = []
    async with asyncio.timeout(10):
        async for message in client.messages:
            got.append((json.loads(message.payload)["meter"], message.qos))
            if len(got) == count:
                return got
    return got


async def subscribe_and_leave(broker: MqttBroker, client_id: str, prefix: str) -> None:
    """Subscribe with a persistent session, disconnect, and wait until the broker knows the client is gone."""
    async with hub(broker, client_id) as client:
        await client.subscribe(f"{prefix}/readings/#", qos=1)
    await broker.wait_disconnected(client_id)


async def test_persistent_session_gets_what_was_published_while_away(broker: MqttBroker, unique: str) -> None:
    """A QoS 1 subscriber with clean_session=False that left gets, on return and without resubscribing,
    every message published meanwhile, once each and in order."""
    await subscribe_and_leave(broker, unique, unique)
    await publish(broker, unique, "m1", "m2", "m3", "m4", "m5")
    async with hub(broker, unique) as client:
        assert await receive(client, 5) == [("m1", 1), ("m2", 1), ("m3", 1), ("m4", 1), ("m5", 1)]
    await broker.wait_disconnected(unique)
    async with hub(broker, unique) as client:
        await publish(broker, unique, "marker")
        assert await receive(client, 1) == [("marker", 1)]  # nothing was delivered twice


async def test_a_killed_subscriber_gets_its_messages_after_restarting(broker: MqttBroker, unique: str) -> None:
    """A subscriber process killed without DISCONNECT (SIGKILL) finds the messages published meanwhile when it reconnects."""
    script = (
        "import asyncio, aiomqtt, sys\n"
        "async def main():\n"
        f"    c = aiomqtt.Client({broker.host!r}, {broker.port}, identifier={unique!r}, username={HUB_USER!r},\n"
        f"                      password={HUB_PASSWORD!r}, protocol=aiomqtt.ProtocolVersion.V311, clean_session=False)\n"
        "    async with c:\n"
        f"        await c.subscribe('{unique}/readings/#', qos=1)\n"
        "        print('subscribed', flush=True)\n"
        "        await asyncio.Event().wait()\n"
        "asyncio.run(main())\n")
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(15):
            assert (await process.stdout.readline()).strip() == b"subscribed"
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()
    await broker.wait_disconnected(unique)
    await publish(broker, unique, "a", "b", "c")
    async with hub(broker, unique) as client:
        assert await receive(client, 3) == [("a", 1), ("b", 1), ("c", 1)]


async def test_a_clean_session_gets_nothing_from_while_it_was_away(broker: MqttBroker, unique: str) -> None:
    """With clean_session=True the broker forgets the subscriber: what was published while it was away is gone."""
    async with hub(broker, unique, clean=True) as client:
        await client.subscribe(f"{unique}/readings/#", qos=1)
    await broker.wait_disconnected(unique)
    await publish(broker, unique, "lost")
    async with hub(broker, unique, clean=True) as client:
        await client.subscribe(f"{unique}/readings/#", qos=1)
        await publish(broker, unique, "marker")
        assert await receive(client, 1) == [("marker", 1)]


async def test_a_delivered_but_unacknowledged_message_is_sent_again(broker: MqttBroker, unique: str) -> None:
    """A QoS 1 message the subscriber received but never acknowledged comes again after it reconnects
    (Mosquitto at once, as MQTT-4.4.0-1 asks; nats-server after its ack_wait, behind newer messages)."""
    await subscribe_and_leave(broker, unique, unique)
    async with hub(broker, unique, manual_ack=True) as client:
        await publish(broker, unique, "unacked")
        assert await receive(client, 1) == [("unacked", 1)]
    await broker.wait_disconnected(unique)
    async with hub(broker, unique, manual_ack=True) as client:
        await publish(broker, unique, "marker")
        got = await receive(client, 2)
    assert sorted(got) == [("marker", 1), ("unacked", 1)]
    if broker.backend == "mosquitto":
        assert got[0] == ("unacked", 1)


async def test_queued_messages_survive_a_broker_restart(broker: MqttBroker, unique: str) -> None:
    """Messages queued for an away persistent subscriber are still delivered after the broker restarts on its
    port, ahead of new ones (the subscriber subscribes again on connecting, as a hub should)."""
    await subscribe_and_leave(broker, unique, unique)
    await publish(broker, unique, "before-restart")
    port = broker.port
    await broker.restart()
    assert broker.port == port
    async with hub(broker, unique) as client:
        await client.subscribe(f"{unique}/readings/#", qos=1)
        await publish(broker, unique, "after-restart")
        assert await receive(client, 1) == [("before-restart", 1)]
        assert await receive(client, 1) == [("after-restart", 1)]


async def test_a_restarted_broker_serves_on_the_same_port(broker: MqttBroker, unique: str) -> None:
    """After stop and start the broker listens on its old port and a subscriber that subscribes again gets messages."""
    port = broker.port
    await broker.stop()
    with pytest.raises(aiomqtt.MqttError):
        async with hub(broker, unique):
            pass
    await broker.start()
    assert broker.port == port
    async with hub(broker, unique) as client:
        await client.subscribe(f"{unique}/readings/#", qos=1)
        await publish(broker, unique, "back")
        assert await receive(client, 1) == [("back", 1)]


async def test_wrong_credentials_are_refused(broker: MqttBroker, unique: str) -> None:
    """A client with a wrong password, or none, is refused at CONNECT."""
    with pytest.raises(aiomqtt.MqttError):
        async with hub(broker, unique, password="wrong"):
            pass
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(broker.host, broker.port, identifier=unique):
            pass


async def test_vendor4_publisher_sends_each_reading_on_its_meter_topic(broker: MqttBroker, unique: str) -> None:
    """Vendor 4's publisher puts each platform record as JSON on <prefix>/<meter> with QoS 1, in order."""
    source = Vendor4Platform(3, clock=ManualClock(datetime(2025, 4, 2, tzinfo=timezone.utc)))
    records = source.records(datetime(2025, 3, 10, tzinfo=timezone.utc), datetime(2025, 3, 11, tzinfo=timezone.utc))
    async with hub(broker, unique, clean=True) as client:
        await client.subscribe(f"{unique}/readings/#", qos=1)
        async with MqttPublisher(broker.host, broker.port, username=VENDOR4_USER, password=VENDOR4_PASSWORD,
                                 topic_prefix=f"{unique}/readings") as pub:
            assert await pub.publish_many(records) == 3
        got = []
        async with asyncio.timeout(10):
            async for message in client.messages:
                got.append((message.topic.value, message.qos, json.loads(message.payload)))
                if len(got) == 3:
                    break
    assert got == [(f"{unique}/readings/{r['meter']}", 1, r) for r in records]
