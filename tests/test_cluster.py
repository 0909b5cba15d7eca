"""The hub on a 3-node JetStream cluster: its state is replicated, and it rides through a node's
death or freeze (each test puts the cluster back to three healthy nodes)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import nats
import pytest
from nats.js.api import KeyValueConfig, StreamConfig

from engine.cluster import resolve_replicas
from engine.errors import ConfigError
from engine.kv import bucket
from engine.pull_feed import PULL_EXPIRES
from engine.runtime import Hub
from engine.streams import ensure_streams
from sandbox.cluster import LocalCluster
from sandbox.http_sink import HttpSink
from tests.cluster_fixtures import cluster, cluster_js, healthy_cluster, leader_node, pytestmark  # noqa: F401
from tests.helpers import StreamReader, project_from, settled, wait_until

HUB_STREAMS = ["DLQ", "HUB_SCHEDULE", "HUB_INGRESS", "HUB_ADVISORIES"]
HUB_BUCKETS = ["hub_idempotency", "hub_failures", "hub_breakers", "hub_fallback"]


def pass_through(u: str, replicas: str = "") -> tuple[str, str]:
    config = f"""
    streams:
      - {{name: IN{u}, subjects: ["{u}.in.>"]{replicas}}}
      - {{name: OUT{u}, subjects: ["{u}.out.>"]}}
    """
    flow = f"""
    name: {u}
    source: {{subject: {u}.in.x}}
    steps:
      - publish: {u}.out.x
    """
    return config, flow


def calling(u: str, sink_url: str) -> tuple[str, str]:
    config = f"""
    streams:
      - {{name: IN{u}, subjects: ["{u}.in.>"]}}
    endpoints:
      target: {{adapter: http, base_url: "{sink_url}", path: "/effects/{{n}}",
               circuit_breaker: {{failures: 5, window: 10s, reset: 1s}}}}
    """
    flow = f"""
    name: {u}
    source: {{subject: {u}.in.x}}
    steps:
      - call: {{endpoint: target, timeout: 2s}}
    limits: {{concurrency: 8}}
    """
    return config, flow


async def publish_retrying(js, subject: str, start: int, n: int) -> None:
    """Publish n messages with ids; a publish refused while the stream elects a leader is sent again
    under the same Nats-Msg-Id (JetStream drops a repeat), as a producer in production would."""
    for i in range(start, start + n):
        while True:
            try:
                await js.publish(subject, json.dumps({"n": i}).encode(), headers={"ce-id": f"m{i}"}, timeout=2)
                break
            except Exception:
                await asyncio.sleep(0.2)


async def test_the_hubs_streams_and_buckets_are_kept_at_three_replicas(tmp_path: Path, healthy_cluster, cluster_js,
                                                                       unique: str):
    """Started on a cluster with no replicas in config, the hub keeps its DLQ, schedule, ingress and
    advisory streams, the flow's stream and its KV buckets at three copies (one node may die)."""
    async with HttpSink() as sink:
        config, flow = calling(unique, sink.url)
        hub = Hub(project_from(tmp_path, config, flow), servers=healthy_cluster.urls)
        await hub.start()
        try:
            for stream in [*HUB_STREAMS, f"IN{unique}"]:
                assert (await cluster_js.stream_info(stream)).config.num_replicas == 3, stream
            for name in HUB_BUCKETS:
                assert (await cluster_js.stream_info(f"KV_{name}")).config.num_replicas == 3, name
        finally:
            await hub.stop()


async def test_a_hub_started_with_a_fresh_cluster_still_keeps_three_replicas(tmp_path: Path, unique: str):
    """Connected the moment a new cluster is up (its nodes still gossiping about each other), the hub
    keeps its streams and buckets at three replicas all the same."""
    config, flow = pass_through(unique)
    with LocalCluster(3) as fresh:
        hub = Hub(project_from(tmp_path, config, flow), servers=fresh.urls[:1])
        await hub.start()
        try:
            for stream in [f"IN{unique}", "DLQ", "KV_hub_idempotency"]:
                assert (await hub.js.stream_info(stream)).config.num_replicas == 3, stream
        finally:
            await hub.stop()


