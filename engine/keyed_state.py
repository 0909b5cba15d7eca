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
  conflict is computed again at once on the new record; messages for one key that arrive together
  are applied in order on one read and written with one compare-and-set.
  Since the record is written before the outputs exist, `apply` must be idempotent: the same message
  applied again (after a crash) must answer the same payload, or the output is lost.
"""

from __future__ import annotations

import asyncio
import json
import random
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
NOW_ATTEMPTS = 8  # re-reads of a record another runner changed meanwhile, before the message is retried


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
        self._groups: dict[str, _KeyGroup] = {}

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
        return self._go_on(env, await self._group_commit(kv, kv_key, env.payload))

    async def _group_commit(self, kv: Any, kv_key: str, message: Any) -> dict[str, Any]:
        """save: now. The messages for one key that arrive while its record is being written wait, and
        then go together: one read, `apply` on each in arrival order, one compare-and-set (a meter's
        readings of a page cost one KV round, not one each). Nothing has happened yet for any of them,
        so a lost compare-and-set (another runner) is simply computed again on the new record. The
        rounds run in a task of their own, so no message waits for later arrivals of its key."""
        group = self._groups.get(kv_key)
        if group is None:
            group = self._groups[kv_key] = _KeyGroup()
            group.task = asyncio.create_task(self._rounds(group, kv, kv_key), name=f"state:{kv_key}")
        done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        group.waiting.append((message, done))
        return await done

    async def _rounds(self, group: "_KeyGroup", kv: Any, kv_key: str) -> None:
        batch: list[tuple[Any, asyncio.Future[dict[str, Any]]]] = []
        try:
            while group.waiting:
                batch = [(m, f) for m, f in group.waiting if not f.done()]  # a cancelled message: not applied
                group.waiting = []
                if not batch:
                    continue
                try:
                    results: list[Any] = await self._apply_together(kv, kv_key, [m for m, _ in batch])
                except Exception as exc:
                    results = [exc] * len(batch)
                for (_, future), result in zip(batch, results):
                    if future.done():
                        continue  # its message was cancelled meanwhile
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
                batch = []
        finally:
            for _, future in batch + group.waiting:  # cancelled (runner stop): those messages retry later
                if not future.done():
                    future.set_exception(StateConflict(f"state {kv_key!r}: stopped before written", step=self.label))
            self._groups.pop(kv_key, None)

    async def _apply_together(self, kv: Any, kv_key: str, messages: list[Any]) -> list[Any]:
        """Each message's result (or its error) on the record as the ones before it left it; written once."""
        for attempt in range(NOW_ATTEMPTS):
            current, revision = await self._read(kv, kv_key)
            state, results = current, []
            for message in messages:
                try:
                    result = self._apply(state, message)
                    state = result["state"]
                    results.append(result)
                except HubError as exc:
                    results.append(exc)  # this message fails alone; the record stays as it was for it
            try:
                if state != current:
                    await commit((kv, kv_key, revision, state), self.label)
                return results
            except StateConflict:
                if attempt == NOW_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(random.uniform(0, 0.002 * 2 ** attempt))  # two runners must not keep colliding
        raise AssertionError("unreachable")

    async def _compute(self, kv: Any, kv_key: str, message: Any) -> tuple[dict[str, Any], Any]:
        """The apply function's answer on the current record, and the write it asks for (None: unchanged)."""
        current, revision = await self._read(kv, kv_key)
        result = self._apply(current, message)
        new = result["state"]
        return result, (kv, kv_key, revision, new) if new != current else None

    @staticmethod
    async def _read(kv: Any, kv_key: str) -> tuple[Any, int | None]:
        try:
            entry = await kv.get(kv_key)
            return json.loads(entry.value), entry.revision
        except KeyNotFoundError:
            return None, None

    def _apply(self, state: Any, message: Any) -> dict[str, Any]:
        try:
            result = self.apply({"state": state, "message": message})
        except HubError:
            raise
        except Exception as exc:
            raise TransformFailed(f"{self.spec.apply}: {type(exc).__name__}: {exc}", step=self.label) from None
        if not isinstance(result, dict) or "state" not in result or "payload" not in result:
            raise TransformFailed(f"{self.spec.apply} must return {{'state': ..., 'payload': ...}}", step=self.label)
        return result

    @staticmethod
    def _go_on(env: Envelope, result: dict[str, Any]) -> bool:
        env.payload = result["payload"]
        env.raw = None
        return env.payload is not None


class _KeyGroup:
    """The messages waiting for one key's record, and the task writing it round by round."""

    __slots__ = ("waiting", "task")

    def __init__(self) -> None:
        self.waiting: list[tuple[Any, asyncio.Future[dict[str, Any]]]] = []
        self.task: asyncio.Task[None] | None = None  # held: the loop keeps only weak references


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
