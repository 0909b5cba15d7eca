"""What the hub's JetStream store says about its flows, read without changing anything.

Per flow: the durable consumer's backlog (pending, unacknowledged, redelivered) and its lag, the
dead letters in dlq.<flow>, the `until` waits in KV; per endpoint: the shared breaker state. Used by
/metrics (engine/metrics.py, at scrape time, cached for a moment) and by `runner.py status`, which
reads a stopped hub's store the same way: nothing here creates a stream, consumer or bucket.

Lag is the age of the oldest message the flow has not acknowledged, measured on one clock: the
server's time in the consumer-info answer minus that message's server timestamp.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError

from engine.kv import stored_keys
from engine.validation import Project, stream_for

PENDING_BUCKET = "hub_pending"     # engine/waiting.py
BREAKER_BUCKET = "hub_breakers"    # engine/breaker.py
API = "$JS.API"


@dataclass
class Backlog:
    pending: int          # in the stream for the flow, not yet delivered
    ack_pending: int      # delivered, not yet acknowledged (in work, or waiting for redelivery)
    redelivered: int      # of those, delivered more than once
    lag_seconds: float    # age of the oldest unacknowledged message; 0 when nothing waits


@dataclass
class FlowSource:
    flow: str
    stream: str
    subject: str


def flow_sources(project: Project) -> list[FlowSource]:
    """The flows that read a stream (request flows have no consumer), with their stream."""
    out = []
    for lf in project.flows:
        subject = lf.flow.consumed_subject
        if subject is None:
            continue
        stream = stream_for(project.config, subject, pattern=True)
        if stream is not None:
            out.append(FlowSource(lf.flow.name, stream, subject))
    return out


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def consumer_backlog(nc: Any, source: FlowSource, timeout: float = 2.0) -> Backlog | None:
    """The flow's durable consumer as the server sees it; None when it does not exist (yet)."""
    reply = await nc.request(f"{API}.CONSUMER.INFO.{source.stream}.{source.flow}", b"", timeout=timeout)
    info = json.loads(reply.data)
    if "error" in info:
        return None
    pending, ack_pending = int(info.get("num_pending", 0)), int(info.get("num_ack_pending", 0))
    lag = 0.0
    if (pending or ack_pending) and info.get("ts"):
        floor = int((info.get("ack_floor") or {}).get("stream_seq", 0))
        request = json.dumps({"seq": floor + 1, "next_by_subj": source.subject}).encode()
        got = json.loads((await nc.request(f"{API}.STREAM.MSG.GET.{source.stream}", request, timeout=timeout)).data)
        oldest = (got.get("message") or {}).get("time")
        if oldest:
            lag = max(0.0, (_when(info["ts"]) - _when(oldest)).total_seconds())
    return Backlog(pending, ack_pending, int(info.get("num_redelivered", 0)), lag)


async def dead_letter_depths(js: Any, dlq_stream: str) -> dict[str, int]:
    """Records per flow in the DLQ stream (`dlq.<flow>` subjects)."""
    try:
        state = (await js.stream_info(dlq_stream, subjects_filter="dlq.>")).state
    except NotFoundError:
        return {}
    return {subject.removeprefix("dlq."): count for subject, count in (state.subjects or {}).items()}


async def _records(js: Any, name: str) -> list[dict[str, Any]]:
    """Every JSON value of a KV bucket; empty when the bucket does not exist (never created here)."""
    try:
        kv = await js.key_value(name)
    except (BucketNotFoundError, NotFoundError):
        return []
    keys = await stored_keys(js, name)  # a broker error is raised, not shown as "nothing there"

    async def one(key: str) -> dict[str, Any] | None:
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        record = json.loads(entry.value)
        return {**record, "_key": key} if isinstance(record, dict) else None

    out: list[dict[str, Any]] = []
    for start in range(0, len(keys), 64):
        out.extend(r for r in await asyncio.gather(*(one(k) for k in keys[start:start + 64])) if r)
    return out


async def pending_waits(js: Any) -> list[dict[str, Any]]:
    """The pending records of `until` steps (engine/waiting.py), oldest first."""
    return sorted(await _records(js, PENDING_BUCKET), key=lambda r: r.get("since", ""))


async def breaker_states(js: Any) -> dict[str, dict[str, Any]]:
    """Every endpoint's shared circuit state, by KV key (the endpoint's name, made KV-safe)."""
    return {r.pop("_key"): r for r in await _records(js, BREAKER_BUCKET)}


def wait_ages(waits: list[dict[str, Any]], now: datetime) -> dict[str, tuple[int, float]]:
    """flow -> (waits, age in seconds of the oldest)."""
    out: dict[str, tuple[int, float]] = {}
    for record in waits:
        flow = record.get("flow", "")
        try:
            age = max(0.0, (now - _when(record["since"])).total_seconds())
        except (KeyError, ValueError):
            age = 0.0
        count, oldest = out.get(flow, (0, 0.0))
        out[flow] = (count + 1, max(oldest, age))
    return out
