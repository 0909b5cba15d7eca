"""The `mqtt:` flow source: every QoS 1 message is stored in JetStream, then acknowledged (PUBACK).

Principle 1 in MQTT form. The hub connects as MQTT 3.1.1 with its stable client id and
clean_session=False (what every broker speaks; tested against Mosquitto and nats-server's MQTT
listener), so the broker keeps the subscriptions and queues what is published while the hub is away
(3.1.1 cannot say the source's `session_expiry`: the broker's own setting rules, mosquitto's
`persistent_client_expiration`, by default never). paho's manual acks are on: a PUBACK goes out
only after `Landing.store_many()` returned with the server's confirmation. A store that fails is not acknowledged and the ingress drops the connection (after a
backoff) so the broker sends it again on the reconnect; what was stored but not acknowledged (a crash
in between) comes again too and JetStream drops it by its Nats-Msg-Id (topic + SHA-256 of the payload).
PUBACKs go in the order the messages came (MQTT-4.6.0-2), so after a failure nothing later is acked.
Connection trouble reconnects with a backoff of 0.5 s doubling to 30 s, one warning per outage. A
payload too big for one NATS message goes by claim check (engine/claim_check.py); one over the
claim-check limit raises a `payload_too_large` alert (topic, size, SHA-256) and is then acknowledged,
since a broker would otherwise send it again for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from typing import Any

import aiomqtt
import orjson
import structlog

from adapters.imap.ingress import header_value
from adapters.mqtt.config import MqttEndpointConfig, cleartext_risk, tls_context
from engine.alerts import publish_alert
from engine.claim_check import Unstorable
from engine.errors import ConfigError, PublishFailed
from engine.ingress import Landing
from engine.outage import ReconnectingIngress
from engine.secrets import resolve_setting
from engine.sources import MqttSubscription
from engine.spec import Flow
from engine.tasks import cancel_and_wait

log = structlog.get_logger("hub.mqtt")
TROUBLE = (aiomqtt.MqttError, OSError, TimeoutError)


def identity_of(topic: str, payload: bytes) -> str:
    """A message's stable identity: its topic and a hash of its bytes, so a redelivery (or the vendor
    sending the same reading twice) is one message in JetStream. Vendor 4's records carry no id of
    their own; the flow's publish step keys the business fact (meter, register, time) besides."""
    return f"{topic}#{hashlib.sha256(payload).hexdigest()[:32]}"


def content_type(payload: bytes) -> str:
    """application/json when the payload parses as JSON, else application/octet-stream (the flow gets bytes)."""
    try:
        orjson.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return "application/octet-stream"
    return "application/json"


