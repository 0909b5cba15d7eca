"""A meter storm against the shipped CRM egress flow (flows/meter-reading-to-crm.yaml): readings on
`meter.reading.received` at a normal rate, then 33x that rate (above the flow's `limits.rate`).
The CRM bridge (sandbox/http_sink.py) must get every reading exactly once, nothing may go to the
DLQ, the backlog must wait in JetStream (not in the CRM), and the CRM must never see more than the
flow's rate plus what the limiter allows by design.

The flow runs as shipped except for `rate: 500/s` -> `rate: 100/s`, so the storm and its drain
take seconds: normal = rate/10 for 1 s, storm = 33 x normal (3.3 x the rate) for 2 s.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from aiohttp import web
from nats.js.errors import NotFoundError

from engine.ratelimit import RateLimiter
from sandbox.http_sink import HttpSink
from tests.helpers import project_from, started_hub, wait_until

ROOT = Path(__file__).resolve().parents[1]
FLOW = "meter-reading-to-crm"
SUBJECT = "meter.reading.received"
RATE = 100                      # per second, in place of the shipped 500/s
NORMAL = RATE / 10              # readings per second before the storm
STORM = 33 * NORMAL             # the storm: 33x the normal rate, 3.3x what the CRM may take
NORMAL_FOR, STORM_FOR = 1.0, 2.0
METERS = 50
T0 = datetime(2026, 11, 2, tzinfo=timezone.utc)

CONFIG = """
nats: {urls: []}
streams:
  - {name: METER, subjects: ["meter.>"], max_age: 1d}
endpoints:
  crm_readings:
    adapter: http
    base_url: %s
    path: /readings
    timeout: 5s
