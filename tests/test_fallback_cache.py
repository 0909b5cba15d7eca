"""The fallback cache's copy in the runner (engine/fallback.py) against the shared KV of a real
nats-server: two runners, each with its own copy, one bucket."""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import pytest_asyncio

from engine.errors import TargetUnavailable
from engine.fallback import BUCKET, FallbackCache
from engine.spec import Fallback

SPEC = Fallback(key="{postcode}", fresh="1s")
ASK = {"postcode": "75001"}


@pytest_asyncio.fixture
async def caches(broker: Any) -> Any:
    nc = await nats.connect(broker.url)
    pair = [FallbackCache(nc.jetstream()), FallbackCache(nc.jetstream())]
    for cache in pair:
        await cache.start()
    yield pair
    await nc.close()


async def test_a_fresh_copy_answers_and_a_newer_answer_elsewhere_is_taken_once_it_is_not_fresh(caches: Any) -> None:
    """Runner A answers from its own fresh copy even after runner B stored a newer quote; once A's copy
    is older than `fresh`, A asks the KV and answers B's quote."""
    a, b = caches
    await a.remember("powersales", SPEC, ASK, {"quote": "A"})
    await asyncio.sleep(0.5)
    await b.remember("powersales", SPEC, ASK, {"quote": "B"})
    assert (await a.fresh_answer("powersales", SPEC, ASK))["quote"] == "A"   # its copy: fresh, not the newest
    await asyncio.sleep(0.7)                                                   # A's copy 1.2 s old, B's 0.7 s
    answer = await a.fresh_answer("powersales", SPEC, ASK)
    assert answer["quote"] == "B" and answer["cached"] is True
    await asyncio.sleep(0.5)                                                   # both older than fresh
    assert await a.fresh_answer("powersales", SPEC, ASK) is None


async def test_an_answer_another_runner_stored_is_served_fresh_here_and_stale_when_the_target_is_down(
        caches: Any) -> None:
    a, b = caches
    await b.remember("powersales", SPEC, ASK, {"quote": "B"})
    assert (await a.fresh_answer("powersales", SPEC, ASK))["quote"] == "B"
    stale = await a.stale_answer("powersales", SPEC, ASK, TargetUnavailable("down"))
    assert stale["quote"] == "B" and stale["stale"] is True
    assert (await (await a.js.key_value(BUCKET)).status()).values == 1


async def test_lookups_of_one_key_share_the_call_in_flight_and_its_failure(caches: Any) -> None:
    """Ten lookups of one key while its call is running make one call and get its answer; a failing
    call fails each of its waiters; a refresh (a confirmation) calls on its own."""
    a, _ = caches
    calls, release = [], asyncio.Event()

    async def call(answer: Any) -> Any:
        calls.append(answer)
        await release.wait()
        if isinstance(answer, Exception):
            raise answer
        return answer

    lookups = [asyncio.create_task(a.once("powersales", SPEC, ASK, refresh=False, call=lambda: call({"quote": 1})))
               for _ in range(10)]
    confirm = asyncio.create_task(a.once("powersales", SPEC, ASK, refresh=True, call=lambda: call({"quote": 2})))
    await asyncio.sleep(0)  # let them all start
    release.set()
    assert [await t for t in lookups] == [{"quote": 1}] * 10 and await confirm == {"quote": 2}
    assert calls == [{"quote": 1}, {"quote": 2}]
    release.clear()
    failing = [asyncio.create_task(a.once("powersales", SPEC, ASK, refresh=False,
                                          call=lambda: call(TargetUnavailable("down")))) for _ in range(3)]
    await asyncio.sleep(0)
    release.set()
    outcomes = await asyncio.gather(*failing, return_exceptions=True)
    assert all(isinstance(o, TargetUnavailable) for o in outcomes) and len(calls) == 3
