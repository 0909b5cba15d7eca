"""Reading and acting on dead-letter records in the DLQ stream; no printing (dlq/format.py formats).

Records are read through one ephemeral consumer (not one `get_msg` per record), up to the stream's
last sequence when the read began: a consistent snapshot while flows keep failing. A replay is
confirmed by the original stream before its record is deleted, so nothing is lost in between.

Times: a record's `time` is its last failure (`Hub-Dlq-Last-Failure`, written on the failing runner's
clock); `--since`/`--until` and ages compare it with the CLI's clock. nats-server's stored time
(`stored`) is shown, never subtracted from a runner's clock: the two clocks may differ (a skewed host, a
faked clock), and a record's age must not depend on that.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Callable, Iterable

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, NotFoundError

from dlq.claims import Claim, carried, still_there
from engine import dead_letter as rec
from engine.clock import SYSTEM
from engine.messages import CE_ID, IDEMPOTENCY_KEY, MSG_ID, REPLAY_FOR, REPLAY_OF
from engine.ratelimit import RateLimiter

DLQ_PREFIX = "Hub-Dlq-"
FETCH_BATCH = 512
FETCH_TIMEOUT = 1.0  # then ask the consumer whether anything is still pending
STREAM_NOT_FOUND = 10059  # JetStream API err_code
WINDOW = 256  # replays in flight before their acks are awaited and their records deleted


class RecordNotFound(LookupError):
    """No record with that sequence in the DLQ stream (never there, replayed, purged or expired)."""


class StreamMissing(LookupError):
    """The DLQ stream does not exist on this server."""


class DeleteFailed(RuntimeError):
    """A replay was confirmed but its record could not be deleted."""


class ReplayRefused(ValueError):
    """A record that cannot be replayed as it is (no original subject)."""


@dataclass
class Record:
    seq: int
    subject: str
    time: datetime  # dead-lettered: the last failure on the runner's clock (the stored time if unknown)
    data: bytes
    headers: dict[str, str]
    summary: dict[str, Any] = field(default_factory=dict)
    stream: str = "DLQ"  # the DLQ stream holding it
    stored: datetime | None = None  # nats-server's time of the store (its clock: shown, not compared)
    claim: Claim | None = None  # the payload came by claim check: the body is empty, the bytes are there

    @classmethod
    def of(cls, stream: str, seq: int, subject: str, stored: datetime, data: bytes | None,
           headers: dict[str, Any] | None) -> "Record":
        hdrs = {k: str(v) for k, v in (headers or {}).items()}
        summary = rec.summary(hdrs)
        failed = _aware(summary.get("last_failure")) or _aware(summary.get("first_failure")) or stored
        return cls(seq, subject, failed, data or b"", hdrs, summary, stream, stored, Claim.of(hdrs))

    @property
    def flow(self) -> str:
        return self.summary.get("flow") or self.subject.removeprefix("dlq.")

    @property
    def error_class(self) -> str:
        return self.summary.get("error_class") or ""

    @property
    def error(self) -> str:
        return self.summary.get("error") or ""

    def age(self, now: datetime | None = None) -> float:
        """Seconds since it was dead-lettered, on the caller's clock (`now`; the system's by default)."""
        return ((now or SYSTEM.now()) - self.time).total_seconds()

    @property
    def payload_bytes(self) -> bytes:
        """The payload itself: the claim-checked bytes once fetched (dlq/claims.py), else the body."""
        return self.claim.data if self.claim is not None and self.claim.data is not None else self.data

    @property
    def payload_omitted(self) -> str | None:
        """Why the record carries no payload (too big next to its headers) and where the original is."""
        return self.headers.get(rec.PAYLOAD_OMITTED)

    def payload(self) -> tuple[str, Any]:
        """('json', value), ('text', str) or ('base64', str): the payload in its most readable form."""
        data = self.payload_bytes
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return "base64", base64.b64encode(data).decode()
        try:
            return "json", json.loads(text)
        except ValueError:
            return "text", text

    def as_dict(self, now: datetime | None = None) -> dict[str, Any]:
        encoding, payload = self.payload()
        stored = self.stored.isoformat(timespec="milliseconds") if self.stored else None
        return {"seq": self.seq, "dlq_subject": self.subject,
                "time": self.time.isoformat(timespec="milliseconds"), "age_s": round(self.age(now), 3),
                "stored": stored,
                **self.summary, "headers": self.headers, "claim": self.claim.as_dict() if self.claim else None,
                "payload_omitted": self.payload_omitted, "payload_encoding": encoding, "payload": payload}


@dataclass
class Selection:
    """Which records: a flow (as a subject filter) and client-side narrowing."""

    flow: str | None = None
    error_class: str | None = None
    text: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, r: Record) -> bool:
        if self.error_class and r.error_class.lower() != self.error_class.lower():
            return False
        if self.since and r.time < self.since:
            return False
        if self.until and r.time > self.until:
            return False
        if self.text:
            needle = self.text.lower()
            if needle not in r.error.lower() and needle not in r.data.decode("utf-8", "replace").lower():
                return False
        return True


async def _scan(js: Any, stream: str, subject: str, *, headers_only: bool = False) -> AsyncIterator[Record]:
    """Every record on `subject` up to the stream's last sequence at the start. (Not from a start time:
    that would be the server's clock against the caller's; times are filtered on the records' own.)"""
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        raise StreamMissing(stream) from None
    last = info.state.last_seq
    if not info.state.messages:
        return
    config = ConsumerConfig(ack_policy=AckPolicy.NONE, mem_storage=True, num_replicas=1, inactive_threshold=60.0,
                            headers_only=headers_only or None, deliver_policy=DeliverPolicy.ALL)
    sub = await js.pull_subscribe(subject, stream=stream, config=config)
    try:
        pending = (await sub.consumer_info()).num_pending or 0
        while pending > 0:
            try:
                msgs = await sub.fetch(min(FETCH_BATCH, pending), timeout=FETCH_TIMEOUT)
            except asyncio.TimeoutError:  # records deleted meanwhile (a replay elsewhere, max_age)?
                pending = (await sub.consumer_info()).num_pending or 0
                continue
            for msg in msgs:
                meta = msg.metadata
                if meta.sequence.stream > last:
                    return
                pending = meta.num_pending  # still to come after this one
                yield Record.of(stream, meta.sequence.stream, msg.subject, meta.timestamp, msg.data, msg.headers)
    finally:
        await _quietly(sub.unsubscribe())
        await _quietly(js.delete_consumer(stream, sub._consumer))


