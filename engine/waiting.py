"""Messages waiting on an `until` step (a tariff switch the ERP completes up to 48 h later).

The wait itself is JetStream's: the message is nak'd with the next delay and comes back to one
runner, so a restart loses nothing and no two runners check the same wait at once. What KV adds is
visibility and memory: a pending record per wait (`runner.py pending`) with its checks, next check,
deadline and whether the deadline alert fired, so the alert fires once and resolves once.

Which clock: a wait starts when its first check finds it not done, read on the checking runner's
`Clock` and kept in the pending record (`since`); its age, `deadline` and `give_up` are that record's
`since` against the checking runner's clock (runner clock against runner clock: never against
nats-server's message timestamps, which a skewed host or time-machine does not move). A record that is
missing on a later check (deleted by hand, or lost) starts the wait again from that check: its alert
and its give-up come late, never early, and the log says so (`pending_record_missing`).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from typing import Any

import structlog
from nats.js.errors import KeyNotFoundError

from engine.alerts import publish_alert
from engine.clock import SYSTEM, Clock
from engine.errors import DeadlineExceeded, NotYet
from engine.kv import bucket, stored_keys
from engine.messages import Envelope
from engine.spec import Flow, UntilSpec

log = structlog.get_logger("hub.waiting")

BUCKET = "hub_pending"
PAYLOAD_KEEP = 4000  # characters of the last payload kept in a pending record, for ops


def checks_within(spec: UntilSpec) -> int:
    """How many checks fit before give_up: the consumer's max_deliver must leave room for them."""
    total, n = 0.0, 0
    while total < spec.give_up:
        total += spec.every[min(n, len(spec.every) - 1)]
        n += 1
    return n + 1


def pending_key(flow: str, key: str) -> str:
    return f"{flow}.{hashlib.blake2b(key.encode(), digest_size=12).hexdigest()}"


async def pending_records(js: Any, flow: str | None = None) -> list[dict[str, Any]]:
    """Every pending record (of one flow), oldest first: what ops see with `runner.py pending`."""
    kv = await bucket(js, BUCKET)
    out = []
    for k in await stored_keys(js, BUCKET, f"{flow}." if flow else ""):  # a broker error is raised, never "nothing pending"
        try:
            entry = await kv.get(k)
        except KeyNotFoundError:
            continue
        if entry.value:
            out.append(json.loads(entry.value))
    return sorted(out, key=lambda r: r.get("since", ""))


class WaitHandler:
    """Not-yet outcomes of one flow: record, alert at the deadline, give up at give_up, wait."""

    def __init__(self, flow: Flow, js: Any, failures: Any, clock: Clock = SYSTEM) -> None:
        self.flow = flow
        self.clock = clock  # ages, deadlines and give-up are read on it (module docstring)
        self.js = js
        self.failures = failures
        self.kv: Any = None
        self.waiting = 0

    async def start(self) -> None:
        self.kv = await bucket(self.js, BUCKET)

    async def _load(self, key: str) -> dict[str, Any] | None:
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return None
        return json.loads(entry.value) if entry.value else None

    async def not_yet(self, msg: Any, env: Envelope, err: NotYet) -> None:
        spec: UntilSpec = err.spec  # type: ignore[assignment]
        now = self.clock.now()
        wait_key = env.wait_key or env.msg_id
        key = pending_key(self.flow.name, wait_key)
        record = await self._load(key)
        if record is None:
            if msg.metadata.num_delivered > 1:  # checked before, but its record is gone: start again
                log.warning("pending_record_missing", flow=self.flow.name, wait_key=wait_key,
                            delivery=msg.metadata.num_delivered)
            record = {"flow": self.flow.name, "key": wait_key, "msg_id": env.msg_id, "since": now.isoformat(),
                      "checks": 0, "alerted": False,
                      "deadline_at": (now + timedelta(seconds=spec.deadline)).isoformat() if spec.deadline else None,
                      "give_up_at": (now + timedelta(seconds=spec.give_up)).isoformat()}
        age = (now - datetime.fromisoformat(record["since"])).total_seconds()
        fields = dict(flow=self.flow.name, msg_id=env.msg_id, correlation_id=env.correlation_id, wait_key=wait_key)
        if age >= spec.give_up:
            await self.failures.dead_letter(msg, DeadlineExceeded(
                f"still not done after {record['checks']} checks since {record['since']} (give_up "
                f"{spec.give_up:.0f}s)", step=err.step), [], {**fields, "error_class": "DeadlineExceeded"})
            await self.forget(env)
            return
        record["checks"] += 1
        record["last_check"] = now.isoformat()
        record["payload"] = json.dumps(env.payload, default=str)[:PAYLOAD_KEEP]
        if spec.deadline is not None and age >= spec.deadline and not record["alerted"]:
            await publish_alert(self.js, self.flow.name, "deadline", "firing", clock=self.clock, key=wait_key,
                                since=record["since"], deadline_at=record["deadline_at"], checks=record["checks"])
            record["alerted"] = True
        delay = spec.every[min(record["checks"] - 1, len(spec.every) - 1)]
        record["next_check"] = (now + timedelta(seconds=delay)).isoformat()
        await self.kv.put(key, json.dumps(record).encode())
        log.info("waiting", delay_s=delay, checks=record["checks"], **fields)
        self.waiting += 1
        await msg.nak(delay=delay)

    async def forget(self, env: Envelope) -> None:
        """The wait is over (done, or given up): drop its record; resolve its alert if one fired."""
        if env.wait_key is None:
            return
        key = pending_key(self.flow.name, env.wait_key)
        try:
            record = await self._load(key)
            if record is None:
                return
            await self.kv.delete(key)
            if record.get("alerted"):
                await publish_alert(self.js, self.flow.name, "deadline", "resolved", clock=self.clock, key=env.wait_key,
                                    since=record["since"], checks=record["checks"])
        except Exception as exc:  # a stale record is only a display problem
            log.warning("pending_record_not_cleared", flow=self.flow.name, wait_key=env.wait_key, error=repr(exc))
