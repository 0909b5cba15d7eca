"""/healthz and /readyz as a Kubernetes probe sees them, against a real nats-server that goes away
and comes back."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp

from engine.messages import event_headers
from tests.helpers import StreamReader, project_from, started_hub, wait_until

CONFIG = """
streams:
  - {name: OPS_T, subjects: ["opst.>"]}
ops: {http: {port: 0}}
"""

FLOW = """
name: opst-route
source: {subject: opst.in}
steps:
  - publish: opst.out
"""


async def probe(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as resp:
            return resp.status, await resp.json()


async def status_is(url: str, wanted: int) -> bool:
    return (await probe(url))[0] == wanted


async def test_readyz_goes_unready_while_nats_is_gone_and_ready_again_after(tmp_path: Path, broker, broker_js):
    """Ready with NATS up; 503 naming NATS while the server is stopped, with /healthz still 200 (a
    restart would not bring NATS back); ready again once it is restarted, and messages flow."""
    hub = await started_hub(project_from(tmp_path, CONFIG, FLOW), broker.url)
    base = hub.ops.server.url
    try:
        assert await probe(base + "/readyz") == (200, {"status": "ready", "checks": {
            "nats": "ok", "streams": "ok", "flows": "ok"}})
        await asyncio.to_thread(broker.stop, cleanup=False)
        await wait_until(lambda: status_is(base + "/readyz", 503), timeout=10)
        code, body = await probe(base + "/readyz")
        assert body["checks"]["nats"] in ("reconnecting", "not connected")
        assert await probe(base + "/healthz") == (200, {"status": "ok", "nats": "reconnecting"})

        await asyncio.to_thread(broker.start)
        await wait_until(lambda: status_is(base + "/readyz", 200), timeout=20)
        out = await StreamReader.open(broker_js, "opst.out")
        await broker_js.publish("opst.in", json.dumps({"after": "restart"}).encode(),
                                headers=event_headers("/t", "opst.in"))
        await out.wait_for(1)
    finally:
        await hub.stop()


async def test_healthz_fails_once_the_connection_is_closed_for_good(tmp_path: Path, broker):
    """A runner whose NATS connection closed for good is not alive: /healthz and /readyz answer 503."""
    hub = await started_hub(project_from(tmp_path, CONFIG, FLOW), broker.url)
    base = hub.ops.server.url
    try:
        assert (await probe(base + "/healthz"))[0] == 200
        await hub.nc.close()
        assert await probe(base + "/healthz") == (503, {"status": "failing", "nats": "closed"})
        code, body = await probe(base + "/readyz")
        assert code == 503 and body["checks"]["nats"] == "closed"
    finally:
        await hub.stop()


async def test_readyz_names_a_flow_that_is_not_consuming(tmp_path: Path, broker):
    """A flow whose pulling stopped (its workers gone) makes the runner unready, and /readyz names it."""
    hub = await started_hub(project_from(tmp_path, CONFIG, FLOW), broker.url)
    base = hub.ops.server.url
    try:
        runner = hub.runners["opst-route"]
        runner.feed.stop_pulling()
        await asyncio.wait(runner._workers, timeout=5)  # the process loop ends once nothing is left to do
        code, body = await probe(base + "/readyz")
        assert code == 503 and body["checks"]["flows"] == "not consuming: opst-route"
    finally:
        await hub.stop()


async def test_no_listener_unless_configured(tmp_path: Path, broker):
    """Without `ops.http.port` a runner opens no port (two runners on one host must not collide)."""
    hub = await started_hub(project_from(tmp_path, "streams:\n  - {name: OPS_T, subjects: [\"opst.>\"]}\n", FLOW),
                            broker.url)
    try:
        assert hub.ops.server is None
    finally:
        await hub.stop()