async def test_replicas_an_operator_raised_are_never_lowered(tmp_path: Path, healthy_cluster, cluster_js, unique: str):
    """A stream and a bucket an operator made R3 stay R3 when the config asks for one copy, and a
    bucket left at one copy is raised when the config asks for three."""
    await cluster_js.add_stream(StreamConfig(name=f"IN{unique}", subjects=[f"{unique}.in.>"], num_replicas=3))
    await cluster_js.create_key_value(KeyValueConfig(bucket=f"r3{unique}", replicas=3))
    await cluster_js.create_key_value(KeyValueConfig(bucket=f"r1{unique}", replicas=1))
    config, _ = pass_through(unique, replicas=", replicas: 1")
    project = project_from(tmp_path, "\n    nats: {replicas: 1}" + config)
    outcome = await ensure_streams(cluster_js, project.config)
    assert outcome[f"IN{unique}"] == "unchanged"
    assert (await cluster_js.stream_info(f"IN{unique}")).config.num_replicas == 3
    await bucket(cluster_js, f"r3{unique}")
    assert (await cluster_js.stream_info(f"KV_r3{unique}")).config.num_replicas == 3
    resolve_replicas(cluster_js, 3)
    await bucket(cluster_js, f"r1{unique}")
    assert (await cluster_js.stream_info(f"KV_r1{unique}")).config.num_replicas == 3


async def test_three_replicas_on_a_lone_server_is_a_clear_error(tmp_path: Path, js, unique: str):
    """`nats.replicas: 3` against a server that is not in a cluster stops the start with a message
    that says so, instead of a JetStream error per stream."""
    config, _ = pass_through(unique)
    project = project_from(tmp_path, "\n    nats: {replicas: 3}" + config)
    with pytest.raises(ConfigError, match="needs a NATS cluster"):
        await ensure_streams(js, project.config)


async def move_leader_off(js, cluster, stream: str, node) -> None:
    """Ask the stream's leader to step down until another node leads it."""
    while (await leader_node(js, cluster, stream)) is node:
        try:
            await js._nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", b"", timeout=5)
        except Exception:
            pass
        await asyncio.sleep(0.5)


async def new_leader_elected(js, cluster, stream: str, durable: str, old) -> float:
    """When (monotonic) a node other than `old` leads the consumer."""
    while True:
        try:
            info = await js.consumer_info(stream, durable, timeout=0.5)  # unanswered while leaderless
            if info.cluster and info.cluster.leader and info.cluster.leader != old.name:
                return time.monotonic()
        except Exception:
            pass
        await asyncio.sleep(0.05)


async def first_ack_past(js, stream: str, durable: str, seq: int) -> float:
    """When (monotonic) the consumer's ack floor first passed stream sequence `seq` (a server query)."""
    async def past() -> bool:
        try:
            info = await js.consumer_info(stream, durable, timeout=0.5)  # unanswered while leaderless
        except Exception:
            return False
        return info.ack_floor.stream_seq > seq
    await wait_until(past, timeout=60, interval=0.05)
    return time.monotonic()


