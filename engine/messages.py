"""Message identity on the wire: CloudEvents binary mode, Nats-Msg-Id, correlation, trace context.

Output ids are derived from the input id, the flow and the step (a keyed hash), not drawn at random: a
redelivered input republishes under the same Nats-Msg-Id, and JetStream drops the repeat.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import orjson

from engine.errors import UnparseablePayload
from engine.trace_context import span_traceparent

CE_ID, CE_SOURCE, CE_TYPE, CE_TIME, CE_SPEC = "ce-id", "ce-source", "ce-type", "ce-time", "ce-specversion"
CE_CORRELATION = "ce-correlationid"
TRACEPARENT = "traceparent"
MSG_ID = "Nats-Msg-Id"
IDEMPOTENCY_KEY = "Hub-Idempotency-Key"
REPLAY_FOR = "Hub-Replay-For"  # a DLQ replay is for one flow; others on the same subject skip it
REPLAY_OF = "Hub-Replay-Of"  # the DLQ stream sequence a replayed message came from
_NS = b"plu-hub/v1/"
_clock: list[Any] = [0, ""]


def now_iso() -> str:
    """UTC now with milliseconds; cached per millisecond (a batch shares it; it is the hot path)."""
    ms = int(time.time() * 1000)
    if ms != _clock[0]:
        _clock[0] = ms
        _clock[1] = datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds")
    return _clock[1]


def derived_id(*parts: str) -> str:
    """A stable id (32 hex digits) for an output of an input: the same after any redelivery."""
    return hashlib.blake2b("/".join(parts).encode(), digest_size=16, key=_NS).hexdigest()


class Envelope:
    """A message inside a flow: the payload being transformed plus its identity."""

    __slots__ = ("payload", "raw", "headers", "subject", "msg_id", "correlation_id", "outputs", "reply", "idem_key",
                 "idem_claim", "wait_key", "state_writes", "claim", "item_dead_letters", "attempts", "outcomes",
                 "prior")

    def __init__(self, payload: Any, headers: dict[str, str], subject: str, msg_id: str,
                 correlation_id: str, raw: bytes | None = None) -> None:
        self.payload = payload
        self.raw = raw  # the inbound bytes while no step has changed the payload: republished as is
        self.headers = headers
        self.subject = subject
        self.msg_id = msg_id
        self.correlation_id = correlation_id
        self.outputs: list[tuple[str, bytes, bytes]] = []  # subject, payload, encoded headers
        self.reply: bytes | None = None
        self.idem_key: str | None = None  # set when the flow's effects are idempotency-checked
        self.idem_claim: int | None = None  # revision of this message's claim on idem_key (engine/idempotency.py)
        self.wait_key: str | None = None  # set by an `until` step: the pending record's key
        self.state_writes: list[Any] = []  # `state` records to write once the outputs are confirmed
        self.claim: dict[str, str] | None = None  # the claim-check headers when the payload came by reference
        self.item_dead_letters: list[tuple[str, str]] | None = None  # (flow, error class) of batch items it filed
        # failure history material (engine/failures.py), None until there is some (the hot path allocates nothing):
        self.attempts: list[dict[str, Any]] | None = None  # every failed call attempt of this delivery
        self.outcomes: dict[str, dict[str, Any]] | None = None  # step -> what a non-idempotent call left behind
        self.prior: dict[str, dict[str, Any]] | None = None  # the same, learnt by earlier deliveries


def message_id(headers: dict[str, str] | None, fallback: str) -> str:
    """The inbound id: ce-id, else Nats-Msg-Id, else something stable like `STREAM:seq`."""
    if headers:
        return headers.get(CE_ID) or headers.get(MSG_ID) or fallback
    return fallback


def decode(data: bytes, headers: dict[str, str] | None, subject: str, fallback_id: str) -> Envelope:
    """Parse an inbound message; a non-JSON payload is a permanent error naming the problem, unless
    its content-type says it is something else (then the payload is the bytes)."""
    hdrs = headers or {}
    msg_id = message_id(hdrs, fallback_id)
    ctype = hdrs.get("content-type")
    if ctype is not None and "json" not in ctype:  # a raw mail, a file: the flow's transforms read the bytes
        return Envelope(data, hdrs, subject, msg_id, hdrs.get(CE_CORRELATION) or msg_id, data)
    try:
        payload = orjson.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        snippet = data[:80].decode("utf-8", "replace")
        raise UnparseablePayload(f"payload is not JSON ({exc}); starts with {snippet!r}", step="source") from None
    return Envelope(payload, hdrs, subject, msg_id, hdrs.get(CE_CORRELATION) or msg_id, data)


def opaque(data: bytes, headers: dict[str, str] | None, subject: str, fallback_id: str) -> Envelope:
    """An envelope for a flow whose steps never read the payload (pure routing): bytes go through
    untouched and unparsed, as a router should."""
    hdrs = headers or {}
    msg_id = message_id(hdrs, fallback_id)
    return Envelope(None, hdrs, subject, msg_id, hdrs.get(CE_CORRELATION) or msg_id, data)


def child_traceparent(parent: str | None) -> str:
    """Same trace, new span (W3C trace context); a fresh trace when the input had none."""
    if parent and len(parent) == 55 and parent[2] == "-":
        return f"{parent[:36]}{os.urandom(8).hex()}{parent[52:]}"
    ids = os.urandom(24).hex()
    return f"00-{ids[:32]}-{ids[32:]}-01"


def output_headers(env: Envelope, flow: str, step: int, subject: str, identity: str | None = None) -> dict[str, str]:
    """CloudEvents headers of a message a flow publishes from `env` at step index `step`; with a
    business `identity` the id depends on that alone (the same fact from two inputs is one message)."""
    out_id = derived_id(flow, "id", identity) if identity is not None else derived_id(env.msg_id, flow, str(step))
    headers = {
        CE_ID: out_id,
        CE_SOURCE: f"/plu-hub/flows/{flow}",
        CE_TYPE: subject,
        CE_TIME: now_iso(),
        CE_SPEC: "1.0",
        CE_CORRELATION: env.correlation_id,
        TRACEPARENT: span_traceparent() or child_traceparent(env.headers.get(TRACEPARENT)),  # a recorded span: its own
        "content-type": "application/json",
        MSG_ID: out_id,
    }
    key = env.headers.get(IDEMPOTENCY_KEY)
    if key:
        headers[IDEMPOTENCY_KEY] = key
    return headers


def encode(payload: Any) -> bytes:
    """Compact UTF-8 JSON; dates and other non-JSON values as their text."""
    return orjson.dumps(payload, default=str)


def event_headers(source: str, ce_type: str, msg_id: str | None = None,
                  correlation_id: str | None = None) -> dict[str, str]:
    """Headers for a message that starts a conversation (CLI, simulators, ingress adapters)."""
    msg_id = msg_id or str(uuid.uuid4())
    return {
        CE_ID: msg_id, CE_SOURCE: source, CE_TYPE: ce_type,
        CE_TIME: now_iso(), CE_SPEC: "1.0",
        CE_CORRELATION: correlation_id or msg_id, TRACEPARENT: span_traceparent() or child_traceparent(None),
        "content-type": "application/json", MSG_ID: msg_id,
    }
