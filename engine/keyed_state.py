"""The `state` step: a record per business key in a KV bucket, changed by a pure function.

`apply` sees {"state": the record or None, "message": the payload} and returns {"state": the new
record (None deletes it), "payload": what the flow goes on with (None drops the message, a list
fans out with `publish: {each: true}`)}. The logic stays pure and testable; the step does the I/O.

When the record is written:
- `save: at_ack` (default): after every output is confirmed, right before the source is acked,
  compare-and-set on the revision read. A failure anywhere repeats the step on the old record; two
  messages for one key at once both compute, the second write fails and that message comes back to
  see the new record (give outputs stable ids, `publish: {id: …}`, so the repeat is dropped).
- `save: now`: before the next step (a pending request recorded before the mail goes out).
"""

from __future__ import annotations

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
        try:
            entry = await kv.get(kv_key)
            current, revision = json.loads(entry.value), entry.revision
        except KeyNotFoundError:
            current, revision = None, None
        try:
            result = self.apply({"state": current, "message": env.payload})
        except HubError:
            raise
        except Exception as exc:
            raise TransformFailed(f"{self.spec.apply}: {type(exc).__name__}: {exc}", step=self.label) from None
        if not isinstance(result, dict) or "state" not in result or "payload" not in result:
            raise TransformFailed(f"{self.spec.apply} must return {{'state': ..., 'payload': ...}}", step=self.label)
        new = result["state"]
        if new != current:
            write = (kv, kv_key, revision, new)
            if self.spec.save == "now":
                await commit(write, self.label)
            else:
                env.state_writes.append(write)
        env.payload = result["payload"]
        env.raw = None
        return env.payload is not None


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