dlq: {stream: DLQ, max_age: 1d}
"""


def flow_text() -> str:
    """The shipped flow, with only its rate lowered."""
    text = (ROOT / "flows" / f"{FLOW}.yaml").read_text()
    assert "rate: 500/s" in text, "the shipped flow's rate changed: update this test"
    return text.replace("rate: 500/s", f"rate: {RATE}/s")


class TimedSink(HttpSink):
    """The CRM bridge, also noting when each request arrived (time.monotonic, the limiter's clock)."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived_at: list[float] = []

    async def _note(self, request: web.Request) -> Any:
        self.arrived_at.append(time.monotonic())
        return await super()._note(request)


def reading(i: int) -> dict[str, Any]:
    """The i-th reading: METERS meters, one quarter-hour each per round, so each is unique."""
    at = T0 + timedelta(minutes=15 * (i // METERS + 1))
    return {"meter_id": f"MTR{i % METERS:05d}", "site_id": f"SITE{i % METERS:05d}", "register": "1-0:1.8.0",
            "read_at": at.strftime("%Y-%m-%dT%H:%M:%SZ"), "value": round(1.5 + i * 0.001, 3), "unit": "kWh",
            "quality": "actual", "source": "vendor1/pull"}


def external_id(r: dict[str, Any]) -> str:
    return f"{r['meter_id']}|{r['register']}|{r['read_at']}"


async def publish_at(js: Any, rate: float, seconds: float, first: int) -> int:
    """Publish readings first.. at `rate` per second for `seconds` (paced against the clock, so a
    slow publish is caught up, not lost); each has its own Nats-Msg-Id. Returns how many."""
    count = int(rate * seconds)
    start = time.monotonic()
    for n in range(count):
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        i = first + n
        await js.publish(SUBJECT, json.dumps(reading(i)).encode(), headers={"Nats-Msg-Id": f"storm-{i}"})
    return count


def busiest_second(times: list[float]) -> int:
    """Most arrivals in any window [t, t + 1 s)."""
    times = sorted(times)
    best = lo = 0
    for hi, t in enumerate(times):
        while times[lo] <= t - 1.0:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


async def dead_letters(js: Any) -> int:
    try:
        info = await js.stream_info("DLQ", subjects_filter=f"dlq.{FLOW}")
    except NotFoundError:
        return 0
    return sum((info.state.subjects or {}).values())


async def test_a_storm_waits_in_jetstream_and_reaches_the_crm_once_each_at_the_flows_rate(
        tmp_path: Path, broker: Any, broker_js: Any) -> None:
    """33x the normal rate: every reading reaches the CRM exactly once, none is dead-lettered, the
    backlog waits in JetStream, and no second of CRM traffic exceeds rate + the limiter's allowance."""
    js = broker_js
    async with TimedSink() as sink:
        project = project_from(tmp_path, CONFIG % sink.url, flow_text())
        limits = next(lf.flow for lf in project.flows if lf.flow.name == FLOW).limits
        assert limits.rate == RATE
        hub = await started_hub(project, broker.url)
        samples: list[tuple[float, int, int]] = []  # (time, num_pending, num_ack_pending) of the durable

        async def watch() -> None:
            while True:
                info = await js.consumer_info("METER", FLOW)  # durable named after the flow
                samples.append((time.monotonic(), info.num_pending, info.num_ack_pending))
                await asyncio.sleep(0.05)

        watcher = asyncio.create_task(watch())
        try:
            begun = time.monotonic()
            sent = await publish_at(js, NORMAL, NORMAL_FOR, 0)
            storm_began = time.monotonic()
            sent += await publish_at(js, STORM, STORM_FOR, sent)
            storm_ended = time.monotonic()
            await sink.wait_for_effects(sent, timeout=25)
            drained = time.monotonic()

            async def settled() -> bool:  # every source acked: nothing left for a redelivery
                info = await js.consumer_info("METER", FLOW)
                return info.num_pending == 0 and info.num_ack_pending == 0 and info.ack_floor.stream_seq == sent
            await wait_until(settled, timeout=5)
        finally:
            watcher.cancel()
            await hub.stop()

    # exactly once: one request per reading, each key applied once, nothing else, nothing twice
    readings = [reading(i) for i in range(sent)]
    seen = Counter(r.body["external_id"] for r in sink.received)
    assert seen == Counter(external_id(r) for r in readings), "a reading missing or posted twice"
    assert sink.applied == {f"storm-{i}": 1 for i in range(sent)}
    assert sink.count == sent
    assert await dead_letters(js) == 0

    # The backlog waited in JetStream: stored and not acked, while the CRM got it at its pace.
    # Unacked = num_pending (not yet delivered to a runner) + num_ack_pending (delivered, unacked).
    # With the flow's default max_in_flight (2048, the durable's max_ack_pending) the runner pulls
    # up to 2048 messages ahead into its buffer, so a backlog smaller than that shows as
    # num_ack_pending, num_pending stays ~0; either way JetStream keeps each message until its
    # ack and redelivers it (after ack_wait) should the runner die. Expected peak here: storm in
    # minus egress, (330 - 100)/s x 2 s = 460; half of it, so a slower publisher still passes.
    storm_samples = [(p, a) for t, p, a in samples if storm_began <= t <= drained]
    peak_backlog = max(p + a for p, a in storm_samples)
    peak_pending = max(p for p, _ in storm_samples)
    expected_backlog = (STORM - limits.rate) * STORM_FOR
    assert peak_backlog >= 0.5 * expected_backlog, f"backlog peaked at {peak_backlog}: the test did not storm"

    # The egress rate held. RateLimiter is a token bucket: `capacity` tokens when full (default
    # max(1, rate/10): 10 at 100/s), refilled at `rate`, one per message started, in one bucket
    # per runner shared by the flow's workers. So in any 1 s window it grants at most
    # capacity + rate. The CRM sees a request some time after its grant (idempotency lookup,
    # transform, HTTP); a request granted before the window but arriving inside it is held by a
    # worker at the window's start, and there are `concurrency` workers. Hence, at the CRM, in any
    # 1 s window: at most rate + capacity + concurrency (100 + 10 + 8), with no timing fudge.
    # (The bucket is per runner: two runners of the flow would each start `rate`. An in-process
    # retry of the call takes a token too: the next test.)
    burst = RateLimiter(limits.rate).capacity
    allowed = limits.rate + burst + limits.concurrency
    peak_second = busiest_second(sink.arrived_at)
    storm_time = storm_ended - storm_began
    print(f"\nstorm: {sent} readings ({sent - int(NORMAL * NORMAL_FOR)} in {storm_time:.2f} s = "
          f"{(sent - int(NORMAL * NORMAL_FOR)) / storm_time:.0f}/s); peak backlog {peak_backlog} "
          f"(num_pending peak {peak_pending}); busiest CRM second {peak_second} (allowed {allowed:.0f}); "
          f"drained {drained - storm_ended:.2f} s after the storm, {drained - begun:.2f} s in all")
    assert peak_second <= allowed, f"the CRM saw {peak_second} requests in one second, over {allowed}"
    # and the storm did push the limiter (else the bound above proves nothing)
    assert peak_second >= 0.8 * limits.rate, f"busiest second {peak_second}: the limiter was never the bound"


async def test_retries_while_the_crm_fails_stay_within_the_flows_rate(tmp_path: Path, broker: Any,
                                                                     broker_js: Any) -> None:
    """The CRM answers 503 to its first 150 requests: each reading is tried three times in-process
    (retry: [10ms, 10ms]), and the retries take tokens too, so no second of CRM traffic exceeds the
    flow's rate plus the limiter's allowance; every reading then gets through once."""
    js = broker_js
    async with TimedSink() as sink:
        sink.fail_next(150, status=503, retry_after="0")
        text = flow_text().replace("retry: [200ms, 1s]", "retry: [10ms, 10ms]")
        config = (CONFIG % sink.url).replace("    timeout: 5s", "    timeout: 5s\n    circuit_breaker: {failures: 1000, window: 10s, reset: 1s}")
        project = project_from(tmp_path, config, text)  # a circuit that stays closed: the retries meet the CRM
        limits = next(lf.flow for lf in project.flows if lf.flow.name == FLOW).limits
        hub = await started_hub(project, broker.url)
        try:
            for i in range(150):
                await js.publish(SUBJECT, json.dumps(reading(i)).encode(), headers={"Nats-Msg-Id": f"retry-{i}"})
            await sink.wait_for_effects(150, timeout=25)
        finally:
            await hub.stop()
    allowed = limits.rate + RateLimiter(limits.rate).capacity + limits.concurrency
    assert sink.count >= 300 and sink.applied == {f"retry-{i}": 1 for i in range(150)}
    assert busiest_second(sink.arrived_at) <= allowed, f"{busiest_second(sink.arrived_at)} > {allowed}"
