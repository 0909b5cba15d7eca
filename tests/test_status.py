"""`runner.py status` as ops run it (the real command line, in its own process): against a running hub,
then read-only against the stopped hub's store, once and with --watch."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from engine.embedded_nats import EmbeddedNats
from engine.messages import event_headers
from engine.runtime import Hub
from engine.status import render
from sandbox.http_sink import HttpSink
from tests.helpers import project_from, settled, wait_until

ROOT = Path(__file__).resolve().parents[1]


def files(tmp: Path, ok_url: str, down_url: str) -> tuple[str, list[str]]:
    config = f"""
    nats: {{embedded: {{data_dir: "{tmp / 'store'}"}}}}
    streams:
      - {{name: ST, subjects: ["st.>"]}}
    endpoints:
      target: {{adapter: http, base_url: "{ok_url}", path: "/x"}}
      down: {{adapter: http, base_url: "{down_url}", path: "/y", circuit_breaker: {{failures: 2, window: 30s, reset: 1h}}}}
    ops: {{http: {{port: 0}}}}
    """
    flows = ["""
    name: st-route
    source: {subject: st.in.a}
    steps:
      - publish: st.out.a
    """, """
    name: st-call
    source: {subject: st.in.b}
    steps:
      - call: {endpoint: target}
    """, """
    name: st-down
    source: {subject: st.in.c}
    steps:
      - call: {endpoint: down}
    on_error: {redeliver: [1h]}
    """]
    return config, flows


async def status_cli(tmp: Path, *extra: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "runner.py"), "status", "--config", str(tmp / "config.yaml"),
        "--flows", str(tmp / "flows"), *extra, cwd=str(tmp),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def store_facts(url: str) -> dict[str, Any]:
    """Streams with their message counts and durable consumers: what a read-only command must not change."""
    import nats

    nc = await nats.connect(url)
    js = nc.jetstream()
    facts = {}
    for info in await js.streams_info():
        consumers = sorted(c.name for c in await js.consumers_info(info.config.name) if c.config.durable_name)
        facts[info.config.name] = (info.state.messages, consumers)
    await nc.close()
    return facts


def flow(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in status["flows"] if f["flow"] == name)


async def test_status_of_a_running_hub_then_of_its_stopped_store(tmp_path: Path):
    """Running: one runner answers, ready, with the dead letter of st-call, the five messages of st-down
    waiting out its open circuit, and the screen says so. Stopped: the same backlog, dead letter and
    open circuit come from the store, the rates are unknown, and the store is as the hub left it."""
    async with HttpSink() as ok, HttpSink() as down:
        down.set_status(503)
        config, flows = files(tmp_path, ok.url, down.url)
        project = project_from(tmp_path, config, *flows)
        hub = Hub(project)
        await hub.start()
        try:
            import nats

            nc = await nats.connect(hub.servers[0])
            js = nc.jetstream()
            for i in range(3):
                await js.publish("st.in.a", b"{}", headers=event_headers("/t", "st.in.a"))
            ok.fail_next(1, status=400)
            await js.publish("st.in.b", b'{"n": 1}', headers=event_headers("/t", "st.in.b"))
            for i in range(2):
                await js.publish("st.in.c", b"{}", headers=event_headers("/t", "st.in.c"))

            async def circuit_open() -> bool:
                return hub.endpoint_breakers["down"].state == "open"

            await wait_until(circuit_open)
            for i in range(3):  # arrive while the circuit is open: they wait in JetStream
                await js.publish("st.in.c", b"{}", headers=event_headers("/t", "st.in.c"))
            await wait_until(lambda: settled(js, "ST", "st-route", "st-call"))
            await nc.close()

            code, out, err = await status_cli(tmp_path, "--json")
            assert code == 0, err
            running = json.loads(out)
            code, screen, err = await status_cli(tmp_path)
            assert code == 0, err
            before = await store_facts(hub.servers[0])
        finally:
            await hub.stop()

    assert running["running"] and len(running["runners"]) == 1 and running["runners"][0]["ready"]
    assert flow(running, "st-route")["done"] == 3 and flow(running, "st-route")["consuming"] == 1
    assert flow(running, "st-call")["dead_letters"] == 1 and flow(running, "st-call")["failed"] == 1
    down_flow = flow(running, "st-down")
    assert down_flow["pending"] + down_flow["unacked"] == 5 and down_flow["unacked"] >= 2  # waiting out the outage
    assert flow(running, "st-down")["lag_s"] > 0
    assert [c["state"] for c in running["circuits"] if c["endpoint"] == "down"] == ["open"]
    assert "1 runner(s) answering, 1 ready" in screen and "OPEN       down" in screen
    assert max(len(line) for line in screen.splitlines()) <= 110
    row = next(line for line in screen.splitlines() if "st-call" in line)
    assert row.startswith("!")  # a flow with dead letters is marked

    code, out, err = await status_cli(tmp_path, "--json")
    assert code == 0, err
    stopped = json.loads(out)
    assert not stopped["running"] and stopped["runners"] == []
    assert flow(stopped, "st-call")["dead_letters"] == 1 and flow(stopped, "st-call")["rate_per_s"] is None
    assert flow(stopped, "st-down")["pending"] + flow(stopped, "st-down")["unacked"] == 5
    assert [c["state"] for c in stopped["circuits"] if c["endpoint"] == "down"] == ["open"]
    with EmbeddedNats(data_dir=tmp_path / "store") as server:
        after = await store_facts(server.url)
    assert after == before

    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "runner.py"), "status", "--config", str(tmp_path / "config.yaml"),
        "--flows", str(tmp_path / "flows"), "--json", "--watch", "0.2", cwd=str(tmp_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    refreshes = [json.loads(await asyncio.wait_for(proc.stdout.readline(), 60)) for _ in range(2)]
    proc.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert [flow(r, "st-down")["dead_letters"] for r in refreshes] == [0, 0]
    assert [flow(r, "st-call")["dead_letters"] for r in refreshes] == [1, 1]


def test_the_screen_shows_overdue_waits_and_who_is_not_ready():
    """Waits past their deadline say OVERDUE by how much; a runner not ready says which check fails."""
    now = datetime(2026, 12, 6, 12, 0, tzinfo=timezone.utc)
    status = {
        "at": now.isoformat(), "running": True,
        "runners": [{"runner": "h:1:abc", "uptime_s": 7300, "ready": False, "nats": "reconnecting",
                     "checks": {"nats": "reconnecting", "streams": "ok", "flows": "ok"}, "ops_url": None}],
        "flows": [{"flow": "contract-switch-track", "source": "subject", "runners": 1, "consuming": 1,
                   "rate_per_s": 0.5, "errors_per_min": 0.0, "done": 10, "failed": 0, "pending": 0, "unacked": 2,
                   "lag_s": 3723.0, "dead_letters": 0, "waits": 2}],
        "circuits": [{"endpoint": "erp_de", "state": "closed", "since": None, "reason": ""}],
        "waits": 2,
        "waits_near_deadline": [
            {"flow": "contract-switch-track", "key": "K-1", "since": "2026-12-04T10:00:00+00:00",
             "deadline_at": (now - timedelta(hours=1, minutes=5)).isoformat(), "checks": 40, "overdue": True},
            {"flow": "contract-switch-track", "key": "K-2", "since": "2026-12-04T14:00:00+00:00",
             "deadline_at": (now + timedelta(hours=2, minutes=10)).isoformat(), "checks": 38, "overdue": False}],
    }
    screen = render(status, now)
    assert "NOT READY" in screen and "nats: reconnecting" in screen
    assert "OVERDUE by 1h05m" in screen and "deadline in 2h10m" in screen
    assert "1h02m" in screen  # the lag
    assert "closed     erp_de" in screen
    print(textwrap.indent(screen, "    "))


def test_status_help_teaches_the_columns():
    """`runner.py status --help` explains every column and the read-only stopped-hub mode."""
    import subprocess

    out = subprocess.run([sys.executable, str(ROOT / "runner.py"), "status", "--help"], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "COLUMNS": "120"}).stdout
    for word in ("RATE/s", "PENDING", "UNACKED", "LAG", "DLQ", "WAITS", "--watch", "--json", "read-only"):
        assert word in out, word


def test_rates_are_over_the_last_minute_of_samples():
    """RATE/s and ERR/min come from the counters' change between the oldest and newest sample kept
    (a minute), per flow; with fewer than two samples they are zero, not a guess."""
    from types import SimpleNamespace

    from engine.operations import RATE_WINDOW, RateMeter

    stats = SimpleNamespace(acked=0, filtered=0, skipped=0, failed=0)
    runners = {"f": SimpleNamespace(stats=stats)}
    meter = RateMeter()
    meter.sample(runners, 100.0)
    assert meter.rates("f") == (0.0, 0.0)
    for i in range(1, RATE_WINDOW + 5):  # older samples fall out of the window
        stats.acked += 50 if i > 4 else 500
        stats.failed += 1
        meter.sample(runners, 100.0 + 5 * i)
    rate, errors = meter.rates("f")
    assert rate == 10.0 and errors == 12.0
    assert meter.rates("unknown") == (0.0, 0.0)
