"""What happens to a message whose steps failed.

- Transient errors: delayed JetStream redelivery while the flow's `redeliver` schedule lasts, then
  the DLQ. The position in the schedule comes from the message's failure history (KV), not from
  the delivery count, so hand-backs at shutdown and outage waits do not use up the schedule.
- An outage (the endpoint's circuit is open) is not a poison message: the message is redelivered
  after the breaker's wait and nothing is counted (principle 3).
- Permanent errors and exhausted schedules: the DLQ, with the whole history.
Nothing is acked or termed unless done or safely dead-lettered (the DLQ publish is confirmed first).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import datetime
from typing import Any

import structlog
from nats.js.errors import KeyNotFoundError

from engine.clock import SYSTEM, Clock
from engine.dead_letter import build_headers, dlq_subject
from engine.errors import CircuitOpen, HubError
from engine.kv import bucket
from engine.messages import message_id
from engine.spec import Flow

log = structlog.get_logger("hub.failures")

DLQ_RETRY_DELAY = 5.0       # the DLQ itself unreachable: try the whole message again soon
HISTORY_BUCKET = "hub_failures"
HISTORY_KEEP = 14 * 86400.0
MAX_OUTAGE_DELAY = 3600.0


class FailureHistory:
    """Per-message list of failures (time, step, class, text), kept in KV while a message is retried."""

    def __init__(self, js: Any) -> None:
        self.js = js
        self.kv: Any = None

    async def start(self) -> None:
        self.kv = await bucket(self.js, HISTORY_BUCKET, HISTORY_KEEP)

    @staticmethod
    def key(flow: str, stream: str, seq: int) -> str:
        return f"{flow}.{stream}.{seq}"

    async def load(self, key: str) -> list[dict[str, Any]]:
        try:
            entry = await self.kv.get(key)
            return json.loads(entry.value or b"[]")
        except KeyNotFoundError:
            return []
        except Exception as exc:
            log.warning("failure_history_unreadable", key=key, error=repr(exc))
            return []

    async def append(self, key: str, history: list[dict[str, Any]]) -> None:
        try:
            await self.kv.put(key, json.dumps(history).encode())
        except Exception as exc:  # history is for humans and the schedule; the message matters more
            log.warning("failure_history_not_saved", key=key, error=repr(exc))

    async def forget(self, key: str) -> None:
        try:
            await self.kv.delete(key)
        except Exception:
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
        self.dead_lettered = 0
        self.redelivered = 0
        self.dead_lettered_by_class: Counter[str] = Counter()  # for /metrics (engine/metrics.py)

    def count_dead_letter(self, error_class: str) -> None:
        """A record of this flow's that another flow's call filed (an item of a batch: engine/item_outcomes.py)."""
        self.dead_lettered += 1
        self.dead_lettered_by_class[error_class] += 1
        self.outage_waits = 0

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

    async def handle(self, msg: Any, err: HubError, msg_id: str | None, correlation_id: str | None) -> None:
        meta = msg.metadata
        seq = meta.sequence.stream
        msg_id = msg_id or message_id(msg.headers, f"{meta.stream}:{seq}")
        delivered = meta.num_delivered
        fields = dict(flow=self.flow.name, msg_id=msg_id, correlation_id=correlation_id, step=err.step,
                      error_class=err.error_class, error=str(err), delivery=delivered)
        outage = self.outage_delay(err, delivered)
        if outage is not None:
            log.warning("outage_wait", delay_s=outage, **fields)
            self.outage_waits += 1
            await msg.nak(delay=outage)
            return
        key = FailureHistory.key(self.flow.name, meta.stream, seq)
        history = await self.history.load(key) if self.history and delivered > 1 else []
        history.append({"at": self.clock.now().isoformat(timespec="milliseconds"), "delivery": delivered,
                        "step": err.step, "error_class": err.error_class, "error": str(err)[:500],
                        "transient": err.transient})
        failures = len(history)
        if err.transient and failures <= len(self.schedule):
            base = self.schedule[failures - 1] * (1 + random.uniform(-1, 1) * self.flow.on_error.jitter)
            delay = max(base, getattr(err, "retry_after", None) or 0.0)
            if self.history:
                await self.history.append(key, history)
            log.warning("redeliver_later", delay_s=delay, attempt=failures, **fields)
            self.redelivered += 1
            await msg.nak(delay=delay)
            return
        await self.dead_letter(msg, err, history, fields)
        if self.history and failures > 1:
            await self.history.forget(key)

    async def dead_letter(self, msg: Any, err: HubError, history: list[dict[str, Any]], fields: dict[str, Any]) -> None:
        if not self.flow.on_error.dead_letter:
            log.error("message_dropped_no_dlq", **fields)
            await msg.term()
            return
        meta = msg.metadata
        try:
            await self._publish_record(msg.data, msg.headers, msg.subject, meta.sequence.stream, err, history,
                                       len(history) or meta.num_delivered)
        except Exception as exc:  # the DLQ is unreachable: keep the message, try again later
            log.error("dead_letter_failed", dlq_error=repr(exc), **fields)
            await msg.nak(delay=DLQ_RETRY_DELAY)
            return
        log.error("dead_lettered", **fields)
        self.dead_lettered += 1
        self.dead_lettered_by_class[err.error_class] += 1
        await msg.term()

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
                              err: HubError, history: list[dict[str, Any]], attempts: int) -> None:
        first = datetime.fromisoformat(history[0]["at"]) if history else None
        record_headers = build_headers(
            headers, flow=self.flow.name, err=err, attempts=attempts, subject=subject, stream=self.stream,
            sequence=seq, consumer=self.flow.name, first_failure=first, history=history, now=self.clock.now())
        await self.js.publish(dlq_subject(self.flow.name), data, headers=record_headers,
                              timeout=self.publish_timeout)
