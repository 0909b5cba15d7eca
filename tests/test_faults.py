"""Faults a runner must survive without losing or duplicating anything."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import nats
import pytest

from engine.embedded_nats import EmbeddedNats
from engine.streams import ensure_streams
from tests.helpers import project_from, started_hub, wait_until


@pytest.fixture
def own_server(tmp_path: Path):
    """A broker of this test's own, on a store that survives a kill."""
    server = EmbeddedNats(data_dir=tmp_path / "store").start()
    yield server
    server.stop()


async def test_broker_killed_mid_batch_loses_and_duplicates_nothing(tmp_path: Path, own_server: EmbeddedNats):
    """The source is acked only after its outputs are confirmed: a broker SIGKILLed while batches
    are in flight, then restarted, ends with every output stored exactly once and every input acked."""
    n = 20_000
    project = project_from(tmp_path, """
    nats: {publish_timeout: 2s}
    streams:
      - {name: IN, subjects: ["in.>"]}
      - {name: OUT, subjects: ["out.>"]}
    """, """
    name: relay
    source: {subject: in.x}
    steps:
      - publish: out.x
    ack_wait: 5s
    """)
    nc = await nats.connect(own_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    js = nc.jetstream(timeout=10)
    hub = None
    try:
        await ensure_streams(js, project.config)  # the backlog first, then the runner
        for start in range(0, n, 2000):
            futs = [await js.publish_async("in.x", json.dumps({"i": i}).encode(), headers={"ce-id": f"m{i}"})
                    for i in range(start, start + 2000)]
            await asyncio.gather(*futs)
        hub = await started_hub(project, own_server.url)

        async def some_out() -> bool:
            return (await js.stream_info("OUT")).state.messages >= 2_000

        await wait_until(some_out)
        own_server.kill()
        assert (await asyncio.to_thread(lambda: own_server.restart())).url == own_server.url

        async def all_done() -> bool:
            try:
                info = await js.consumer_info("IN", "relay")
            except Exception:
                return False
            return info.num_pending == 0 and info.num_ack_pending == 0

        await wait_until(all_done, timeout=90)
        assert (await js.stream_info("OUT")).state.messages == n  # none lost, none twice
        seen = set()
        sub = await js.subscribe("out.x", ordered_consumer=True)
        for _ in range(n):
            msg = await sub.next_msg(timeout=5)
            seen.add(json.loads(msg.data)["i"])
        assert seen == set(range(n))
    finally:
        await nc.close()
        if hub is not None:
            await hub.stop()