def flow_subject(flow: str | None) -> str:
    if flow is None:
        return "dlq.>"
    if not flow or any(c in flow for c in " .*>\t"):
        raise ValueError(f"{flow!r} is not a flow name (lower-case letters, digits, '-', '_')")
    return rec.dlq_subject(flow)


async def list_records(js: Any, stream: str, *, flow: str | None = None, error_class: str | None = None,
                       text: str | None = None, since: datetime | None = None, until: datetime | None = None,
                       limit: int | None = None, headers_only: bool = False) -> list[Record]:
    """Records matching every given filter, in DLQ order; `limit` stops the read early. `since` and
    `until` are read against each record's own failure time (see the module docstring)."""
    sel = Selection(flow, error_class, text, since, until)
    out: list[Record] = []
    if limit is not None and limit <= 0:
        return out
    async with aclosing(_scan(js, stream, flow_subject(flow), headers_only=headers_only)) as records:
        async for r in records:
            if sel.matches(r):
                out.append(r)
                if limit is not None and len(out) >= limit:
                    break
    return out


async def get_record(js: Any, stream: str, seq: int) -> Record:
    """One record by its DLQ stream sequence; RecordNotFound when it is not there."""
    reply = await _api(js, f"STREAM.MSG.GET.{stream}", {"seq": seq})
    if "error" in reply:
        err = reply["error"]
        if err.get("err_code") == STREAM_NOT_FOUND:
            raise StreamMissing(stream)
        if err.get("code") == 404:
            raise RecordNotFound(f"no record {seq} in stream {stream}")
        raise APIError.from_error(err)
    m = reply["message"]
    raw = base64.b64decode(m.get("hdrs") or "")
    data = base64.b64decode(m.get("data") or "")
    time = datetime.fromisoformat(_trim_nanos(m["time"]))
    return Record.of(stream, m["seq"], m["subject"], time, data, parse_headers(raw))


