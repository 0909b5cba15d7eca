"""What happens to a message whose steps failed.

- The hub's own broker out of reach (BrokerUnavailable): an outage, never the message's fault. It is
  sent back for a short wait, nothing is counted, nothing is dead-lettered.
- An endpoint's outage (its circuit is open): not a poison message either (principle 3). The message
  is parked in the runner (held, kept alive, no new delivery) and runs again as soon as the circuit
  lets calls through, so a backlog drains within moments of recovery; past the park's room it is
  sent back for the circuit's wait instead. Nothing is counted.
- Other transient errors: delayed JetStream redelivery while the flow's `redeliver` schedule lasts,
  then the DLQ. The position in the schedule comes from the message's failure history (KV), not from
  the delivery count, so hand-backs, outage waits and restarts do not use it up.
- Permanent errors and exhausted schedules: the DLQ, with the whole history.

The history has one entry per failed call attempt (in-process retries included) and one per failed
delivery, plus what a non-idempotent call left behind (engine/outcomes.py). Nothing is acked or termed
unless done or safely dead-lettered: the history entry, the DLQ record and the term are confirmed by
the broker first (engine/confirm.py).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import datetime
from typing import Any, Callable

import structlog
from nats.js.errors import KeyNotFoundError

from engine.clock import SYSTEM, Clock
from engine.confirm import until_confirmed
from engine.dead_letter import HISTORY, PAYLOAD_OMITTED, build_headers, dlq_subject
from engine.errors import (BrokerUnavailable, CircuitOpen, HubError, OutcomeUnknown, RoutingError, SlotsBusy,
                           ValidationFailed, VerifyPending)
from engine.kv import bucket
from engine.messages import message_id
from engine.spec import Flow

log = structlog.get_logger("hub.failures")

HISTORY_BUCKET = "hub_failures"
HISTORY_KEEP = 14 * 86400.0
MAX_OUTAGE_DELAY = 300.0      # an outage wait past the park's room: the circuit's wait, doubled per delivery
BROKER_WAIT = 1.0             # the broker restarting: back soon (doubled per delivery, at most BROKER_MAX_WAIT)
BROKER_MAX_WAIT = 10.0
TERM_CONFIRM_WITHIN = 30.0    # a term the broker does not confirm in this long is left to a redelivery


def failed_deliveries(history: list[dict[str, Any]]) -> int:
    """Deliveries that failed (the schedule's position); entries of single attempts do not count."""
    return sum(1 for e in history if e.get("final", "attempt" not in e and "outcome" not in e))


def calls_made(history: list[dict[str, Any]]) -> int:
    """Requests the failing endpoints received for this message, every attempt of every delivery."""
    return sum(1 for e in history if e.get("call"))


def outcomes_of(history: list[dict[str, Any]]) -> dict[str, dict[str, Any]] | None:
    """Per call step, the last thing earlier deliveries learnt about a non-idempotent call."""
    found = {e["step"]: e["outcome"] for e in history if "outcome" in e}
    return found or None


def note_attempt(env: Any, label: str | None, endpoint: str, operation: str | None, err: HubError,
                 clock: Clock = SYSTEM) -> None:
    """One failed call attempt of this delivery, kept on the envelope for the history (its time on `clock`)."""
    if env.attempts is None:
        env.attempts = []
    number = 1 + sum(1 for a in env.attempts if a["step"] == label)
    env.attempts.append({"at": clock.now().isoformat(timespec="milliseconds"), "step": label, "endpoint": endpoint, "operation": operation,
                         "attempt": number, "error_class": err.error_class, "error": str(err)[:500],
                         "transient": err.transient, "call": reached_target(err)})


def reached_target(err: HubError) -> bool:
    """Whether a failed attempt sent a request (the count of calls in a DLQ record)."""
    if isinstance(err, CircuitOpen | SlotsBusy | BrokerUnavailable | RoutingError | ValidationFailed):
        return False
    return getattr(err, "sent", None) is not False


class FailureHistory:
    """Per-message list of failures, kept in KV while a message is retried."""

    def __init__(self, js: Any) -> None:
        self.js = js
        self.kv: Any = None

    async def start(self) -> None:
        self.kv = await bucket(self.js, HISTORY_BUCKET, HISTORY_KEEP)

    @staticmethod
    def key(flow: str, stream: str, seq: int) -> str:
        return f"{flow}.{stream}.{seq}"

    async def load(self, key: str) -> list[dict[str, Any]]:
        """The entries so far; raises when the broker does not answer (the schedule and what a
        non-idempotent call left behind must not be forgotten by a read that failed)."""
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return []
        try:
            value = json.loads(entry.value or b"[]")
        except ValueError:
            log.warning("failure_history_unreadable", key=key)
            return []
        return value if isinstance(value, list) else []

    async def save(self, key: str, history: list[dict[str, Any]]) -> None:
        await self.kv.put(key, json.dumps(history, default=str).encode())

    async def forget(self, key: str) -> None:
        try:
            await self.kv.delete(key)
        except Exception:  # noqa: BLE001 - tidiness only: the bucket's TTL removes it anyway
            pass


class FailureHandler:
    def __init__(self, flow: Flow, js: Any, stream: str, publish_timeout: float,
                 history: FailureHistory | None = None, breaker_wait: Any = None, clock: Clock = SYSTEM) -> None:
        self.flow = flow
        self.clock = clock  # failure times (history `at`, the record's first/last failure) are read on it
        self.js = js
        self.stream = stream
        self.publish_timeout = publish_timeout
        self.schedule = list(flow.on_error.redeliver)
        self.history = history
        self.breaker_wait = breaker_wait  # endpoint -> seconds until its circuit may close, or None
        self.alive: Callable[[], bool] = lambda: True  # the connection can still come back (set by the runner)
        self.park: Callable[[Any, str], bool] | None = None  # hold a message until its endpoint's circuit lets calls through
        self.max_payload: Callable[[], int | None] = lambda: None  # the server's limit, headers included
        self.dead_lettered = 0
        self.redelivered = 0
        self.outage_waits = 0
        self.dead_lettered_by_class: Counter[str] = Counter()  # for /metrics (engine/metrics.py)

    def count_dead_letter(self, error_class: str) -> None:
        """A record of this flow's that another flow's call filed (an item of a batch: engine/item_outcomes.py)."""
        self.dead_lettered += 1
        self.dead_lettered_by_class[error_class] += 1

    def outage_delay(self, err: HubError, delivered: int) -> float | None:
        """Seconds to wait when `err` comes from an open circuit; None when it is an ordinary failure."""
        wait = None
        if isinstance(err, CircuitOpen):  # 0.0 is an answer (the reset just elapsed), not "unknown"
            wait = err.retry_after if err.retry_after is not None else 30.0
        elif err.transient and self.breaker_wait is not None and getattr(err, "endpoint", None):
            wait = self.breaker_wait(err.endpoint)
        if wait is None:
            return None
        # grows with repeated deliveries so a long outage costs few deliveries
        return min(MAX_OUTAGE_DELAY, max(wait, 0.5) * 2 ** max(0, min(delivered - 1, 12)))

    async def handle(self, msg: Any, err: HubError, env: Any = None) -> bool:
        """Send the message back, park it or dead-letter it. True when it stays held (parked)."""
        meta = msg.metadata
        seq = meta.sequence.stream
        msg_id = getattr(env, "msg_id", None) or message_id(msg.headers, f"{meta.stream}:{seq}")
        delivered = meta.num_delivered
        fields = dict(flow=self.flow.name, msg_id=msg_id, correlation_id=getattr(env, "correlation_id", None),
                      step=err.step, error_class=err.error_class, error=str(err), delivery=delivered)
        outcomes = getattr(env, "outcomes", None)
        if isinstance(err, BrokerUnavailable):
            delay = min(BROKER_MAX_WAIT, BROKER_WAIT * 2 ** min(delivered - 1, 8)) * random.uniform(0.8, 1.2)
            log.warning("broker_outage_wait", delay_s=round(delay, 2), **fields)
            self.outage_waits += 1
            await msg.nak(delay=delay)
            return False
        outage = None if isinstance(err, VerifyPending) else self.outage_delay(err, delivered)
        if outage is not None and not outcomes:  # what a create left behind must reach the history first
            self.outage_waits += 1
            if self.park is not None and getattr(err, "endpoint", None) and self.park(msg, err.endpoint):
                log.warning("outage_parked", endpoint=err.endpoint, **fields)
                return True
            log.warning("outage_wait", delay_s=outage, **fields)
            await msg.nak(delay=outage)
            return False
        key = FailureHistory.key(self.flow.name, meta.stream, seq)
        try:
            history = await self._load(key) if self.history and delivered > 1 else []
        except BrokerUnavailable as exc:
            log.warning("broker_outage_wait", delay_s=BROKER_WAIT, **{**fields, "error": str(exc)})
            await msg.nak(delay=BROKER_WAIT)
            return False
        history.extend(self.entries(err, env, delivered, counts=outage is None))
        failures = failed_deliveries(history)
        if outage is not None:  # an outage after a create: its outcome is recorded, the wait not counted
            await self._save(key, history, fields)
            log.warning("outage_wait", delay_s=outage, **fields)
            await msg.nak(delay=outage)
            return False
        if err.transient and failures <= len(self.schedule):
            base = self.schedule[failures - 1] * (1 + random.uniform(-1, 1) * self.flow.on_error.jitter)
            delay = max(base, getattr(err, "retry_after", None) or 0.0)
            await self._save(key, history, fields)
            log.warning("redeliver_later", delay_s=delay, attempt=failures, **fields)
            self.redelivered += 1
            await msg.nak(delay=delay)
            return False
        if isinstance(err, VerifyPending):  # the schedule is spent and nobody could tell: ops reconcile
            final = OutcomeUnknown(f"{err} -- gave up after {failures} deliveries", step=err.step)
            final.endpoint = err.endpoint
            err = final
            fields["error_class"] = err.error_class
        if outcomes and self.history:
            await self._save(key, history, fields)  # kept past the DLQ: a lost term must not resend a create
        await self.dead_letter(msg, err, history, fields, forget=key if self.history and not outcomes else None)
        return False

    def entries(self, err: HubError, env: Any, delivered: int, counts: bool = True) -> list[dict[str, Any]]:
        """This delivery's history: each failed call attempt, the failure that ended it (the last attempt
        when that is what failed; `counts`: against the schedule), and what its non-idempotent calls left."""
        now = self.clock.now().isoformat(timespec="milliseconds")
        out = [{**a, "delivery": delivered} for a in (getattr(env, "attempts", None) or ())]
        last = out[-1] if out else None
        if last is not None and last["error_class"] == err.error_class and last["error"] == str(err)[:500]:
            last["final"] = counts
        else:
            out.append({"at": now, "delivery": delivered, "step": err.step, "error_class": err.error_class,
                        "error": str(err)[:500], "transient": err.transient, "final": counts})
        for step, outcome in (getattr(env, "outcomes", None) or {}).items():
            out.append({"at": now, "delivery": delivered, "step": step, "outcome": outcome})
        return out

    async def prior_outcomes(self, msg: Any) -> dict[str, dict[str, Any]] | None:
        """What earlier deliveries of `msg` learnt about its non-idempotent calls (waits out the broker)."""
        if self.history is None or msg.metadata.num_delivered <= 1:
            return None
        meta = msg.metadata
        key = FailureHistory.key(self.flow.name, meta.stream, meta.sequence.stream)
        return outcomes_of(await self._load(key))

    async def _load(self, key: str) -> list[dict[str, Any]]:
        assert self.history is not None
        return await until_confirmed(lambda: self.history.load(key), what="failure history read",  # type: ignore[union-attr]
                                     alive=self.alive, log=log, key=key)

    async def _save(self, key: str, history: list[dict[str, Any]], fields: dict[str, Any]) -> None:
        if self.history is None:
            return
        await until_confirmed(lambda: self.history.save(key, history), what="failure history write",  # type: ignore[union-attr]
                              alive=self.alive, log=log, msg_id=fields.get("msg_id"))

    async def dead_letter(self, msg: Any, err: HubError, history: list[dict[str, Any]], fields: dict[str, Any],
                          forget: str | None = None) -> None:
        """The DLQ record, confirmed, then the term, confirmed: until both are, the message stays ours
        (a record stored twice is dropped by its Nats-Msg-Id)."""
        if not self.flow.on_error.dead_letter:
            log.error("message_dropped_no_dlq", **fields)
            await msg.term()
            return
        meta = msg.metadata
        await until_confirmed(
            lambda: self._publish_record(msg.data, msg.headers, msg.subject, meta.sequence.stream, err, history,
                                         meta.num_delivered),
            what="dead-letter record", alive=self.alive, log=log, msg_id=fields.get("msg_id"))
        log.error("dead_lettered", deliveries=meta.num_delivered, calls=calls_made(history), **fields)
        self.dead_lettered += 1
        self.dead_lettered_by_class[err.error_class] += 1
        try:
            await until_confirmed(lambda: msg._client.request(msg.reply, b"+TERM", timeout=self.publish_timeout),
                                  what="term", alive=self.alive, log=log, within=TERM_CONFIRM_WITHIN,
                                  msg_id=fields.get("msg_id"))
        except BrokerUnavailable:
            return  # a redelivery finds the record stored (and the history kept): no second record, no resend
        msg._ackd = True  # settled: the feed's keep-alive leaves it alone
        if forget is not None and self.history is not None and len(history) > 1:
            await self.history.forget(forget)

    async def dead_letter_stored(self, original: Any, seq: int, err: HubError, history: list[dict[str, Any]],
                                 deliveries: int) -> None:
        """Dead-letter a message read back from its stream (the MAX_DELIVERIES backstop); raises if
        the DLQ does not confirm, so the advisory is retried."""
        await self._publish_record(original.data or b"", original.headers, original.subject, seq, err, history,
                                   deliveries)
        log.error("dead_lettered", flow=self.flow.name, stream=self.stream, seq=seq, error_class=err.error_class,
                  error=str(err), msg_id=message_id(original.headers, f"{self.stream}:{seq}"))
        self.dead_lettered += 1
        self.dead_lettered_by_class[err.error_class] += 1

    async def _publish_record(self, data: bytes, headers: dict[str, str] | None, subject: str, seq: int,
                              err: HubError, history: list[dict[str, Any]], deliveries: int) -> None:
        first = datetime.fromisoformat(history[0]["at"]) if history else None
        shown = [{**e, "outcome": {k: v for k, v in e["outcome"].items() if k != "answer"} | (
                  {"answer": "(kept in the failure history)"} if "answer" in e["outcome"] else {})}
                 if "outcome" in e else e for e in history]  # answers can be large: not in a header
        record_headers = build_headers(
            headers, flow=self.flow.name, err=err, attempts=failed_deliveries(history) or deliveries, subject=subject,
            stream=self.stream, sequence=seq, consumer=self.flow.name, first_failure=first, history=shown,
            deliveries=deliveries, calls=calls_made(history), now=self.clock.now())
        data, record_headers = fit(data, record_headers, self.max_payload(), self.stream, seq)
        await self.js.publish(dlq_subject(self.flow.name), data, headers=record_headers,
                              timeout=self.publish_timeout)


def fit(data: bytes, headers: dict[str, str], limit: int | None, stream: str, seq: int) -> tuple[bytes, dict[str, str]]:
    """A record within the server's max_payload (a bigger publish would cut the connection): the
    history shortened first, then the payload left out (it stays in its own stream, named here)."""
    if limit is None:
        return data, headers

    def size(d: bytes, h: dict[str, str]) -> int:
        return len(d) + sum(len(k) + len(v) + 4 for k, v in h.items()) + 16

    if size(data, headers) <= limit:
        return data, headers
    history = json.loads(headers.get(HISTORY, "[]"))
    headers = {**headers, HISTORY: json.dumps(history[-3:], ensure_ascii=True, default=str)}
    if size(data, headers) <= limit:
        return data, headers
    headers[PAYLOAD_OMITTED] = (f"{len(data)} bytes: too large for a record next to its headers; the original is "
                                f"message {seq} of stream {stream}")
    return b"", headers
