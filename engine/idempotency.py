"""Done-effect keys in a JetStream KV bucket, so a redelivery or a DLQ replay does not call a target
twice (principle 2), and two copies of one change never run at once.

Before its effect a message claims its key (an atomic create: `claim <time> <msg id>`); after the
effect and its outputs are confirmed, right before the source message is acked, the claim becomes
the done mark, and the ack waits until the broker has confirmed the mark (a broker restart is waited
out, engine/confirm.py): a lost ack then costs a skipped redelivery, never a second effect. A failed attempt gives the claim up, so its retry or replay can claim again. A copy
that meets another message's claim waits for it to end; a claim older than its lease (the holder
crashed) or held by the same message (its redelivery) is taken over. Within a runner, copies wait
for each other in memory first (InFlightKeys), without asking KV.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from typing import Any

import structlog
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from engine.errors import RoutingError
from engine.kv import bucket
from engine.messages import IDEMPOTENCY_KEY, Envelope, now_iso
from engine.spec import Flow
from engine.subjects import placeholders

log = structlog.get_logger("hub.idempotency")

BUCKET = "hub_idempotency"
CLAIM = b"claim "


class HeldElsewhere(Exception):
    """Another message (another runner, or one that crashed) holds a fresh claim on the key."""

    def __init__(self, holder: str, seconds_left: float) -> None:
        super().__init__(f"key claimed by message {holder} ({seconds_left:.1f} s of its lease left)")
        self.holder, self.seconds_left = holder, seconds_left


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
    """The business keys a runner's workers are processing now, and the last ones it finished. The
    KV claim keeps copies apart across runners; within one, a second copy waits here until the first
    is released (after its settle) instead of polling KV, and a key this runner has just done is
    known without a KV round trip."""

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
        self.kv = await bucket(self.js, BUCKET, self.keep)  # leader reads: a claim is read right after it is written

    @staticmethod
    def kv_key(flow: str, key: str) -> str:
        return f"{flow}.{hashlib.blake2b(key.encode(), digest_size=16).hexdigest()}"

    async def claim(self, flow: str, key: str, msg_id: str, lease: float) -> int | None:
        """Claim `key` for `msg_id`: its revision, or None when the effect is done (skip the message).
        HeldElsewhere while another message's claim is younger than `lease`."""
        k = self.kv_key(flow, key)
        value = CLAIM + f"{time.time():.3f} {msg_id}".encode()
        for _ in range(8):  # each turn loses a race to another claimant at most once
            try:
                return await self.kv.create(k, value)
            except KeyWrongLastSequenceError:
                pass
            try:
                entry = await self.kv.get(k)
            except KeyNotFoundError:
                continue  # given up (deleted) in between: create again
            current = entry.value or b""
            if not current.startswith(CLAIM):
                return None  # the done mark
            stamp, _, holder = current[len(CLAIM):].decode().partition(" ")
            age = time.time() - float(stamp)
            if holder != msg_id and age < lease:
                raise HeldElsewhere(holder, lease - age)
            try:  # the holder crashed (lease over), or this is its own redelivery: take it over
                return await self.kv.update(k, value, last=entry.revision)
            except KeyWrongLastSequenceError:
                continue
        raise HeldElsewhere("?", 1.0)  # contended beyond reason: wait and try again

    async def give_up(self, flow: str, key: str, revision: int) -> None:
        """The attempt did not complete its effect: free the key for its retry, replay or copy."""
        try:
            await self.kv.delete(self.kv_key(flow, key), last=revision)
        except Exception as exc:  # taken over, or the connection is gone: the lease frees it
            log.info("idempotency_claim_kept", flow=flow, key=key, error=repr(exc))

    async def mark_done(self, flow: str, key: str, msg_id: str) -> None:
        """The effect happened: replace the claim by the done mark. Raises when the broker does not
        confirm; the caller retries until it does (engine/confirm.py) before it acks, because an ack
        lost without a mark would let the redelivery do the effect again."""
        await self.kv.put(self.kv_key(flow, key), f"{now_iso()} {msg_id} {key}".encode())