async def test_a_flow_resumes_as_soon_as_its_consumer_has_a_new_leader(tmp_path: Path, healthy_cluster,
                                                                       cluster_js, unique: str):
    """SIGKILL of the node leading the flow's consumer (the runner is connected elsewhere): its pull
    requests die silently, and the flow goes on within seconds of the new leader's election instead
    of waiting for those requests to expire."""
    config, flow = pass_through(unique)
    project = project_from(tmp_path, config, flow)
    await ensure_streams(cluster_js, project.config)
    out = await StreamReader.open(cluster_js, f"{unique}.out.x")
    hub = Hub(project, servers=healthy_cluster.urls)
    await hub.start()
    await publish_retrying(cluster_js, f"{unique}.in.x", 0, 50)
    await out.wait_for(50)
    leader = await leader_node(cluster_js, healthy_cluster, f"IN{unique}", unique)
    await hub.stop()
    # the outputs' stream led elsewhere: this test is about the consumer, not about publishing through
    # an election (tests/test_cluster_drills.py)
    await move_leader_off(cluster_js, healthy_cluster, f"OUT{unique}", leader)
    hub = Hub(project, servers=[n.url for n in healthy_cluster.nodes if n is not leader])
    await hub.start()
    try:
        leader.kill()
        killed = time.monotonic()
        elected = asyncio.create_task(new_leader_elected(cluster_js, healthy_cluster, f"IN{unique}", unique, leader))
        await publish_retrying(cluster_js, f"{unique}.in.x", 50, 50)
        published = time.monotonic()
        # resumed = the flow acked a message published after the kill (its output is stored before its
        # ack). Not the output stream's reader: its ordered consumer may have lived on the killed node
        # and is recreated only after its missed heartbeats (~10 s), which measured the reader.
        resumed = await first_ack_past(cluster_js, f"IN{unique}", unique, 50)
        await out.wait_for(100, timeout=60)
        ready = max(await elected, published)
        print(f"\n[cluster] consumer leader {leader.name} killed: new leader after {await elected - killed:.1f} s, "
              f"published after {published - killed:.1f} s, flow resumed {resumed - ready:.1f} s after both")
        assert {json.loads(m.data)["n"] for m in out.messages} == set(range(100))
        assert resumed - ready < PULL_EXPIRES / 2, "the flow waited for its dead pull requests to expire"
    finally:
        await hub.stop()


async def test_a_runner_on_a_frozen_node_moves_to_another_within_the_ping_bound(tmp_path: Path, healthy_cluster,
                                                                                cluster_js, unique: str):
    """The node a runner is connected to stops answering (SIGSTOP, sockets open): the runner notices
    within ping_interval x (max_outstanding_pings + 1), reconnects to another node and goes on."""
    config, flow = pass_through(unique)
    project = project_from(tmp_path, config, flow)
    await ensure_streams(cluster_js, project.config)
    hub = Hub(project, servers=healthy_cluster.urls)
    await hub.start()
    frozen = healthy_cluster.node(hub.nc._server_info["server_name"])
    # the test's own publisher and reader stay off the node that freezes
    nc = await nats.connect([n.url for n in healthy_cluster.nodes if n is not frozen])
    js = nc.jetstream(timeout=10)
    try:
        out = await StreamReader.open(js, f"{unique}.out.x")
        await publish_retrying(js, f"{unique}.in.x", 0, 20)
        await out.wait_for(20)
        ncfg = project.config.nats
        bound = ncfg.ping_interval * (ncfg.max_outstanding_pings + 1)
        moved = asyncio.Event()
        previous = hub._reconnected

        async def reconnected() -> None:
            moved.set()
            await previous()

        hub.nc._reconnected_cb = reconnected
        frozen.freeze()
        t0 = time.monotonic()
        await asyncio.wait_for(moved.wait(), bound + 10)
        noticed = time.monotonic() - t0
        now_on = hub.nc._server_info["server_name"]
        await publish_retrying(js, f"{unique}.in.x", 20, 20)
        await out.wait_for(40, timeout=60)
        through = time.monotonic() - t0
        print(f"\n[cluster] {frozen.name} frozen: runner on {now_on} after {noticed:.1f} s "
              f"(bound {bound:.0f} s + reconnect), the next 20 messages through after {through:.1f} s")
        assert now_on != frozen.name
        assert noticed < bound + 2
    finally:
        frozen.thaw()
        await hub.stop()
        await nc.close()