class MqttIngress(ReconnectingIngress):
    """Subscribes one flow to its topics; counters and `state` show what it did."""

    STOP_GRACE = 5.0  # stop() waits this long for the batch in hand, then cancels
    BATCH = 256       # messages already received are stored with one wait for all acks

    spec: MqttSubscription
    endpoint: MqttEndpointConfig

    def __init__(self, flow: Flow, spec: MqttSubscription, endpoint: MqttEndpointConfig, landing: Landing,
                 services: Any) -> None:
        super().__init__(flow, spec, endpoint, landing, services)
        self.received = self.stored = self.duplicates = self.acked = self.failed = self.refused = 0
        # states (self.state, engine/ingress.py): connecting, waiting, storing, down, retrying, stopped
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._password: str | None = None
        self._tls: Any = None
        self.connected = False  # connected and subscribed
        self._in_hand = False   # a batch is being stored and acked: stop() lets it finish
        self._store_failing = False
        self._refused: BaseException | None = None  # why the last SUBSCRIBE failed
        self._store_backoff = self.BACKOFF_START

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        name = self.spec.endpoint
        if not isinstance(self.endpoint, MqttEndpointConfig):
            raise ConfigError([f"flow {self.flow.name!r}: source endpoint {name!r} is not an mqtt endpoint"])
        if self.endpoint.password is not None:
            self._password = resolve_setting(name, "password", self.endpoint.password)
        self._tls = tls_context(name, self.endpoint)
        if cleartext_risk(self.endpoint):
            log.warning("mqtt_cleartext", endpoint=name, host=self.endpoint.host,
                        hint="tls: false sends the password in clear; use tls off loopback")
        self._task = asyncio.create_task(self._run(), name=f"mqtt-ingress-{self.flow.name}")

    async def stop(self) -> None:
        """Finish the batch in hand (store and PUBACK), then DISCONNECT; what is still queued or
        unacknowledged stays in the broker's session for the next start."""
        self._stop.set()
        task, self._task = self._task, None
        if task is None:
            return
        if not self._in_hand:  # waiting for a message, connecting or backing off: nothing to finish
            task.cancel()
        await asyncio.wait({task}, timeout=self.STOP_GRACE)
        await cancel_and_wait([task])
        if not task.cancelled() and task.exception() is not None:
            log.warning("mqtt_ingress_ended", flow=self.flow.name, error=repr(task.exception()))
        self._set_state("stopped")

    # --- the loop ------------------------------------------------------------------------------

    def _client(self) -> aiomqtt.Client:
        cfg = self.endpoint
        client = aiomqtt.Client(
            cfg.host, cfg.port, username=cfg.username, password=self._password, identifier=self.spec.client_id,
            protocol=aiomqtt.ProtocolVersion.V311, clean_session=False, keepalive=max(1, round(cfg.keepalive)),
            timeout=cfg.timeout, tls_context=self._tls)
        client._client.manual_ack_set(True)  # before CONNECT: the session's backlog arrives right after CONNACK
        return client

    async def _run(self) -> None:
        while not self._stop.is_set():
            self._set_state("connecting")
            wait = None
            try:
                async with self._client() as client:
                    # SUBSCRIBE while serving: a broker may hold our SUBACK until the session's backlog
                    # is PUBACKed, and those PUBACKs wait for the stores
                    subscribing = asyncio.create_task(self._subscribe(client))
                    try:
                        if not await self._serve(client):  # a store failed: drop the session so it is redelivered
                            wait = self._store_backoff
                            self._store_backoff = min(self._store_backoff * 2, self.BACKOFF_MAX)
                    finally:
                        subscribing.cancel()
                        with contextlib.suppress(BaseException):
                            await subscribing
            except TROUBLE as exc:
                self._down(self._refused or exc)
            except Exception as exc:  # a bug must not end the ingress: keep it visible and go on
                log.error("mqtt_ingress_failed", flow=self.flow.name, error=_short(exc), exc_info=True)
                self._down(exc, quiet=True)
            finally:
                self.connected = False
                self._changed.set()
            if self._stop.is_set():
                break
            if wait is None:
                self._set_state("down")
                await self.outage.pause(self._stop)
                continue
            self._set_state("retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), wait)

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        """Subscribe on every connect (a broker that lost the session, e.g. one without persistence, needs it;
        for one that kept it, the same subscription is replaced and nothing queued is lost). A refusal
        or a timeout ends the connection, so the loop backs off and tries again."""
        self._refused = None
        try:
            granted = await client.subscribe([(t, 1) for t in self.spec.topics], timeout=self.endpoint.timeout)
            for topic, code in zip(self.spec.topics, granted or ()):
                value = getattr(code, "value", code)
                if value >= 0x80:
                    raise aiomqtt.MqttError(f"the broker refused the subscription to {topic!r}")
                if value < 1:
                    log.warning("mqtt_qos_downgraded", flow=self.flow.name, topic=topic, granted=value,
                                risk="QoS 0: what the hub misses while away is lost")
        except TROUBLE as exc:
            self._refused = exc
            client._client.disconnect()  # the message loop sees the end and raises
            return
        self._up()

    def _down(self, exc: BaseException, quiet: bool = False) -> None:
        """A failed connection or session: warn at the start of an outage only."""
        if self.outage.failed() and not quiet:
            log.warning("mqtt_unavailable", flow=self.flow.name, broker=self._where(), error=_short(exc),
                        retry=self.outage.retry)
        self._changed.set()

    def _up(self) -> None:
        """Connected and subscribed: the outage, if any, is over."""
        ended = self.outage.recovered()
        if ended is not None:
            log.info("mqtt_reconnected", flow=self.flow.name, broker=self._where(), **ended)
        self.connected = True
        self._changed.set()

    async def _serve(self, client: aiomqtt.Client) -> bool:
        """Store and acknowledge messages as they come; True when stopping, False after a store failure."""
        messages = client.messages
        while not self._stop.is_set():
            self._set_state("waiting")
            batch = [await anext(messages)]
            self._in_hand = True
            try:
                while len(messages) and len(batch) < self.BATCH:
                    batch.append(await anext(messages))
                self.received += len(batch)
                self._set_state("storing")
                if not await self._land(client, batch):
                    return False
            finally:
                self._in_hand = False
        return True

    async def _refuse(self, message: aiomqtt.Message, payload: bytes, why: Unstorable) -> bool:
        """A payload over the claim-check limit: an alert names topic, size, SHA-256 and reason; False when
        the alert was not stored (then nothing is acked and the broker sends it again)."""
        if not await _refuse_alert(self, message, payload, why):
            return False
        self.refused += 1
        log.error("mqtt_payload_refused", flow=self.flow.name, topic=message.topic.value, size=len(payload),
                  reason=why.reason)
        return True

    async def _land(self, client: aiomqtt.Client, batch: list[aiomqtt.Message]) -> bool:
        """Store a batch (one wait for all acks), then PUBACK in order up to the first failure."""
        items = []
        for message in batch:
            topic, payload = message.topic.value, _bytes(message.payload)
            items.append((payload, identity_of(topic, payload),
                          {"content-type": content_type(payload), "Hub-Mqtt-Topic": header_value(topic)}))
        outcomes = await self.landing.store_many(items)
        for message, (payload, identity, _), outcome in zip(batch, items, outcomes):
            if isinstance(outcome, Unstorable):  # never storable: said loudly, then acked (else redelivered for ever)
                if not await self._refuse(message, payload, outcome):
                    return False
                if message.qos > 0 and client._client.ack(message.mid, message.qos) == 0:
                    self.acked += 1
                continue
            if isinstance(outcome, PublishFailed):
                self.failed += 1
                if not self._store_failing:
                    self._store_failing = True
                    log.warning("mqtt_store_failed", flow=self.flow.name, topic=message.topic.value, identity=identity,
                                error=_short(outcome), then="not acknowledged; reconnecting so the broker sends it again")
                self._changed.set()
                return False
            if outcome:
                self.stored += 1
            else:
                self.duplicates += 1
            # a PUBACK that cannot go out (the connection just dropped) means a redelivery JetStream drops
            if message.qos > 0 and client._client.ack(message.mid, message.qos) == 0:
                self.acked += 1
        if self._store_failing:
            log.info("mqtt_store_recovered", flow=self.flow.name)
        self._store_failing, self._store_backoff = False, self.BACKOFF_START
        self._changed.set()
        return True


async def _refuse_alert(ingress: "MqttIngress", message: aiomqtt.Message, payload: bytes, why: Unstorable) -> bool:
    try:
        await publish_alert(ingress.landing.js, ingress.flow.name, "payload_too_large", "firing",
                            topic=message.topic.value, size=len(payload), sha256=hashlib.sha256(payload).hexdigest(),
                            reason=why.reason, then="acknowledged and dropped: the publisher must send it smaller")
    except Exception as exc:
        log.warning("mqtt_alert_failed", flow=ingress.flow.name, error=_short(exc))
        return False
    return True


def _bytes(payload: Any) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode()
    return b"" if payload is None else str(payload).encode()


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
