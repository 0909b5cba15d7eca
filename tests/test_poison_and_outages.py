"""Poison is not an outage, and an outage ends when the circuit closes (issue 12, items 4 and 6)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from structlog.testing import capture_logs

from tests.helpers import StreamReader, project_from, settled, started_hub, wait_until
from sandbox.fault_targets import PathTarget


def project(tmp: Path, u: str, url: str, breaker: str, on_error: str):
    return project_from(tmp, f"""
    streams:
      - {{name: IN{u}, subjects: ["{u}.in.>"]}}
    endpoints:
      target: {{adapter: http, base_url: "{url}", path: "/effects/{{n}}", timeout: 2s, circuit_breaker: {breaker}}}
    """, f"""
    name: {u}
    source: {{subject: {u}.in.x}}
    steps:
      - call: {{endpoint: target}}
    on_error: {on_error}
    limits: {{concurrency: 4}}
    """)


async def publish(js, u: str, numbers: range) -> None:
    for n in numbers:
        await js.publish(f"{u}.in.x", json.dumps({"n": n}).encode(), headers={"ce-id": f"m{n}"})


async def test_a_message_that_always_fails_next_to_good_ones_reaches_the_dlq_on_its_schedule(
        tmp_path: Path, nats_url: str, js, unique: str):
    """One message whose call always gets the same server fault, among 40 that pass, with a breaker that
    opens on 3 failures: its 3 in-process attempts count once, the successes around it start the count
    again, so the circuit stays closed; it follows its own redeliver schedule to the DLQ with every call
    in its record, and every good message is done once. (Before: its own attempts opened the circuit
    and it waited out outage delays, never reaching the DLQ.)"""
    async with PathTarget(failing={"/effects/7"}) as target:
        hub = await started_hub(project(tmp_path, unique, target.url, "{failures: 3, window: 10s, reset: 500ms}",
                                        "{retry: [10ms, 10ms], redeliver: [100ms, 300ms], jitter: 0}"), nats_url)
        try:
            breaker = hub.breakers.breaker("target", hub.project.endpoints["target"].circuit_breaker)
            states: list[str] = []
            breaker.on_change(states.append)
            dlq = await StreamReader.open(js, f"dlq.{unique}")
            await publish(js, unique, range(41))
            record = (await dlq.wait_for(1))[0]
            effects = await target.wait_for_effects(40)
            h = record.headers
            assert h["ce-id"] == "m7" and h["Hub-Dlq-Error-Class"] == "TargetServerError"
            assert h["Hub-Dlq-Deliveries"] == "3" and h["Hub-Dlq-Attempts"] == "3" and h["Hub-Dlq-Calls"] == "9"
            assert target.calls["m7"] == 9
            assert set(effects) == {f"m{n}" for n in range(41) if n != 7} and set(effects.values()) == {1}
            assert "open" not in states and breaker.state == "closed"
        finally:
            await hub.stop()


async def test_after_an_outage_the_backlog_drains_as_soon_as_the_circuit_closes(
        tmp_path: Path, nats_url: str, js, unique: str):
    """The target is down, the circuit opens, the messages that met it wait parked in the runner (no
    redelivery, nothing counted); the target comes back, one probe closes the circuit, and the backlog
    goes through at once: every message done once, none redelivered, none dead-lettered although the
    schedule alone would have sent them all to the DLQ. (Before: outage waits doubled per delivery and
    ran out in full after the circuit closed.)"""
    n = 60
    async with PathTarget(failing=set()) as target:
        target.down = True
        hub = await started_hub(project(tmp_path, unique, target.url, "{failures: 3, window: 10s, reset: 1s}",
                                        "{retry: [10ms], redeliver: [50ms]}"), nats_url)
        try:
            breaker = hub.breakers.breaker("target", hub.project.endpoints["target"].circuit_breaker)
            opened, closed = asyncio.Event(), asyncio.Event()
            breaker.on_change(lambda s: (opened if s == "open" else closed if s == "closed" else asyncio.Event()).set())
            await publish(js, unique, range(n))
            await asyncio.wait_for(opened.wait(), 15)
            target.down = False
            await asyncio.wait_for(closed.wait(), 15)
            recovered = time.monotonic()
            effects = await target.wait_for_effects(n)
            drained = time.monotonic() - recovered
            await wait_until(lambda: settled(js, f"IN{unique}", unique))
            info = await js.consumer_info(f"IN{unique}", unique)
            runner = hub.runners[unique]
            print(f"\n[outage] {n} messages, {runner.failures.outage_waits} parked, drained {drained:.2f} s "
                  f"after the circuit closed")
            assert set(effects.values()) == {1} and len(effects) == n
            assert info.num_redelivered == 0 and runner.failures.dead_lettered == 0
            assert runner.failures.outage_waits > 0
        finally:
            await hub.stop()


async def test_every_call_attempt_is_one_log_line_even_when_a_retry_succeeds(
        tmp_path: Path, nats_url: str, js, unique: str):
    """A call that fails twice in-process and then succeeds leaves two `call_attempt_failed` lines (time,
    class, text, attempt number, whether it is retried), not silence."""
    async with PathTarget(failing={"/effects/1"}) as target:
        hub = await started_hub(project(tmp_path, unique, target.url, "null",
                                        "{retry: [50ms, 50ms, 50ms], redeliver: [1s]}"), nats_url)
        try:
            with capture_logs() as logs:
                await publish(js, unique, range(1, 2))
                await wait_until(lambda: _calls(target, "m1", 2), timeout=10)
                target.failing.clear()
                await target.wait_for_effects(1)
            attempts = [e for e in logs if e["event"] == "call_attempt_failed"]
            assert [a["attempt"] for a in attempts][:2] == [1, 2]
            assert all(a["error_class"] == "TargetServerError" and a["retried_in_process"] for a in attempts)
            assert all(a["msg_id"] == "m1" and a["flow"] == unique for a in attempts)
        finally:
            await hub.stop()


async def _calls(target: PathTarget, key: str, at_least: int) -> bool:
    return target.calls[key] >= at_least
