"""Claims sent ahead for buffered messages (engine/executor.py `_claim_ahead`), against the real server:
copies still claim once, and a message handed back unstarted leaves no claim behind."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nats.js.errors import KeyNotFoundError

from engine.idempotency import BUCKET, IdempotencyStore
from sandbox.http_sink import HttpSink
from tests.helpers import project_from, settled, started_hub, wait_until


def call_flow(u: str, sink_url: str, concurrency: int) -> tuple[str, str]:
    config = f"""
    streams:
      - {{name: IN{u}, subjects: ["{u}.in.>"]}}
    endpoints:
      target: {{adapter: http, base_url: "{sink_url}", path: "/effects"}}
    """
    flow = f"""
    name: {u}
    source: {{subject: {u}.in.x}}
    ack_wait: 120s   # a claim left behind would keep its key busy far longer than the test waits
    steps:
      - call: {{endpoint: target, timeout: 60s}}
    limits: {{concurrency: {concurrency}, batch: 16, max_in_flight: 16}}
    """
    return config, flow


async def claimed(js, flow: str, key: str) -> bool:
    try:
        entry = await (await js.key_value(BUCKET)).get(IdempotencyStore.kv_key(flow, key))
    except KeyNotFoundError:
        return False
    return entry.value is not None and entry.value.startswith(b"claim")


async def test_copies_waiting_in_the_buffer_are_called_once(tmp_path: Path, nats_url: str, js, unique: str):
    async with HttpSink() as sink:
        sink.set_delay(60)  # the first calls hold their workers while the rest waits in the buffer
        config, flow = call_flow(unique, sink.url, concurrency=2)
        hub = await started_hub(project_from(tmp_path, config, flow), nats_url)
        try:
            for copy in range(3):
                for n in range(4):
                    await js.publish(f"{unique}.in.x", b'{"n": %d}' % n, headers={"ce-id": f"m{n}"})
            await sink.wait_for(1)
            sink.recover()
            await wait_until(lambda: settled(js, f"IN{unique}", unique), timeout=30)
        finally:
            await hub.stop()
    assert sink.applied == {f"m{n}": 1 for n in range(4)}
    assert hub.runners[unique].stats.skipped == 8


async def test_a_message_claimed_ahead_and_handed_back_on_stop_leaves_no_claim(
        tmp_path: Path, nats_url: str, js, unique: str):
    async with HttpSink() as sink:
        sink.set_delay(60)
        config, flow = call_flow(unique, sink.url, concurrency=1)
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        await js.add_stream(name=f"IN{unique}", subjects=[f"{unique}.in.>"])
        for n in range(4):  # there before the flow starts: its first pull hands all four over at once
            await js.publish(f"{unique}.in.x", b'{"n": %d}' % n, headers={"ce-id": f"m{n}"})
        first = await started_hub(project_from(tmp_path / "a", config, flow), nats_url)
        try:
            [calling] = [r.headers["Idempotency-Key"] for r in await sink.wait_for(1)]  # the others: buffered
            others = [f"m{n}" for n in range(4) if f"m{n}" != calling]

            async def claimed_ahead() -> bool:
                return all([await claimed(js, unique, key) for key in others])

            await wait_until(claimed_ahead)
            stopping = asyncio.create_task(first.stop())
            await wait_until(lambda: _empty(first.runners[unique].feed.buffer))
            sink.recover()
            await stopping
        except BaseException:
            await first.stop()
            raise
        assert not any([await claimed(js, unique, key) for key in others])
        second = await started_hub(project_from(tmp_path / "b", config, flow), nats_url)
        try:
            await wait_until(lambda: settled(js, f"IN{unique}", unique), timeout=30)
        finally:
            await second.stop()
    assert sink.applied == {f"m{n}": 1 for n in range(4)}


async def _empty(buffer) -> bool:
    return not buffer


async def test_with_one_worker_a_copy_behind_its_message_does_not_block_it(
        tmp_path: Path, nats_url: str, js, unique: str):
    """Two copies arrive in one pull and the flow has one worker: the claim sent ahead for the copy in
    the buffer must not make the worker's own message wait for that copy, which only the same worker
    could run (a flow stuck for good). The first copy is called, the second skipped."""
    async with HttpSink() as sink:
        config, flow = call_flow(unique, sink.url, concurrency=1)
        await js.add_stream(name=f"IN{unique}", subjects=[f"{unique}.in.x"])
        for copy in range(2):  # there before the flow starts: its first pull hands both over at once
            for n in range(3):
                await js.publish(f"{unique}.in.x", b'{"n": %d}' % n, headers={"ce-id": f"m{n}"})
        hub = await started_hub(project_from(tmp_path, config, flow), nats_url)
        try:
            await wait_until(lambda: settled(js, f"IN{unique}", unique), timeout=30)
        finally:
            await hub.stop()
    assert sink.applied == {f"m{n}": 1 for n in range(3)}
    assert hub.runners[unique].stats.skipped == 3
