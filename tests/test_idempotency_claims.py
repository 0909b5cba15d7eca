"""Claims on idempotency keys against a real KV bucket: what a second runner meets (engine/idempotency.py)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from pathlib import Path

import pytest

from engine.idempotency import QUIET, ClaimLost, HeldElsewhere, IdempotencyStore, lease_over, parse_claim
from engine.clock import ManualClock
from sandbox.http_sink import HttpSink
from tests.helpers import project_from, settled, started_hub, wait_until

LEASE = 60.0


class TestClock(ManualClock):
    """A hand-moved clock whose monotonic reading moves with it (what a copy measures a claim's quiet on)."""

    __test__ = False

    def monotonic(self) -> float:  # type: ignore[override]
        return self.time()


@pytest.fixture
async def runners(js):
    """Two runners' stores on one bucket."""
    stores = [IdempotencyStore(js, 3600, runner_id="runner-a"), IdempotencyStore(js, 3600, runner_id="runner-b")]
    for store in stores:
        await store.start()
    return stores


@pytest.fixture
async def clocked(js):
    """Two runners' stores on one bucket, on one clock the test moves."""
    clock = TestClock(datetime(2026, 12, 6, 9, 0, tzinfo=timezone.utc))
    stores = [IdempotencyStore(js, 3600, runner_id=f"runner-{n}", clock=clock) for n in "ab"]
    for store in stores:
        await store.start()
    return clock, *stores


async def test_a_claim_keeps_another_copy_out_until_the_effect_is_done(runners, unique):
    a, b = runners
    assert await a.claim(unique, "C-1:v1", "m1", LEASE)
    with pytest.raises(HeldElsewhere, match="claimed by message m1 on runner runner-a"):
        await b.claim(unique, "C-1:v1", "m2", LEASE)  # the copy on the other runner waits
    await a.mark_done(unique, "C-1:v1", "m1")
    assert await b.claim(unique, "C-1:v1", "m2", LEASE) is None  # done: the copy is skipped


async def test_a_failed_attempt_gives_the_key_up_for_its_retry_or_a_copy(runners, unique):
    a, b = runners
    revision = await a.claim(unique, "C-2:v1", "m3", LEASE)
    await a.give_up(unique, "C-2:v1", revision)
    assert await b.claim(unique, "C-2:v1", "m4", LEASE)  # the given-up key (a tombstone) is claimed again


async def test_a_redelivery_of_the_same_message_waits_while_its_holder_on_another_runner_lives(runners, unique):
    """JetStream hands m5 to runner b while runner a still works on it (a new consumer leader does):
    b's copy does not take the claim because it names the same message; it waits, and is skipped
    once a marks the effect done."""
    a, b = runners
    revision = await a.claim(unique, "C-3:v1", "m5", LEASE)
    with pytest.raises(HeldElsewhere, match="m5 on runner runner-a"):
        await b.claim(unique, "C-3:v1", "m5", LEASE)
    assert await a.refresh(unique, "C-3:v1", "m5", revision) > revision  # a's keep-alive
    with pytest.raises(HeldElsewhere):
        await b.claim(unique, "C-3:v1", "m5", LEASE)
    await a.mark_done(unique, "C-3:v1", "m5")
    assert await b.claim(unique, "C-3:v1", "m5", LEASE) is None


async def test_the_holders_own_runner_takes_its_leftover_claim_over_at_once(runners, unique):
    """A claim this runner left behind for this message (its give-up did not land) is its own again."""
    a, _ = runners
    first = await a.claim(unique, "C-4:v1", "m6", LEASE)
    again = await a.claim(unique, "C-4:v1", "m6", LEASE)
    assert again and again > first


async def test_a_crashed_holders_claim_is_taken_over_once_its_lease_is_over(clocked, unique):
    """The holder stops refreshing (it died): its claim is taken over once it is older than the lease and
    the copy has seen it unchanged for QUIET of the lease; the old holder then finds it lost."""
    clock, a, b = clocked
    revision = await a.claim(unique, "C-5:v1", "m7", LEASE)
    clock.advance(LEASE)
    with pytest.raises(HeldElsewhere) as waiting:  # old enough, but this copy has seen it for no time yet
        await b.claim(unique, "C-5:v1", "m8", LEASE)
    assert waiting.value.seconds_left == pytest.approx(LEASE * QUIET)
    clock.advance(LEASE * QUIET)
    assert await b.claim(unique, "C-5:v1", "m8", LEASE)
    with pytest.raises(ClaimLost):
        await a.refresh(unique, "C-5:v1", "m7", revision)
    with pytest.raises(HeldElsewhere, match="claimed by message m8"):
        await a.claim(unique, "C-5:v1", "m7", LEASE)


async def test_a_claim_that_aged_through_a_broker_outage_stays_with_a_holder_that_refreshes_it(clocked, unique):
    """The broker was away longer than the lease: the claim's time is old, but its holder refreshes it
    as soon as the broker is back, within QUIET of the lease, so the copy keeps waiting."""
    clock, a, b = clocked
    revision = await a.claim(unique, "C-6:v1", "m9", LEASE)
    clock.advance(3 * LEASE)  # the outage: nobody could write
    with pytest.raises(HeldElsewhere):
        await b.claim(unique, "C-6:v1", "m9", LEASE)
    clock.advance(LEASE * QUIET / 2)
    await a.refresh(unique, "C-6:v1", "m9", revision)  # the holder's keep-alive after its reconnect
    clock.advance(LEASE * QUIET)
    with pytest.raises(HeldElsewhere):
        await b.claim(unique, "C-6:v1", "m9", LEASE)


def test_a_claim_names_its_runner_and_older_claims_still_read():
    """The claim format, and the two-field form of claims written before claims named their runner."""
    assert parse_claim(b"claim 1765011600.250 host:12:abcdef m 1") == (1765011600.25, "host:12:abcdef", "m 1")
    assert parse_claim(b"claim 1765011600.250 m1") == (1765011600.25, "?", "m1")
    assert parse_claim(b"2026-12-06T09:00:00.000+00:00 m1 C-1") is None  # the done mark
    assert lease_over(age=0.0, quiet=0.0, lease=8.0) == 8.0
    assert lease_over(age=8.0, quiet=8.0 * QUIET, lease=8.0) == 0.0


def call_flow(u: str, sink_url: str) -> tuple[str, str]:
    config = f"""
    streams:
      - {{name: IN{u}, subjects: ["{u}.in.>"]}}
    endpoints:
      target: {{adapter: http, base_url: "{sink_url}", path: "/effects"}}
    """
    flow = f"""
    name: {u}
    source: {{subject: {u}.in.x}}
    steps:
      - call: {{endpoint: target, timeout: 30s}}
    limits: {{concurrency: 1, batch: 1, max_in_flight: 2}}   # one message at each of two runners
    """
    return config, flow


async def test_a_message_handed_to_a_second_runner_while_the_first_still_calls_is_called_once(
        tmp_path: Path, nats_url: str, js, unique: str):
    """JetStream hands a message to a second runner while the first is still in its call (as a new
    consumer leader does after a node restart): the target sees one call, the copy is skipped.
    (Before: the copy took the claim over because it named the same message, and called again.)"""
    async with HttpSink() as sink:
        sink.set_delay(60)  # the target holds its answer until recover()
        config, flow = call_flow(unique, sink.url)
        hubs = []
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            hubs.append(await started_hub(project_from(tmp_path / name, config, flow), nats_url))
        try:
            await js.publish(f"{unique}.in.x", b'{"n": 1}', headers={"ce-id": "m1"})
            await sink.wait_for(1)
            [first] = [h for h in hubs if h.runners[unique].feed.held]
            [second] = [h for h in hubs if h is not first]
            [held] = first.runners[unique].feed.held.values()
            # the server takes it back and hands it out again, to the other runner (the first knows nothing of it)
            await first.nc.publish(held.reply, b"-NAK")

            async def copy_met_the_claim() -> bool:  # it waits on the claim, or (before) called again
                return sink.count >= 2 or second.idempotency.watched() > 0

            await wait_until(copy_met_the_claim)
            sink.recover()
            await wait_until(lambda: settled(js, f"IN{unique}", unique), timeout=30)
        finally:
            for hub in hubs:
                await hub.stop()
    assert sink.count == 1 and sink.applied == {"m1": 1}
    assert second.runners[unique].stats.skipped == 1
