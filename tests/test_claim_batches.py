"""Claims, refreshes and done marks sent in batches against a real KV bucket (engine/claim_stage.py,
engine/kv_pipe.py): each message of a batch gets what it would get alone."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from engine.claim_stage import ClaimStage
from engine.confirm import until_confirmed
from engine.errors import BrokerUnavailable, is_broker_fault
from engine.idempotency import ClaimLost, HeldElsewhere, IdempotencyStore
from engine.nats_client import connect

LEASE = 60.0


@pytest.fixture
async def stores(js):
    """Two runners' stores on one bucket."""
    pair = [IdempotencyStore(js, 3600, runner_id="runner-a"), IdempotencyStore(js, 3600, runner_id="runner-b")]
    for store in pair:
        await store.start()
    return pair


async def test_a_batch_of_claims_meets_done_marks_claims_held_elsewhere_and_free_keys(stores, unique):
    """One batch: free keys are claimed, a done key is skipped (None), a key another runner holds is
    HeldElsewhere, a key given up earlier (a tombstone) is claimed again."""
    a, b = stores
    await b.claim(unique, "done", "m0", LEASE)
    await b.mark_done(unique, "done", "m0")
    await b.claim(unique, "held", "m1", LEASE)
    given_up = await b.claim(unique, "tomb", "m2", LEASE)
    await b.give_up(unique, "tomb", given_up)
    results = await a.claim_many(unique, [("free-1", "x1"), ("done", "x2"), ("held", "x3"), ("free-2", "x4"),
                                          ("tomb", "x5")], LEASE)
    assert isinstance(results[0], int) and isinstance(results[3], int) and isinstance(results[4], int)
    assert results[1] is None
    assert isinstance(results[2], HeldElsewhere) and results[2].holder == "m1" and results[2].runner == "runner-b"
    with pytest.raises(HeldElsewhere):  # what a batch claimed is held: a copy elsewhere waits
        await b.claim(unique, "free-1", "y1", LEASE)


async def test_claims_asked_in_one_tick_share_a_batch_and_each_gets_its_own_outcome(stores, unique):
    """Workers claiming at once through the stage: the same outcomes as claims sent alone."""
    a, b = stores
    await b.claim(unique, "held", "m1", LEASE)
    stage = ClaimStage(a, unique, LEASE)
    got = await asyncio.gather(stage.claim("k1", "x1"), stage.claim("held", "x2"), stage.claim("k2", "x3"),
                               return_exceptions=True)
    assert isinstance(got[0], int) and isinstance(got[2], int) and isinstance(got[1], HeldElsewhere)
    assert await stage.claim("k1", "x1") > got[0]  # its own leftover (a lost ack): taken over at once
    await stage.close()


async def test_a_refresh_batch_reports_the_claim_that_was_taken_over(stores, unique):
    """Refreshing three claims where one was taken over meanwhile: two new revisions and ClaimLost."""
    a, b = stores
    revs = [await a.claim(unique, k, m, LEASE) for k, m in (("r1", "m1"), ("r2", "m2"), ("r3", "m3"))]
    await b._replace(b.kv_key(unique, "r2"), "other", revs[1])  # b judged a dead and took r2 over
    results = await a.refresh_many(unique, [("r1", "m1", revs[0]), ("r2", "m2", revs[1]), ("r3", "m3", revs[2])])
    assert isinstance(results[0], int) and results[0] > revs[0]
    assert isinstance(results[1], ClaimLost)
    assert isinstance(results[2], int) and results[2] > revs[2]


async def test_done_marks_of_concurrent_workers_are_confirmed_each(stores, unique):
    """Marks put at once share a batch; each, once confirmed, turns its claim into the done mark."""
    a, b = stores
    for n in range(5):
        await a.claim(unique, f"k{n}", f"m{n}", LEASE)
    await asyncio.gather(*(a.mark_done(unique, f"k{n}", f"m{n}") for n in range(5)))
    assert await b.claim_many(unique, [(f"k{n}", f"y{n}") for n in range(5)], LEASE) == [None] * 5


async def test_a_mark_batch_meeting_a_broker_that_is_down_confirms_nothing(broker, unique):
    """The server is gone: the batched marks are not confirmed (broker faults, waited out), and a
    holder that waits them out with a bound gives up with BrokerUnavailable: nothing would be acked."""
    nc = await connect(servers=[broker.url], max_reconnect_attempts=-1, reconnect_time_wait=0.05)
    try:
        store = IdempotencyStore(nc.jetstream(timeout=0.5), 3600, runner_id="runner-a")
        await store.start()
        await store.claim(unique, "k1", "m1", LEASE)
        await store.claim(unique, "k2", "m2", LEASE)
        broker.stop()
        acked = []

        async def settle(key: str, msg_id: str) -> None:
            await until_confirmed(lambda: store.mark_done(unique, key, msg_id), what="done mark",
                                  alive=lambda: not nc.is_closed, log=_Quiet(), within=1.0)
            acked.append(msg_id)  # what the runner would ack now

        results = await asyncio.gather(settle("k1", "m1"), settle("k2", "m2"), return_exceptions=True)
        assert all(isinstance(r, BrokerUnavailable) for r in results) and acked == []
        faults = await store.refresh_many(unique, [("k1", "m1", 1)])
        assert is_broker_fault(faults[0])
    finally:
        with contextlib.suppress(ConnectionError):  # nats-py's close while it reconnects to nothing
            await nc.close()


class _Quiet:
    def warning(self, *args, **kwargs) -> None:
        pass

    error = warning
