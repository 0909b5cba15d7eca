"""A request/reply flow: a core-NATS subscription in a queue group named after the flow, so N
runners share the requests. Requests are not stored (the requester is waiting); every request
gets an answer, a result or a structured error, never silence."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import structlog

from engine.errors import HubError, classify
from engine.executor import FlowStats
from engine.messages import CE_CORRELATION, decode, encode
from engine.pipeline import Pipeline
from engine.probes import NO_PROBE

log = structlog.get_logger("hub.service")


def error_reply(err: HubError) -> bytes:
    return encode({"error": {"class": err.error_class, "message": str(err), "transient": err.transient}})


class RequestFlowRunner:
    def __init__(self, pipeline: Pipeline, nc: Any, js: Any, publish_timeout: float) -> None:
        self.flow = pipeline.flow
        self.pipeline = pipeline
        self.nc, self.js = nc, js
        self.publish_timeout = publish_timeout
        self.stats = FlowStats()
        self.probe = NO_PROBE  # metrics and traces per request (engine/probes.py; set by the Hub)
        self.log = log.bind(flow=self.flow.name)
        self._gate = asyncio.Semaphore(self.flow.limits.concurrency)
        self._inflight: set[asyncio.Task[None]] = set()
        self._sub: Any = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(self.flow.source.request, queue=self.flow.name,  # type: ignore[union-attr]
                                            cb=self._on_request)
        self.log.info("flow_started", request=self.flow.source.request)  # type: ignore[union-attr]

    def on_reconnect(self) -> None:
        """Core subscriptions are restored by nats-py itself."""

    async def _on_request(self, msg: Any) -> None:
        task = asyncio.create_task(self._answer(msg))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _answer(self, msg: Any) -> None:
        self.stats.received += 1
        self.probe.begin(msg)
        env, err = None, None
        async with self._gate:
            try:
                env = decode(msg.data, msg.headers, msg.subject, msg.reply or "request")
                if not await self.pipeline.run(env):
                    raise HubError("request filtered out by the flow")
                futures = [await self.js.publish_async(s, d, headers=h) for s, d, h in env.outputs]
                if futures:
                    await asyncio.wait_for(asyncio.gather(*futures), self.publish_timeout)
                self.stats.published += len(futures)
                body = env.reply if env.reply is not None else encode(env.payload)
                self.stats.acked += 1
            except Exception as exc:
                err = classify(exc)
                self.stats.failed += 1
                self.log.warning("request_failed", error_class=err.error_class, error=str(err), step=err.step,
                                 msg_id=getattr(env, "msg_id", None))
                body = error_reply(err)
        if msg.reply:
            headers = {CE_CORRELATION: env.correlation_id} if env is not None else None
            try:
                await self.nc.publish(msg.reply, body, headers=headers)
            except Exception as exc:
                self.log.warning("reply_failed", error=repr(exc))
        self.probe.end(msg, (), err)

    async def stop(self, timeout: float = 10.0) -> None:
        if self._sub is not None and not self.nc.is_closed:
            await self._sub.unsubscribe()
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=timeout)
        self.log.info("flow_stopped", **self.stats.as_dict())


def parse_reply(data: bytes) -> Any:
    """For callers: the answer, or a HubError-like dict under `error`."""
    return json.loads(data)
