"""Claims on idempotency keys against a real KV bucket: what a second runner meets (engine/idempotency.py)."""

from __future__ import annotations

import pytest

from engine.idempotency import HeldElsewhere, IdempotencyStore

LEASE = 60.0


@pytest.fixture
async def runners(js):
    """Two runners' stores on one bucket."""
    stores = [IdempotencyStore(js, 3600), IdempotencyStore(js, 3600)]
    for store in stores:
        await store.start()
    return stores


async def test_a_claim_keeps_another_copy_out_until_the_effect_is_done(runners, unique):
    a, b = runners
    assert await a.claim(unique, "C-1:v1", "m1", LEASE)
    with pytest.raises(HeldElsewhere, match="claimed by message m1"):
        await b.claim(unique, "C-1:v1", "m2", LEASE)  # the copy on the other runner waits
    await a.mark_done(unique, "C-1:v1", "m1")
    assert await b.claim(unique, "C-1:v1", "m2", LEASE) is None  # done: the copy is skipped


async def test_a_failed_attempt_gives_the_key_up_for_its_retry_or_a_copy(runners, unique):
    a, b = runners
    revision = await a.claim(unique, "C-2:v1", "m3", LEASE)
    await a.give_up(unique, "C-2:v1", revision)
    assert await b.claim(unique, "C-2:v1", "m4", LEASE)
    assert await a.claim(unique, "C-2:v1", "m4", LEASE)  # m4 redelivered to the other runner: its own claim


async def test_a_crashed_holders_claim_is_taken_over_once_its_lease_is_over(runners, unique):
    a, b = runners
    assert await a.claim(unique, "C-3:v1", "m5", LEASE)  # and then the runner dies
    with pytest.raises(HeldElsewhere):
        await b.claim(unique, "C-3:v1", "m6", LEASE)
    assert await b.claim(unique, "C-3:v1", "m6", lease=0.0)  # the same claim seen after its lease
    with pytest.raises(HeldElsewhere, match="claimed by message m6"):
        await a.claim(unique, "C-3:v1", "m5", LEASE)