def _aware(text: str | None) -> datetime | None:
    """A header's ISO time as an aware datetime (UTC when it names no offset); None when absent or bad."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def parse_headers(block: bytes) -> dict[str, str]:
    """A `NATS/1.0` header block as UTF-8 (nats-py's get_msg parses it as e-mail and mangles
    non-ASCII error texts)."""
    out: dict[str, str] = {}
    for line in block.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name:
            out[name.decode("utf-8", "replace").strip()] = value.decode("utf-8", "replace").strip()
    return out


def _trim_nanos(stamp: str) -> str:
    """'2026-11-23T20:20:39.154483123Z' → microseconds, for datetime.fromisoformat."""
    head, dot, frac = stamp.rstrip("Z").partition(".")
    return f"{head}.{frac[:6]}+00:00" if dot else f"{head}+00:00"


async def _api(js: Any, endpoint: str, body: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """A raw JetStream API request (for options nats-py's helpers do not expose)."""
    prefix = getattr(js, "_prefix", "$JS.API")
    msg = await js._nc.request(f"{prefix}.{endpoint}", json.dumps(body).encode(), timeout=timeout)
    return json.loads(msg.data)


def replay_key(r: Record) -> str:
    """The business idempotency key a replay carries: the original's, else the original message id."""
    h = r.headers
    stream, seq = h.get(rec.ORIG_STREAM), h.get(rec.ORIG_SEQ)
    return (h.get(IDEMPOTENCY_KEY) or h.get(CE_ID) or h.get(rec.ORIG_MSG_ID)
            or (f"{stream}:{seq}" if stream and seq else f"dlq:{r.seq}"))


def replay_message(r: Record) -> tuple[str, dict[str, str]]:
    """Original subject and headers (less every Hub-Dlq-* header) plus a fresh Nats-Msg-Id, the
    flow it is for, the record it came from and the unchanged idempotency key."""
    subject = r.headers.get(rec.ORIG_SUBJECT)
    if not subject:
        raise ReplayRefused(f"record {r.seq} has no {rec.ORIG_SUBJECT} header: its original subject is unknown")
    headers = {k: v for k, v in r.headers.items() if not k.startswith(DLQ_PREFIX) and k != MSG_ID}
    headers[MSG_ID] = f"replay:{r.seq}:{uuid.uuid4().hex}"
    headers[REPLAY_FOR] = r.flow
    headers[REPLAY_OF] = str(r.seq)
    headers[IDEMPOTENCY_KEY] = replay_key(r)
    return subject, headers


@dataclass
class Replayed:
    seq: int
    subject: str
    msg_id: str
    ack: Any


async def refusal(js: Any, r: Record) -> str | None:
    """Why the record cannot be replayed as it is, found before anything is sent: its payload was left
    out of the record, or it came by claim check and the object is no longer there as recorded."""
    if r.payload_omitted:
        return (f"record {r.seq} has no payload ({rec.PAYLOAD_OMITTED}: {r.payload_omitted}): replaying it would "
                "send an empty body; replay the original from its stream, or `dlq edit` the record with the payload")
    if r.claim is not None:
        problem = await still_there(js, r.claim)
        return f"record {r.seq}: {problem}" if problem else None
    return None


async def replay(js: Any, record: Record, *, keep: bool = False, payload: bytes | None = None,
                 timeout: float = 10.0) -> Replayed:
    """Publish one record back to its original subject (`payload` replaces its payload), wait for
    the ack, then delete the record. A claim-checked record is replayed with its reference once the
    object is found still there; an edited one carries its own bytes (dlq/claims.py `carried`)."""
    subject, headers = replay_message(record)
    data = record.data if payload is None else payload
    if payload is None and (why := await refusal(js, record)):
        raise ReplayRefused(why)
    if payload is not None and record.claim is not None:
        data, headers = await carried(js, headers, payload, headers[MSG_ID])
    ack = await js.publish(subject, data, headers=headers, timeout=timeout)
    if not keep:
        _, failed = await delete(js, record.stream, [record.seq])
        if failed:
            raise DeleteFailed(f"record {record.seq} was replayed but not deleted ({failed[record.seq]}); "
                               "purge it, do not replay it again")
    return Replayed(record.seq, subject, headers[MSG_ID], ack)


@dataclass
class Outcome:
    replayed: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)  # seq -> why


