"""Liveness on one server: a live runner keeps what it holds past ack_wait (in-progress acks), so the
short default ack_wait that lets a dead runner's messages move on in seconds repeats nothing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from engine.pull_credit import PullCredit
from engine.pull_feed import runner_window
from sandbox.http_sink import HttpSink
from tests.helpers import project_from, settled, started_hub, wait_until


async def test_messages_held_past_ack_wait_by_a_live_runner_are_not_redelivered(tmp_path: Path, nats_url: str, js,
                                                                               unique: str):
    """Calls that take three ack_waits each, one at a time, with more messages waiting behind them in
    the runner's buffer: each reaches the target once and JetStream redelivers none of them."""
    async with HttpSink() as sink:
        sink.set_delay(1.6)  # four times ack_wait
        config = f"""
        streams:
          - {{name: IN{unique}, subjects: ["{unique}.in.>"]}}
        endpoints:
          target: {{adapter: http, base_url: "{sink.url}", path: "/effects/{{n}}", timeout: 5s}}
        """
        flow = f"""
        name: {unique}
        source: {{subject: {unique}.in.x}}
        steps:
          - call: {{endpoint: target}}
        ack_wait: 400ms
        limits: {{concurrency: 1}}
        """
        hub = await started_hub(project_from(tmp_path, config, flow), nats_url)
        try:
            for i in range(3):
                await js.publish(f"{unique}.in.x", json.dumps({"n": i}).encode(), headers={"ce-id": f"m{i}"})
            applied = await sink.wait_for_effects(3, timeout=30)
            await wait_until(lambda: settled(js, f"IN{unique}", unique), timeout=10)
            info = await js.consumer_info(f"IN{unique}", unique)
            assert applied == {"m0": 1, "m1": 1, "m2": 1}
            assert sink.count == 3
            assert info.delivered.consumer_seq == 3  # one delivery each: a second would go to another runner
        finally:
            await hub.stop()


def test_one_runner_never_holds_a_whole_flow():
    """A runner takes at most half of the flow's max_in_flight (flows with calls: four messages per
    worker), so a dead runner's share leaves room for the others while it waits out ack_wait."""
    assert runner_window(2048) == 1024
    assert runner_window(2048, workers=16) == 64
    assert runner_window(100, workers=64) == 50
    assert runner_window(1) == 1
    assert all(runner_window(n, w) <= max(1, n // 2) for n in range(1, 300) for w in (None, 1, 8, 64))


def test_a_request_that_dies_silently_stops_counting_once_it_must_have_expired():
    """Credit of a request its consumer leader took to the grave is written off after its expiry
    (plus grace), even while a younger request keeps delivering; live requests' credit stays."""
    credit = PullCredit(expires=10.0)
    credit.asked(256, now=0.0)                # dies with its leader: no message, no status
    young = credit.asked(64, now=5.0)
    for _ in range(20):
        credit.delivered()                    # the young request delivers
    assert credit.total == 300
    assert credit.expired(now=11.9) == 0      # the old one might still be alive
    assert credit.expired(now=12.1) == 236    # it cannot be: at most the young one's 64 are still owed
    assert credit.total == 64
    credit.closed(young, still_owed=44)       # the young one's 408 at its expiry, owing 44
    credit.expired(now=15.1)                  # nothing open any more: nothing can be owed
    assert credit.total == 0


@given(st.lists(st.tuples(st.sampled_from(["ask", "deliver", "close", "expire", "clear"]),
                          st.integers(0, 300), st.floats(0, 30))))
def test_pull_credit_never_exceeds_what_live_requests_asked_for(ops):
    """Whatever the order of requests, deliveries and statuses, the credit is never negative and,
    after a sweep, never more than the requests still within their expiry asked for."""
    credit, tokens, now = PullCredit(expires=10.0), [], 0.0
    for op, n, dt in ops:
        now += dt
        if op == "ask" and n:
            tokens.append(credit.asked(n, now))
        elif op == "deliver":
            credit.delivered()
        elif op == "close" and tokens:
            credit.closed(tokens[n % len(tokens)], n % 7)
        elif op == "expire":
            credit.expired(now)
            assert credit.total <= sum(b for b, _ in credit._open.values())
        elif op == "clear":
            credit.clear()
        assert credit.total >= 0
