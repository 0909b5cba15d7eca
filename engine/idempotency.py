"""Done-effect keys in a JetStream KV bucket, so a redelivery or a DLQ replay does not call a target
twice (principle 2), and two copies of one change never run at once.

Before its effect a message claims its key (an atomic create: `claim <time> <runner> <msg id>`, the
time on the holder's clock); after the effect and its outputs are confirmed, right before the source
message is acked, the claim becomes the done mark, and the ack waits until the broker has confirmed the
mark (a broker restart is waited out, engine/confirm.py): a lost ack then costs a skipped redelivery,
never a second effect. A failed attempt gives the claim up, so its retry or replay can claim again.

A claim names its holder (runner and message) and lives as long as its holder says so: the keep-alive
that sends a held message's in-progress acks (engine/pull_feed.py) also refreshes its claim. A copy
that meets a claim, even a redelivery of the very message it names (a new consumer leader hands
out what another runner still works on), waits while the claim is alive and takes it over only once
its lease has run out: the holder's time older than `lease` (one ack_wait: a live holder refreshes
every 3/8 of it) *and* no refresh seen by the copy for `QUIET` of the lease, so a claim that aged
through a broker outage is not taken from a holder that refreshes it as soon as the broker is back.
Only the holder's own runner takes its claim over at once (a give-up that did not land). Within a
runner, copies wait for each other in memory first (InFlightKeys), without asking KV.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import uuid
from collections import OrderedDict
from typing import Any

import structlog
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from engine.clock import SYSTEM, Clock
from engine.errors import RoutingError
from engine.kv import bucket
from engine.kv_pipe import Marks, kv_writes
from engine.messages import IDEMPOTENCY_KEY, Envelope, now_iso
from engine.spec import Flow
from engine.subjects import placeholders

log = structlog.get_logger("hub.idempotency")

BUCKET = "hub_idempotency"
CLAIM = b"claim "
QUIET = 3 / 8  # of the lease: the longest a live, connected holder goes without refreshing its claim
SEEN_LIMIT = 10_000  # claims this runner watches for a refresh, at most


class HeldElsewhere(Exception):
    """Another holder (another runner, or one that crashed) holds a live claim on the key."""

    def __init__(self, holder: str, seconds_left: float, runner: str = "?") -> None:
        super().__init__(f"key claimed by message {holder} on runner {runner} ({seconds_left:.1f} s of its lease left)")
        self.holder, self.runner, self.seconds_left = holder, runner, seconds_left


class ClaimLost(Exception):
    """A refresh found the claim changed: another holder took it over (or it became the done mark)."""


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


def parse_claim(value: bytes) -> tuple[float, str, str] | None:
    """(holder's time, runner, message id) of a claim; None for the done mark. A claim written before
    claims named their runner (`claim <time> <msg id>`) has runner "?"."""
    if not value.startswith(CLAIM):
        return None
    stamp, _, rest = value[len(CLAIM):].decode().partition(" ")
    runner, _, holder = rest.partition(" ")
    if not holder:  # the older two-field form
        runner, holder = "?", rest
    try:
        return float(stamp), runner, holder
    except ValueError:
        return 0.0, runner, holder  # unreadable time: as old as can be


def lease_over(age: float, quiet: float, lease: float) -> float:
    """Seconds until a claim `age` seconds old on its holder's clock, seen unchanged for `quiet`
    seconds, may be taken over (0: now)."""
    return max(0.0, lease - age, lease * QUIET - quiet)


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

    def busy(self, key: str) -> bool:
        return key in self._busy

    def try_hold(self, key: str) -> bool:
        """Hold `key` now if it is free and not just done (no wait): True when held."""
        if key in self._busy or key in self._done:
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


def new_runner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class IdempotencyStore:
    """One runner's view of the shared claims bucket. `runner_id` names this runner in its claims
    (one per process: a restarted runner is another holder); `clock` stamps them (the hub's)."""

    def __init__(self, js: Any, keep: float, runner_id: str | None = None, clock: Clock = SYSTEM) -> None:
        self.js = js
        self.keep = keep
        self.runner_id = runner_id or new_runner_id()
        self.clock = clock
        self.kv: Any = None
        self.marks: Marks | None = None
        self._seen: dict[str, tuple[int, float]] = {}  # kv key -> (revision, first seen, monotonic)

    async def start(self) -> None:
        self.kv = await bucket(self.js, BUCKET, self.keep)  # leader reads: a claim is read right after it is written
        self.marks = Marks(self.js, self.kv, BUCKET)  # done marks of concurrent workers: one batch per tick

    @staticmethod
    def kv_key(flow: str, key: str) -> str:
        return f"{flow}.{hashlib.blake2b(key.encode(), digest_size=16).hexdigest()}"

    def claim_value(self, msg_id: str) -> bytes:
        return CLAIM + f"{self.clock.time():.3f} {self.runner_id} {msg_id}".encode()

    async def claim(self, flow: str, key: str, msg_id: str, lease: float) -> int | None:
        """Claim `key` for `msg_id`: its revision, or None when the effect is done (skip the message).
        HeldElsewhere while another holder's claim is alive (see the module docstring)."""
        return await self._claim_key(self.kv_key(flow, key), msg_id, lease)

    async def _claim_key(self, k: str, msg_id: str, lease: float, exists: bool = False) -> int | None:
        for _ in range(8):  # each turn loses a race to another claimant at most once
            if not exists:
                try:
                    revision = await self.kv.create(k, self.claim_value(msg_id))
                except KeyWrongLastSequenceError:
                    pass
                else:
                    self._seen.pop(k, None)
                    return revision
            exists = False
            outcome = await self.resolve(k, msg_id, lease)
            if outcome != "retry":
                return outcome  # type: ignore[return-value]
        raise HeldElsewhere("?", 1.0)  # contended beyond reason: wait and try again

    async def claim_many(self, flow: str, items: list[tuple[str, str]], lease: float) -> list[Any]:
        """Claims of (key, msg id) pairs sent together (engine/kv_pipe.py), one outcome each, never
        raised: a revision (claimed), None (done), HeldElsewhere, or the broker's error (not
        confirmed: claim again). A key that exists takes `claim`'s per-key path from there."""
        keys = [self.kv_key(flow, key) for key, _ in items]
        results = await kv_writes(self.js, self.kv, [(k, self.claim_value(m), 0) for k, (_, m) in zip(keys, items)])
        existing = []
        for i, (k, result) in enumerate(zip(keys, results)):
            if isinstance(result, int):
                self._seen.pop(k, None)
            elif isinstance(result, KeyWrongLastSequenceError):
                existing.append(i)
        if existing:
            resolved = await asyncio.gather(*(self._claim_key(keys[i], items[i][1], lease, exists=True)
                                              for i in existing), return_exceptions=True)
            for i, outcome in zip(existing, resolved):
                results[i] = outcome
        return results

    async def refresh_many(self, flow: str, held: list[tuple[str, str, int]]) -> list[Any]:
        """`refresh` of (key, msg id, revision) triples sent together, one outcome each, never raised:
        the new revision, ClaimLost, or the broker's error."""
        results = await kv_writes(self.js, self.kv, [(self.kv_key(flow, key), self.claim_value(msg_id), revision)
                                                      for key, msg_id, revision in held])
        return [ClaimLost(f"claim on {key!r} for message {msg_id} changed since revision {revision}")
                if isinstance(r, KeyWrongLastSequenceError) else r for (key, msg_id, revision), r in zip(held, results)]

    async def resolve(self, k: str, msg_id: str, lease: float) -> int | None | str:
        """The key exists: the done mark (None), a claim this message may take over (its new
        revision), HeldElsewhere, or "retry" (it changed meanwhile: create again)."""
        try:
            entry = await self.kv.get(k)
        except KeyNotFoundError as gone:
            if gone.entry is None:
                return "retry"  # not there at all (expired meanwhile): create again
            return await self._replace(k, msg_id, gone.entry.revision)  # given up: a tombstone, replaced
        claim = parse_claim(entry.value or b"")
        if claim is None:
            self._seen.pop(k, None)
            return None  # the done mark
        stamp, runner, holder = claim
        if runner != self.runner_id or holder != msg_id:  # not a leftover of this very holder
            wait = lease_over(self.clock.time() - stamp, self._quiet(k, entry.revision), lease)
            if wait > 0:
                raise HeldElsewhere(holder, wait, runner)
        return await self._replace(k, msg_id, entry.revision)

    async def _replace(self, k: str, msg_id: str, last: int | None) -> int | str:
        try:
            revision = await self.kv.update(k, self.claim_value(msg_id), last=last)
        except KeyWrongLastSequenceError:
            return "retry"
        self._seen.pop(k, None)
        return revision

    def watched(self) -> int:
        """Other holders' claims this runner waits on (watching them for a refresh)."""
        return len(self._seen)

    def _quiet(self, k: str, revision: int) -> float:
        """How long this runner has seen the claim at `revision` without a refresh."""
        now = self.clock.monotonic()
        seen = self._seen.get(k)
        if seen is not None and seen[0] == revision:
            return now - seen[1]
        if len(self._seen) >= SEEN_LIMIT:
            self._seen.clear()
        self._seen[k] = (revision, now)
        return 0.0

    async def refresh(self, flow: str, key: str, msg_id: str, revision: int) -> int:
        """The holder still works on it: a fresh time on its claim (compare-and-set), the new revision.
        ClaimLost when the claim is no longer this revision."""
        try:
            return await self.kv.update(self.kv_key(flow, key), self.claim_value(msg_id), last=revision)
        except KeyWrongLastSequenceError:
            raise ClaimLost(f"claim on {key!r} for message {msg_id} changed since revision {revision}") from None

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
        value = f"{now_iso()} {msg_id} {key}".encode()
        if self.marks is None:
            await self.kv.put(self.kv_key(flow, key), value)
        else:
            await self.marks.put(self.kv_key(flow, key), value)
