"""The backstop for messages that crash or hang a worker: JetStream's MAX_DELIVERIES advisory.

A message that kills the runner never reaches the failure handler. After `max_deliver`
deliveries JetStream stops delivering it and emits an advisory; advisories are core NATS (lost when
nobody listens), so a stream keeps them and a durable consumer shared by all runners turns each
into a DLQ record with the original message (`get_msg`).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import structlog
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig
from nats.js.errors import NotFoundError

from engine.cluster import when_settled
from engine.errors import MaxDeliveriesExceeded
from engine.failures import FailureHandler, FailureHistory
from engine.tasks import cancel_and_wait

log = structlog.get_logger("hub.advisories")

STREAM = "HUB_ADVISORIES"
SUBJECT = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>"
DURABLE = "hub-max-deliveries"


async def ensure_advisory_stream(js: Any) -> None:
    config = StreamConfig(name=STREAM, subjects=[SUBJECT], max_age=7 * 86400.0)
    try:
        await js.stream_info(STREAM)
    except NotFoundError:
        await js.add_stream(config)


class MaxDeliveriesWatcher:
    def __init__(self, js: Any, handlers: dict[str, FailureHandler], history: FailureHistory) -> None:
        self.js = js
        self.handlers = handlers  # flow name -> its failure handler
        self.history = history
        self._task: asyncio.Task[None] | None = None
        self.captured = 0

    async def start(self) -> None:
        await ensure_advisory_stream(self.js)
        config = ConsumerConfig(durable_name=DURABLE, ack_policy=AckPolicy.EXPLICIT, ack_wait=60.0)
        await when_settled(lambda: self.js.add_consumer(STREAM, config), "advisory consumer")  # cluster elections
        self._sub = await self.js.pull_subscribe_bind(DURABLE, STREAM)
        self._task = asyncio.create_task(self._loop(), name="max-deliveries")

    async def stop(self) -> None:
        if self._task:
            await cancel_and_wait([self._task])
            try:
                await self._sub.unsubscribe()
            except Exception:
                pass

    async def _loop(self) -> None:
        failing = 0  # fetches failed in a row: an election or an outage is logged once, not each second
        while True:
            try:
                msgs = await self._sub.fetch(16, timeout=5)
            except TimeoutError:  # answered: nothing to do
                msgs = []
            except Exception as exc:
                if not failing:
                    log.warning("advisory_fetch_failed", error=repr(exc))
                failing += 1
                await asyncio.sleep(1)
                continue
            if failing:
                log.info("advisory_fetch_recovered", failed_fetches=failing)
                failing = 0
            for msg in msgs:
                try:
                    await self._handle(msg)
                except Exception as exc:  # leave it for another try (ack_wait)
                    log.error("advisory_not_handled", error=repr(exc))

    async def _handle(self, msg: Any) -> None:
        event = json.loads(msg.data)
        handler = self.handlers.get(event.get("consumer", ""))
        if handler is None or event.get("stream") != handler.stream:
            await msg.ack()  # another consumer's, not one of our flows
            return
        seq = int(event["stream_seq"])
        try:
            original = await self.js.get_msg(handler.stream, seq)
        except NotFoundError:
            log.error("max_deliveries_original_gone", flow=handler.flow.name, stream=handler.stream, seq=seq)
            await msg.ack()
            return
        history = await self.history.load(FailureHistory.key(handler.flow.name, handler.stream, seq))
        err = MaxDeliveriesExceeded(f"delivered {event.get('deliveries')} times without an outcome "
                                    "(did a worker crash or hang on it?)", step="delivery")
        await handler.dead_letter_stored(original, seq, err, history, int(event.get("deliveries", 0)))
        self.captured += 1
        await msg.ack()
