"""Demo section: the hub on a local 3-node NATS cluster rides through the death of a node.

`await section_cluster(check)` starts three nats-servers (sandbox/cluster.py), a runner with one
pass-through flow whose streams and the hub's own state are kept at three replicas, kills the node
leading the flow's stream in the middle of the traffic, and checks that every message came through
once while a new leader was elected. About 15 seconds; stops everything it started.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Callable

import nats

from engine.runtime import Hub
from engine.validation import load_project
from sandbox.cluster import LocalCluster

MESSAGES = 200


async def _publish(js: Any, start: int, n: int) -> None:
    """As a producer should: a publish refused during an election is sent again under the same id."""
    for i in range(start, start + n):
        while True:
            try:
                await js.publish("demo.cluster.in", json.dumps({"n": i}).encode(), headers={"Nats-Msg-Id": f"d{i}"},
                                 timeout=2)
                break
            except Exception:
                await asyncio.sleep(0.2)


async def _leader(js: Any, stream: str) -> str | None:
    """The stream's leader once one is elected (None if none within 30 s)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            leader = (await js.stream_info(stream)).cluster.leader
            if leader:
                return leader
        except Exception:
            pass
        await asyncio.sleep(0.2)
    return None


async def section_cluster(check: Callable[[bool, str], None], number: int = 16) -> None:
    print(f"\n  {number}. Scale-out: a 3-node NATS cluster loses a node mid-traffic")
    work = Path(tempfile.mkdtemp(prefix="demo-cluster-"))
    (work / "config.yaml").write_text(textwrap.dedent("""
        streams:
          - {name: DEMO_IN, subjects: ["demo.cluster.in"]}
          - {name: DEMO_OUT, subjects: ["demo.cluster.out"]}
        """))
    (work / "flow.yaml").write_text(textwrap.dedent("""
        name: demo-cluster
        source: {subject: demo.cluster.in}
        steps:
          - publish: demo.cluster.out
        """))
    try:
        await _run(work, check)
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def _run(work: Path, check: Callable[[bool, str], None]) -> None:
    with LocalCluster(3, base_dir=work / "nodes") as cluster:
        print(f"   nodes {', '.join(n.name + ' ' + n.url for n in cluster.nodes)}")
        hub = Hub(load_project(work / "config.yaml", [work / "flow.yaml"]), servers=cluster.urls)
        await hub.start()
        nc = await nats.connect(cluster.urls)
        js = nc.jetstream(timeout=10)
        try:
            info = await js.stream_info("DEMO_IN")
            replicas = [(await js.stream_info(s)).config.num_replicas for s in ("DEMO_IN", "DLQ", "KV_hub_idempotency")]
            print(f"   replicas: DEMO_IN {replicas[0]}, DLQ {replicas[1]}, hub_idempotency {replicas[2]}")
            await _publish(js, 0, MESSAGES // 2)
            leader = cluster.node(info.cluster.leader)
            leader.kill()
            killed = time.monotonic()
            print(f"   SIGKILL {leader.name}, the leader of DEMO_IN, after {MESSAGES // 2} messages")
            await _publish(js, MESSAGES // 2, MESSAGES // 2)
            deadline, out = time.monotonic() + 60, 0
            while time.monotonic() < deadline:
                try:  # the count is asked of DEMO_OUT's leader: during an election nobody answers for a moment
                    out = (await js.stream_info("DEMO_OUT")).state.messages
                except Exception:
                    pass
                if out >= MESSAGES:
                    break
                await asyncio.sleep(0.2)  # no event says "stored": the stream's count is polled
            took = time.monotonic() - killed
            new_leader = await _leader(js, "DEMO_IN")
            print(f"   {out} of {MESSAGES} through, {took:.1f} s after the kill; DEMO_IN now led by {new_leader}")
            check(replicas == [3, 3, 3], "the flow's stream and the hub's own state are kept at three replicas")
            check(out == MESSAGES and new_leader != leader.name,
                  "every message came through once while the cluster elected a new leader")
        finally:
            await nc.close()
            await hub.stop()
