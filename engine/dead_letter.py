"""The dead-letter record: the original message untouched plus `Hub-Dlq-*` headers that say what
failed, where, how often and when — everything ops need to decide and replay."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from engine.errors import HubError
from engine.messages import MSG_ID

FLOW, STEP, ERROR_CLASS, ERROR, TRANSIENT = "Hub-Dlq-Flow", "Hub-Dlq-Step", "Hub-Dlq-Error-Class", "Hub-Dlq-Error", "Hub-Dlq-Transient"
ATTEMPTS, FIRST_FAILURE, LAST_FAILURE = "Hub-Dlq-Attempts", "Hub-Dlq-First-Failure", "Hub-Dlq-Last-Failure"
ORIG_SUBJECT, ORIG_STREAM, ORIG_SEQ, ORIG_CONSUMER = "Hub-Dlq-Subject", "Hub-Dlq-Stream", "Hub-Dlq-Sequence", "Hub-Dlq-Consumer"
ORIG_MSG_ID = "Hub-Dlq-Original-Msg-Id"
HISTORY = "Hub-Dlq-History"  # JSON list of every failure: at, delivery, step, error_class, error
# Attempts counts the deliveries that failed; these say what JetStream and the target saw:
DELIVERIES = "Hub-Dlq-Deliveries"  # times JetStream delivered the message (outage waits and restarts included)
CALLS = "Hub-Dlq-Calls"            # requests the failing endpoints received for it (every in-process attempt)
PAYLOAD_OMITTED = "Hub-Dlq-Payload-Omitted"  # the payload did not fit next to the headers: where the original is


def _one_line(text: str, limit: int = 2000) -> str:
    """Headers are single lines; keep the error readable and bounded."""
    return " ".join(text.split())[:limit]


def dlq_subject(flow: str) -> str:
    return f"dlq.{flow}"


def build_headers(original: dict[str, str] | None, *, flow: str, err: HubError, attempts: int,
                  subject: str, stream: str, sequence: int, consumer: str,
                  first_failure: datetime | None, history: list[dict[str, Any]] | None = None,
                  now: datetime | None = None, deliveries: int | None = None,
                  calls: int | None = None) -> dict[str, str]:
    """Original headers (with its Nats-Msg-Id kept aside) plus the failure facts. `now` is the failing
    runner's clock (`engine.clock`): the first and last failure times are what `dlq list --since` and
    the record ages read, on that clock, never nats-server's stored time."""
    now = now or datetime.now(timezone.utc)
    headers = {k: v for k, v in (original or {}).items() if k != MSG_ID}
    if original and MSG_ID in original:
        headers[ORIG_MSG_ID] = original[MSG_ID]
    headers.update({
        FLOW: flow,
        STEP: err.step or "",
        ERROR_CLASS: err.error_class,
        ERROR: _one_line(str(err)),
        TRANSIENT: "true" if err.transient else "false",
        ATTEMPTS: str(attempts),
        FIRST_FAILURE: (first_failure or now).isoformat(timespec="milliseconds"),
        LAST_FAILURE: now.isoformat(timespec="milliseconds"),
        ORIG_SUBJECT: subject,
        ORIG_STREAM: stream,
        ORIG_SEQ: str(sequence),
        ORIG_CONSUMER: consumer,
        DELIVERIES: str(deliveries if deliveries is not None else attempts),
        CALLS: str(calls if calls is not None else 0),
        HISTORY: json.dumps((history or [])[-20:], ensure_ascii=True, default=str),  # the last 20 entries
        # one record per stored message: a second dead-lettering of the same delivery is dropped
        MSG_ID: f"dlq:{flow}:{stream}:{sequence}",  # per flow: two flows may dead-letter one message
    })
    return headers


def summary(headers: dict[str, Any]) -> dict[str, Any]:
    """The failure facts of a record, for listing."""
    return {
        "flow": headers.get(FLOW), "step": headers.get(STEP), "error_class": headers.get(ERROR_CLASS),
        "error": headers.get(ERROR), "attempts": int(headers.get(ATTEMPTS, "0") or 0),
        "deliveries": int(headers.get(DELIVERIES, "0") or 0), "calls": int(headers.get(CALLS, "0") or 0),
        "first_failure": headers.get(FIRST_FAILURE), "last_failure": headers.get(LAST_FAILURE),
        "subject": headers.get(ORIG_SUBJECT), "stream": headers.get(ORIG_STREAM),
        "sequence": int(headers.get(ORIG_SEQ, "0") or 0),
        "history": _history(headers.get(HISTORY)),
    }


def _history(text: str | None) -> list[dict[str, Any]]:
    try:
        value = json.loads(text or "[]")
        return value if isinstance(value, list) else []
    except ValueError:
        return []
