"""Fallback answers, alerts as events, and the rate limit, against real servers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import nats
import pytest

from sandbox.http_sink import HttpSink
from tests.helpers import StreamReader, project_from, started_hub


@pytest.fixture
async def nc(nats_url: str):
    conn = await nats.connect(nats_url)
    yield conn
    await conn.close()


def config(u: str, sink_url: str, breaker: str = "null") -> str:
    return f"""
    streams:
      - {{name: IN{u}, subjects: ["{u}.in.>"]}}
      - {{name: OPS{u}, subjects: ["ops.alert.{u}"]}}
    endpoints:
      target: {{adapter: http, base_url: "{sink_url}", path: "/echo", circuit_breaker: {breaker}}}
    """


async def test_fallback_answers_from_the_last_good_answer_marked_stale(tmp_path: Path, nats_url: str, nc, unique: str):
    """Target up: fresh answer (remembered). Target down: the same question gets the last answer
    with stale: true; a question never answered before gets a clear error, never a hang."""
    async with HttpSink() as sink:
        project = project_from(tmp_path, config(unique, sink.url), f"""
        name: {unique}
        source: {{request: {unique}.quote}}
        steps:
          - call: {{endpoint: target, timeout: 1s, fallback: {{key: "{{postcode}}:{{households}}"}}}}
          - reply
        """)
        hub = await started_hub(project, nats_url)
        try:
            ask = {"postcode": "1000", "households": 2, "price": 42}
            fresh = json.loads((await nc.request(f"{unique}.quote", json.dumps(ask).encode(), timeout=5)).data)
            assert fresh == ask
            sink.set_status(503)
            stale = json.loads((await nc.request(f"{unique}.quote", json.dumps(ask | {"price": 0}).encode(), timeout=5)).data)
            assert stale["price"] == 42 and stale["stale"] is True and "cached_at" in stale
            other = json.loads((await nc.request(f"{unique}.quote", b'{"postcode": "9999", "households": 1}', timeout=5)).data)
            assert other["error"]["class"] == "Throttled" and other["error"]["transient"] is True
        finally:
            await hub.stop()


async def test_alerts_fire_and_resolve_as_events(tmp_path: Path, nats_url: str, nc, unique: str):
    """A backlog over the threshold raises `firing` on ops.alert.<flow>; once drained, `resolved`."""
    async with HttpSink() as sink:
        sink.set_delay(0.05)
        project = project_from(tmp_path, config(unique, sink.url), f"""
        name: {unique}
        source: {{subject: {unique}.in.x}}
        steps:
          - call: {{endpoint: target}}
        limits: {{concurrency: 1}}
        alerts: {{pending: 5, dead_letters: 1, every: 100ms}}
        """)
        hub = await started_hub(project, nats_url)
        js = nc.jetstream()
        try:
            alerts = await StreamReader.open(js, f"ops.alert.{unique}")
            for i in range(30):
                await js.publish(f"{unique}.in.x", json.dumps({"i": i}).encode(), headers={"ce-id": f"a{i}"})
            first = json.loads((await alerts.wait_for(1))[0].data)
            assert first["alert"] == "pending" and first["state"] == "firing" and first["value"] > 5
            await sink.wait_for_effects(30)
            resolved = json.loads((await alerts.wait_for(2))[1].data)
            assert resolved == resolved | {"alert": "pending", "state": "resolved"}
            assert alerts.messages[0].headers["ce-type"] == f"ops.alert.{unique}"
        finally:
            await hub.stop()


async def test_rate_limit_paces_a_backlog(tmp_path: Path, nats_url: str, nc, unique: str):
    """A backlog drains no faster than the flow's rate: 40 messages at 40/s take about a second."""
    async with HttpSink() as sink:
        project = project_from(tmp_path, config(unique, sink.url), f"""
        name: {unique}
        source: {{subject: {unique}.in.x}}
        steps:
          - call: {{endpoint: target}}
        limits: {{rate: 40/s, concurrency: 8}}
        """)
        js = nc.jetstream()
        hub = await started_hub(project, nats_url)
        try:
            for i in range(40):
                await js.publish(f"{unique}.in.x", json.dumps({"i": i}).encode(), headers={"ce-id": f"r{i}"})
            start = time.monotonic()
            await sink.wait_for_effects(40)
            elapsed = time.monotonic() - start
            # a lower bound only (burst of rate/10 allowed): pacing, not speed, is what is asserted
            assert elapsed >= (40 - 4) / 40 * 0.9
        finally:
            await hub.stop()
