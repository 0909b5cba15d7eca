"""Fixtures for the cluster tests: one local 3-node JetStream cluster (sandbox/cluster.py) per test
module, put back to three healthy nodes around every test that kills or freezes one.

Imported by tests/test_cluster*.py (`from tests.cluster_fixtures import *`): the session conftest
belongs to the single-server fixtures.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import nats
import pytest

from sandbox.cluster import LocalCluster

__all__ = ["cluster", "healthy_cluster", "cluster_js", "leader_node", "pytestmark"]

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(3) as c:
        yield c


def _restore(cluster: LocalCluster) -> None:
    """Every node running, none frozen, each healthy (caught up) again."""
    for node in cluster.nodes:
        if node.server.running:
            node.thaw()
        else:
            node.start()
    for node in cluster.nodes:
        node.server.wait_ready(30)


@pytest.fixture
def healthy_cluster(cluster: LocalCluster) -> Iterator[LocalCluster]:
    _restore(cluster)
    yield cluster
    _restore(cluster)


@pytest.fixture
async def cluster_js(healthy_cluster: LocalCluster) -> AsyncIterator[Any]:
    """JetStream through a connection that knows every node (it survives any one of them)."""
    nc = await nats.connect(healthy_cluster.urls, ping_interval=2, max_outstanding_pings=2,
                            reconnect_time_wait=0.2, max_reconnect_attempts=-1)
    yield nc.jetstream(timeout=10)
    await nc.close()


async def leader_node(js: Any, cluster: LocalCluster, stream: str, durable: str | None = None,
                      timeout: float = 30.0) -> Any:
    """The node that leads a stream (or a consumer of it) now; waits while it is being elected."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            info = await (js.consumer_info(stream, durable) if durable else js.stream_info(stream))
            if info.cluster and info.cluster.leader:
                return cluster.node(info.cluster.leader)
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise TimeoutError(f"no leader for {stream}/{durable} after {timeout} s")
        await asyncio.sleep(0.1)