async def replay_many(js: Any, records: list[Record], *, keep: bool = False, rate: float | None = None,
                      timeout: float = 10.0, progress: Callable[[int, int], None] | None = None) -> Outcome:
    """Replay records in windows of concurrent publishes (paced by `rate`); each window's records
    are deleted once their publishes are confirmed. A failure affects only its record."""
    limiter = RateLimiter(rate) if rate else None
    window = max(1, min(WINDOW, int(rate or WINDOW)))  # with a slow rate, report progress often
    outcome = Outcome()
    for start in range(0, len(records), window):
        chunk = records[start:start + window]
        pending: list[tuple[Record, Any]] = []
        for r in chunk:
            if limiter:
                await limiter.acquire()
            try:
                if why := await refusal(js, r):
                    raise ReplayRefused(why)
                subject, headers = replay_message(r)
                pending.append((r, await js.publish_async(subject, r.data, headers=headers)))
            except Exception as exc:
                outcome.failed[r.seq] = _why(exc)
        acks = await asyncio.gather(*(asyncio.wait_for(f, timeout) for _, f in pending), return_exceptions=True)
        confirmed = []
        for (r, _), ack in zip(pending, acks):
            if isinstance(ack, BaseException):
                outcome.failed[r.seq] = f"publish to {r.headers.get(rec.ORIG_SUBJECT)} not confirmed: {_why(ack)}"
            else:
                confirmed.append(r.seq)
        if keep:
            outcome.replayed.extend(confirmed)
        else:
            deleted, failed = await delete(js, chunk[0].stream, confirmed)
            outcome.replayed.extend(deleted)
            for seq, why in failed.items():  # out, but still listed: a second replay would repeat it
                outcome.failed[seq] = f"replayed, but the record could not be deleted ({why}); purge it, do not replay it again"
        if progress:
            progress(min(start + window, len(records)), len(records))
    return outcome


async def delete(js: Any, stream: str, seqs: Iterable[int], *, erase: bool = False,
                 concurrency: int = WINDOW) -> tuple[list[int], dict[int, str]]:
    """Delete records by sequence; returns (deleted, {seq: why not}). Without `erase` the server only
    marks them deleted (~50x faster than overwriting them on disk, which nats-py's delete_msg does)."""
    seqs = list(seqs)
    deleted: list[int] = []
    failed: dict[int, str] = {}
    for start in range(0, len(seqs), concurrency):
        chunk = seqs[start:start + concurrency]
        body = {} if erase else {"no_erase": True}
        results = await asyncio.gather(*(_api(js, f"STREAM.MSG.DELETE.{stream}", {"seq": s, **body}) for s in chunk),
                                       return_exceptions=True)
        for seq, result in zip(chunk, results):
            if isinstance(result, BaseException):
                failed[seq] = _why(result)
            elif "error" in result:
                err = result["error"]
                failed[seq] = ("not found (already replayed, purged or expired)" if err.get("code") == 404
                               else err.get("description") or str(err))
            else:
                deleted.append(seq)
    return deleted, failed


async def stats(js: Any, stream: str, *, flow: str | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Counts per flow and error class, and the oldest record per flow (read headers only); ages on the
    caller's clock (`now`) against the records' own failure times."""
    now = now or SYSTEM.now()
    flows: dict[str, dict[str, Any]] = {}
    total = 0
    async with aclosing(_scan(js, stream, flow_subject(flow), headers_only=True)) as records:
        async for r in records:
            total += 1
            f = flows.setdefault(r.flow, {"count": 0, "oldest": r.time, "error_classes": {}})
            f["count"] += 1
            f["oldest"] = min(f["oldest"], r.time)
            classes = f["error_classes"]
            classes[r.error_class or "?"] = classes.get(r.error_class or "?", 0) + 1
    for f in flows.values():
        f["oldest_age_s"] = round((now - f["oldest"]).total_seconds(), 3)
        f["oldest"] = f["oldest"].isoformat(timespec="milliseconds")
        f["error_classes"] = dict(sorted(f["error_classes"].items(), key=lambda kv: (-kv[1], kv[0])))
    return {"stream": stream, "total": total, "flows": dict(sorted(flows.items()))}


def _why(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _quietly(coro: Any) -> None:
    try:
        await coro
    except Exception:
        pass
