"""engine/nats_client.HubJetStream's `publish_async` against a real nats-server: what nats-py's gave
(acks with their sequence, duplicates flagged, no responders as an error, a bound on pending
publishes), at about half the CPU per publish (bench/hot_path.py, pass-through)."""

from __future__ import annotations

import asyncio
import os
import signal

import nats.js.errors
import pytest
from nats.js.api import StreamConfig

from engine.embedded_nats import EmbeddedNats
from engine.errors import BrokerUnavailable, classify
from engine.nats_client import HubJetStream, connect

NO_ANSWER = 20.0


@pytest.fixture
async def hub_js(nats_url: str):
    nc = await connect(servers=[nats_url])
    js = nc.jetstream(timeout=NO_ANSWER)
    assert isinstance(js, HubJetStream)
    yield js
    await nc.close()


async def test_acks_carry_their_sequence_and_a_repeat_is_flagged_duplicate(hub_js, unique: str) -> None:
    await hub_js.add_stream(StreamConfig(name=f"S{unique}", subjects=[f"{unique}.>"]))
    futures = [await hub_js.publish_async(f"{unique}.x", b"%d" % i, headers={"Nats-Msg-Id": f"m{i % 5}"})
               for i in range(10)]
    acks = await asyncio.wait_for(asyncio.gather(*futures), NO_ANSWER)
    assert [a.seq for a in acks[:5]] == [1, 2, 3, 4, 5] and not any(a.duplicate for a in acks[:5])
    assert all(a.duplicate for a in acks[5:]) and all(a.stream == f"S{unique}" for a in acks)
    await asyncio.wait_for(hub_js.publish_async_completed(), NO_ANSWER)
    assert hub_js.publish_async_pending() == 0


async def test_a_subject_no_stream_captures_fails_at_once_as_the_brokers_fault(hub_js, unique: str) -> None:
    future = await hub_js.publish_async(f"{unique}.nowhere", b"x")
    with pytest.raises(nats.js.errors.NoStreamResponseError) as raised:
        await asyncio.wait_for(future, NO_ANSWER)
    assert isinstance(classify(raised.value), BrokerUnavailable)


async def test_pending_publishes_are_bounded_and_the_room_comes_back(tmp_path) -> None:
    """A frozen server answers nothing: past `publish_async_max_pending` a publish waits, and gives up
    after `wait_stall` (TooManyStalledMsgsError); once the server runs again every ack arrives."""
    with EmbeddedNats(data_dir=tmp_path / "js") as server:
        nc = await connect(servers=[server.url])
        try:
            js = nc.jetstream(timeout=NO_ANSWER, publish_async_max_pending=3)
            await js.add_stream(StreamConfig(name="B", subjects=["b.>"]))
            os.kill(server.pid, signal.SIGSTOP)
            try:
                futures = [await js.publish_async("b.x", b"%d" % i) for i in range(3)]
                with pytest.raises(nats.js.errors.TooManyStalledMsgsError):
                    await js.publish_async("b.x", b"4", wait_stall=0.2)
            finally:
                os.kill(server.pid, signal.SIGCONT)
            acks = await asyncio.wait_for(asyncio.gather(*futures), NO_ANSWER)
            assert [a.seq for a in acks] == [1, 2, 3]
            last = await asyncio.wait_for(await js.publish_async("b.x", b"5", wait_stall=NO_ANSWER), NO_ANSWER)
            assert last.seq == 4 and js.publish_async_pending() == 0
        finally:
            await nc.close()
