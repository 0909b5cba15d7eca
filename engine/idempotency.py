"""Done-effect keys in a JetStream KV bucket, so a redelivery or a DLQ replay does not call a target
twice (principle 2). Keys are recorded after the effect and its outputs are confirmed, right
before the source message is acked. Within a runner, two messages with one key never run at once
(InFlightKeys): the second waits for the first to settle, then finds its mark."""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from typing import Any

import structlog
from nats.js.errors import KeyNotFoundError

from engine.errors import RoutingError
from engine.kv import bucket
from engine.messages import IDEMPOTENCY_KEY, Envelope, now_iso
from engine.spec import Flow
from engine.subjects import placeholders

log = structlog.get_logger("hub.idempotency")

BUCKET = "hub_idempotency"


def applies_to(flow: Flow, has_calls: bool) -> bool:
    return flow.idempotency.enabled and (has_calls or flow.idempotency.key is not None)


def business_key(flow: Flow, env: Envelope) -> str:
    """Template from the payload, else the key a replay carried, else the message id."""
    template = flow.idempotency.key
    if template:
        value: Any = template
        for name in placeholders(template):
            current: Any = env.payload
            for part in name.split("."):
                if not isinstance(current, dict) or part not in current:
                    raise RoutingError(f"idempotency key {template!r} needs payload field {name!r}",
                                       step="idempotency")
                current = current[part]
            value = value.replace("{" + name + "}", str(current))
        return value
    return env.headers.get(IDEMPOTENCY_KEY) or env.msg_id


class InFlightKeys:
    """The business keys a runner's workers are processing now, and the last ones it finished.
    Check-then-mark is not atomic: two copies of one change pulled together (concurrency > 1) would
    both find no mark and both call the target. A second claim of a key waits until the first is
    released (after its settle); a key this runner has just done is known without asking KV."""

    def __init__(self, remember: int = 10_000) -> None:
        self._busy: dict[str, asyncio.Event] = {}
        self._done: OrderedDict[str, None] = OrderedDict()
        self._remember = remember

    async def claim(self, key: str) -> bool:
        """Hold `key`; False (nothing held) when this runner finished its effect moments ago."""
        while (busy := self._busy.get(key)) is not None:
            await busy.wait()
        if key in self._done:
            self._done.move_to_end(key)
            return False
        self._busy[key] = asyncio.Event()
        return True

    def release(self, key: str, done: bool = False) -> None:
        busy = self._busy.pop(key, None)
        if busy is not None:
            busy.set()
        if done:
            self._done[key] = None
            if len(self._done) > self._remember:
                self._done.popitem(last=False)


class IdempotencyStore:
    def __init__(self, js: Any, keep: float) -> None:
        self.js = js
        self.keep = keep
        self.kv: Any = None

    async def start(self) -> None:
        # direct gets: a mark is read back by a redelivery (after ack_wait) or a replay, long after it
        # was written; copies in flight at once in this runner are answered by InFlightKeys
        self.kv = await bucket(self.js, BUCKET, self.keep, direct=True)

    @staticmethod
    def kv_key(flow: str, key: str) -> str:
        return f"{flow}.{hashlib.blake2b(key.encode(), digest_size=16).hexdigest()}"

    async def is_done(self, flow: str, key: str) -> bool:
        try:
            await self.kv.get(self.kv_key(flow, key))
            return True
        except KeyNotFoundError:
            return False

    async def mark_done(self, flow: str, key: str, msg_id: str) -> None:
        try:
            await self.kv.put(self.kv_key(flow, key), f"{now_iso()} {msg_id} {key}".encode())
        except Exception as exc:  # the effect happened; a lost mark only risks a repeat later
            log.warning("idempotency_mark_failed", flow=flow, key=key, error=repr(exc))
