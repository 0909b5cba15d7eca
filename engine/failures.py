"""What happens to a message whose steps failed: delayed redelivery for transient errors while the
flow's schedule lasts, the dead-letter queue for the rest. Nothing is acked or termed unless it is
done or safely dead-lettered (the DLQ publish is confirmed first)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import structlog

from dlq.record import build_headers, dlq_subject
from engine.errors import HubError
from engine.messages import message_id
from engine.spec import Flow

log = structlog.get_logger("hub.failures")

DLQ_RETRY_DELAY = 5.0  # the DLQ itself unreachable: try the whole message again soon


class FailureHandler:
    def __init__(self, flow: Flow, js: Any, stream: str, publish_timeout: float) -> None:
        self.flow = flow
        self.js = js
        self.stream = stream
        self.publish_timeout = publish_timeout
        self.schedule = list(flow.on_error.redeliver)
        self.dead_lettered = 0
        self.redelivered = 0
        self.failed_terms = 0

    async def handle(self, msg: Any, err: HubError, msg_id: str | None, correlation_id: str | None) -> None:
        meta = msg.metadata
        msg_id = msg_id or message_id(msg.headers, f"{meta.stream}:{meta.sequence.stream}")
        delivered = meta.num_delivered
        fields = dict(flow=self.flow.name, msg_id=msg_id, correlation_id=correlation_id, step=err.step,
                      error_class=err.error_class, error=str(err), delivery=delivered)
        if err.transient and delivered <= len(self.schedule):
            delay = max(self.schedule[delivered - 1], getattr(err, "retry_after", None) or 0.0)
            log.warning("redeliver_later", delay_s=delay, **fields)
            self.redelivered += 1
            await msg.nak(delay=delay)
            return
        if not self.flow.on_error.dead_letter:
            log.error("message_dropped_no_dlq", **fields)
            self.failed_terms += 1
            await msg.term()
            return
        headers = build_headers(
            msg.headers, flow=self.flow.name, err=err, attempts=delivered, subject=msg.subject,
            stream=meta.stream, sequence=meta.sequence.stream, consumer=meta.consumer,
            first_failure=_first_failure(meta, delivered))
        try:
            await self.js.publish(dlq_subject(self.flow.name), msg.data, headers=headers,
                                  timeout=self.publish_timeout)
        except Exception as exc:  # the DLQ is unreachable: keep the message, try again later
            log.error("dead_letter_failed", dlq_error=repr(exc), **fields)
            await msg.nak(delay=DLQ_RETRY_DELAY)
            return
        log.error("dead_lettered", **fields)
        self.dead_lettered += 1
        await msg.term()


def _first_failure(meta: Any, delivered: int) -> datetime | None:
    """The first delivery's time is not kept by JetStream; the stored time is the best lower bound
    we have without extra state, and is exact for a first-attempt failure."""
    ts = getattr(meta, "timestamp", None)
    if isinstance(ts, datetime):
        return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)
    return None
