"""The `state` step: a record per business key in a KV bucket, changed by a pure function.

`apply` sees {"state": the record or None, "message": the payload} and returns {"state": the new
record (None deletes it), "payload": what the flow goes on with (None drops the message, a list
fans out with `publish: {each: true}`)}. The logic stays pure and testable; the step does the I/O.

When the record is written:
- `save: at_ack` (default): after every output is confirmed, right before the source is acked,
  compare-and-set on the revision read. A failure anywhere repeats the step on the old record; two
  messages for one key at once both compute, the second write fails and that message comes back to
  see the new record (give outputs stable ids, `publish: {id: …}`, so the repeat is dropped).
- `save: now`: before the next step (a pending request recorded before the mail goes out). A
  conflict is computed again at once on the new record; messages for one key take turns per runner.
  Since the record is written before the outputs exist, `apply` must be idempotent: the same message
  applied again (after a crash) must answer the same payload, or the output is lost.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import structlog
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from engine.errors import HubError, RoutingError, TransformFailed, TransientError
from engine.kv import bucket
from engine.messages import Envelope
from engine.spec import StateSpec
from engine.subjects import render

log = structlog.get_logger("hub.state")

PREFIX = "hub_state_"
NOW_ATTEMPTS = 5  # re-reads of a record another runner changed meanwhile, before the message is retried


class StateConflict(TransientError):
    """The record changed between read and write (another message for the same key)."""


class KeyedState:
    def __init__(self, spec: StateSpec, js: Any, label: str) -> None:
        from engine.validation import resolve_transform

        self.spec = spec
        self.js = js
        self.label = label
        self.apply = resolve_transform(spec.apply)
        self.kv: Any = None
        self._locks: dict[str, _KeyLock] = {}

    async def _bucket(self) -> Any:
        if self.kv is None:
            self.kv = await bucket(self.js, PREFIX + self.spec.bucket, self.spec.keep)
        return self.kv

    async def run(self, env: Envelope) -> bool:
        kv = await self._bucket()
        try:
            key = render(self.spec.key, env.payload, lower=False)
        except KeyError as exc:
            raise RoutingError(f"state key {self.spec.key!r} needs payload field {exc}", step=self.label) from None
        kv_key = safe_key(key)
        if self.spec.save != "now":
            result, write = await self._compute(kv, kv_key, env.payload)
            if write is not None:
                env.state_writes.append(write)
            return self._go_on(env, result)
        # save: now: nothing has happened yet, so a lost compare-and-set is simply computed again on the
        # new record. One key's messages take turns in this runner (a lock), so readings of one meter
        # arriving together do not all collide; runners still race, which the re-reads absorb.
        lock = self._locks.setdefault(kv_key, _KeyLock())
        lock.users += 1
        try:
            async with lock:
                for attempt in range(NOW_ATTEMPTS):
                    result, write = await self._compute(kv, kv_key, env.payload)
                    try:
                        if write is not None:
                            await commit(write, self.label)
                        break
                    except StateConflict:
                        if attempt == NOW_ATTEMPTS - 1:
                            raise
        finally:
            lock.users -= 1
            if not lock.users:
                self._locks.pop(kv_key, None)
        return self._go_on(env, result)

    async def _compute(self, kv: Any, kv_key: str, message: Any) -> tuple[dict[str, Any], Any]:
        """The apply function's answer on the current record, and the write it asks for (None: unchanged)."""
        try:
            entry = await kv.get(kv_key)
            current, revision = json.loads(entry.value), entry.revision
        except KeyNotFoundError:
            current, revision = None, None
        try:
            result = self.apply({"state": current, "message": message})
        except HubError:
            raise
        except Exception as exc:
            raise TransformFailed(f"{self.spec.apply}: {type(exc).__name__}: {exc}", step=self.label) from None
        if not isinstance(result, dict) or "state" not in result or "payload" not in result:
            raise TransformFailed(f"{self.spec.apply} must return {{'state': ..., 'payload': ...}}", step=self.label)
        new = result["state"]
        return result, (kv, kv_key, revision, new) if new != current else None

    @staticmethod
    def _go_on(env: Envelope, result: dict[str, Any]) -> bool:
        env.payload = result["payload"]
        env.raw = None
        return env.payload is not None


class _KeyLock(asyncio.Lock):
    """A lock that knows how many messages wait on it, so idle keys are forgotten."""

    def __init__(self) -> None:
        super().__init__()
        self.users = 0


def safe_key(key: str) -> str:
    """KV keys allow [-/_=.a-zA-Z0-9]; anything else is escaped, so distinct keys stay distinct."""
    return "".join(c if c.isalnum() or c in "-_=" else f"={ord(c):x}." for c in key)


async def commit(write: tuple[Any, str, int | None, Any], step: str | None = None) -> None:
    """Compare-and-set one record (create when it had none; delete when the new state is None)."""
    kv, key, revision, new = write
    try:
        if new is None:
            if revision is not None:
                await kv.delete(key, last=revision)
        elif revision is None:
            await kv.create(key, json.dumps(new, default=str).encode())
        else:
            await kv.update(key, json.dumps(new, default=str).encode(), last=revision)
    except KeyWrongLastSequenceError:
        raise StateConflict(f"state {key!r} changed meanwhile; the message is run again", step=step) from None
