"""Per-item outcomes of one call about many items (a Bulk API job's rows, a batch of stored messages).

A call may answer `ItemOutcomes` instead of a plain answer. The call step then turns every failed
item into a dead-letter record of its own, and every item to try again into a copy published back
to the subject it came from; both become outputs of the message, so they are confirmed by JetStream
before the message is acked (nothing is dead-lettered on an unconfirmed publish) and a redelivery
publishes them under the same ids (JetStream drops the repeats). The flow goes on with `answer`.

A dead-letter record is the item's original message (payload and headers) with the `Hub-Dlq-*`
facts, filed under the flow that took the item in (`flow`), so `runner.py dlq replay` sends it back
to its subject for that flow. A retried item carries `Hub-Replay-For` (only that flow takes it) and
`Hub-Item-Attempts` (how often it was sent), so the caller can stop retrying it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.dead_letter import build_headers, dlq_subject
from engine.errors import HubError
from engine.messages import CE_ID, MSG_ID, REPLAY_FOR, Envelope, derived_id, now_iso
from engine.nats_client import encode_headers

ITEM_ATTEMPTS = "Hub-Item-Attempts"


@dataclass
class Item:
    """An item's original message, where it is stored."""

    data: bytes
    headers: dict[str, str] | None
    subject: str
    stream: str
    sequence: int

    @property
    def attempts(self) -> int:
        """How often the item was sent before (1 for an item never retried)."""
        try:
            return int((self.headers or {}).get(ITEM_ATTEMPTS, "1"))
        except ValueError:
            return 1


@dataclass
class ItemOutcomes:
    answer: Any
    flow: str                                   # whose dead-letter queue and replays these items belong to
    failed: list[tuple[Item, HubError]] = field(default_factory=list)
    retry: list[Item] = field(default_factory=list)

    def settle(self, env: Envelope, step: str) -> Any:
        """Add the dead-letter records and the retries to the message's outputs; the flow's answer."""
        for item, err in self.failed:
            env.outputs.append(dead_letter_output(self.flow, item, err, step))
        if self.failed:  # counted for `self.flow` once the records are confirmed (engine/executor.py)
            env.item_dead_letters = [*(env.item_dead_letters or ()), *((self.flow, e.error_class) for _, e in self.failed)]
        for item in self.retry:
            headers = {k: v for k, v in (item.headers or {}).items() if k not in (MSG_ID, REPLAY_FOR, ITEM_ATTEMPTS)}
            retry_id = derived_id("item-retry", env.msg_id, item.stream, str(item.sequence))
            headers.update({MSG_ID: retry_id, REPLAY_FOR: self.flow, ITEM_ATTEMPTS: str(item.attempts + 1)})
            headers.setdefault(CE_ID, retry_id)
            env.outputs.append((item.subject, item.data, encode_headers(headers)))
        return self.answer


def dead_letter_output(flow: str, item: Item, err: HubError, step: str) -> tuple[str, bytes, bytes]:
    """(subject, data, encoded headers) of the dead-letter record of one item."""
    err.step = err.step or step
    history = [{"at": now_iso(), "delivery": item.attempts, "step": err.step, "error_class": err.error_class,
                "error": str(err)[:500], "transient": err.transient}]
    headers = build_headers(item.headers, flow=flow, err=err, attempts=item.attempts, subject=item.subject,
                            stream=item.stream, sequence=item.sequence, consumer=flow, first_failure=None,
                            history=history)
    return dlq_subject(flow), item.data, encode_headers(headers)
