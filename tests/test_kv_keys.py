"""Listing a bucket's keys (engine/kv.stored_keys), as `runner.py pending` and `runner.py status` do:
a key just written is always there, the listing keeps to a prefix, a deleted key's record is not shown."""

from __future__ import annotations

import asyncio
import json

from engine.kv import bucket, stored_keys
from engine.waiting import BUCKET, pending_records


async def test_a_one_key_bucket_lists_its_key_every_time_while_it_is_rewritten(js, unique):
    """A wait's record is rewritten at every check. nats-py's kv.keys() missed such a key about once in
    250 listings here (and a pending wait vanished from the list in a test run); subject counts never do."""
    kv = await bucket(js, unique)
    await kv.put("flow.K-1", b"0")
    listings: list[list[str]] = []

    async def rewrite() -> None:
        n = 0
        while len(listings) < 300:
            n += 1
            await kv.put("flow.K-1", str(n).encode())
            await asyncio.sleep(0)

    writer = asyncio.create_task(rewrite())
    while len(listings) < 300:
        listings.append(await stored_keys(js, unique))
    await writer
    assert all(keys == ["flow.K-1"] for keys in listings)


async def test_the_listing_keeps_to_a_prefix_and_an_empty_bucket_lists_nothing(js, unique):
    kv = await bucket(js, unique)
    assert await stored_keys(js, unique) == []
    for key in ("a.1", "a.2", "ab.1", "b.1"):
        await kv.put(key, b"{}")
    assert await stored_keys(js, unique, "a.") == ["a.1", "a.2"]
    assert await stored_keys(js, unique) == ["a.1", "a.2", "ab.1", "b.1"]


async def test_pending_records_show_one_flows_live_waits_and_not_a_finished_one(broker_js):
    kv = await bucket(broker_js, BUCKET)
    for key, since in (("track.K-2", "2027-01-02"), ("track.K-1", "2027-01-01"), ("other.K-9", "2027-01-01")):
        await kv.put(key, json.dumps({"key": key, "since": since}).encode())
    await kv.delete("track.K-2")
    assert [r["key"] for r in await pending_records(broker_js, "track")] == ["track.K-1"]
    assert [r["key"] for r in await pending_records(broker_js)] == ["other.K-9", "track.K-1"]


async def test_a_bucket_past_one_answers_subject_limit_is_listed_whole(js, unique):
    """The server names at most 100,000 subjects per answer; the listing pages on."""
    from engine.kv_pipe import kv_writes

    kv = await bucket(js, unique)
    n = 100_050
    for start in range(0, n, 2_000):
        results = await kv_writes(js, kv, [(f"w.{i:06d}", b"{}", None) for i in range(start, min(start + 2_000, n))])
        assert all(isinstance(r, int) for r in results)
    keys = await stored_keys(js, unique)
    assert len(keys) == n and keys[0] == "w.000000" and keys[-1] == f"w.{n - 1:06d}"
