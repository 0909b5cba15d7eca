"""Broker faults are outages (issue 12): a restarting, unreachable or refusing nats-server never makes a
message poison, never loses an ack that repeats an effect, and never leaves a runner running dead."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
from aiohttp import web

from engine.confirm import until_confirmed
from engine.embedded_nats import EmbeddedNats
from engine.errors import (BrokerUnavailable, PayloadTooLarge, PermanentError, PublishFailed, TargetTimeout,
                           TargetUnavailable, classify)
from engine.streams import ensure_streams
from tests.helpers import StreamReader, project_from, settled, started_hub, wait_until

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("exc", [
    nats.errors.NoRespondersError(),
    nats.js.errors.NoStreamResponseError(),
    nats.errors.TimeoutError(),
    nats.errors.ConnectionClosedError(),
    nats.errors.ConnectionReconnectingError(),
    nats.errors.UnexpectedEOF(),
    nats.js.errors.ServiceUnavailableError(code=503, err_code=10008,
                                           description="JetStream system temporarily unavailable"),
    nats.js.errors.APIError(code=503, err_code=10008, description="JetStream system temporarily unavailable"),
    nats.js.errors.ServerError(code=500, description="stream leader lost"),
], ids=lambda e: type(e).__name__)
def test_every_broker_error_is_an_outage_not_the_messages_fault(exc: Exception) -> None:
    """Restarts, elections and reconnects come out of nats-py as these; none may dead-letter a message."""
    err = classify(exc)
    assert isinstance(err, BrokerUnavailable) and err.transient


def test_the_taxonomy_keeps_bugs_permanent_and_io_transient() -> None:
    """A bug in a step reaches the DLQ (by name), an I/O error waits; a too-big message is refused."""
    assert type(classify(TypeError("unsupported operand"))) is PermanentError
    assert "TypeError" in str(classify(TypeError("unsupported operand")))
    assert isinstance(classify(ConnectionResetError()), TargetUnavailable)
    assert isinstance(classify(TimeoutError()), TargetTimeout)
    assert isinstance(classify(nats.errors.MaxPayloadError()), PayloadTooLarge)
    assert isinstance(PublishFailed("x"), BrokerUnavailable)


class _Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))

    error = warning


async def test_a_broker_operation_is_tried_until_confirmed_and_other_errors_pass_at_once() -> None:
    """until_confirmed waits out broker faults (logging the first), gives up only when the connection
    is gone for good, and lets any other error through untouched."""
    log, calls = _Log(), []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise nats.js.errors.NoStreamResponseError()
        return "stored"

    assert await until_confirmed(flaky, what="done mark", alive=lambda: True, log=log) == "stored"
    assert len(calls) == 4 and log.events[0][0] == "broker_retry"

    async def refused() -> None:
        raise ValueError("not a broker fault")

    with pytest.raises(ValueError):
        await until_confirmed(refused, what="x", alive=lambda: True, log=log)

    async def gone() -> None:
        raise nats.errors.ConnectionClosedError()

    with pytest.raises(BrokerUnavailable):
        await until_confirmed(gone, what="done mark", alive=lambda: False, log=log)
    assert log.events[-1][0] == "broker_gave_up"


@pytest.fixture
def own_server(tmp_path: Path):
    """A broker of this test's own, on a store that survives a kill."""
    server = EmbeddedNats(data_dir=tmp_path / "store").start()
    yield server
    server.stop()


class KillingTarget:
    """An HTTP target that counts effects per Idempotency-Key and, on its first request, SIGKILLs the
    hub's nats-server and answers 200 while the broker is down: the effect has happened, and the
    outputs and the done mark meet a dead broker."""

    def __init__(self, server: EmbeddedNats) -> None:
        self.server = server
        self.effects: dict[str, int] = {}
        self.killed = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key", "")
        self.effects[key] = self.effects.get(key, 0) + 1
        if not self.killed.is_set():
            self.server.kill()
            self.killed.set()
        return web.json_response({"ok": True})

    async def __aenter__(self) -> "KillingTarget":
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


async def test_an_effect_whose_outputs_and_done_mark_meet_a_dead_broker_happens_once(tmp_path: Path,
                                                                                     own_server: EmbeddedNats):
    """The broker dies right after the target applied the call: the output and the done mark are sent
    again until the restarted broker confirms them, then the source is acked. The target sees one call,
    the output is stored once, nothing is dead-lettered. (Before: the unconfirmed output gave the claim
    up and the redelivery called the target again.)"""
    u = "kill"
    async with KillingTarget(own_server) as target:
        project = project_from(tmp_path, f"""
        nats: {{publish_timeout: 1s}}
        streams:
          - {{name: IN, subjects: ["{u}.in.>"]}}
          - {{name: OUT, subjects: ["{u}.out.>"]}}
        endpoints:
          target: {{adapter: http, base_url: "{target.url}", timeout: 5s}}
        """, f"""
        name: {u}
        source: {{subject: {u}.in.x}}
        steps:
          - call: {{endpoint: target, into: answer}}
          - publish: {u}.out.x
        on_error: {{retry: [10ms], redeliver: [100ms, 200ms]}}
        ack_wait: 30s
        """)
        nc = await nats.connect(own_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1,
                                error_cb=_quiet)
        js = nc.jetstream(timeout=5)
        hub = None
        try:
            await ensure_streams(js, project.config)
            hub = await started_hub(project, own_server.url)
            await js.publish(f"{u}.in.x", b'{"n": 1}', headers={"ce-id": "only-one"})
            await asyncio.wait_for(target.killed.wait(), 15)
            await asyncio.sleep(1.5)  # the broker stays down longer than a publish timeout
            await asyncio.to_thread(own_server.start)
            await wait_until(lambda: settled(js, "IN", u), timeout=30)
            assert target.effects == {"only-one": 1}
            assert (await js.stream_info("OUT")).state.messages == 1
            assert hub.runners[u].failures.dead_lettered == 0 and hub.runners[u].stats.acked == 1
        finally:
            if hub is not None:
                await hub.stop()
            await nc.close()


async def _quiet(exc: Exception) -> None:
    """Our own test connection sees the restart too; it needs no stack trace for it."""


async def test_an_output_too_big_for_the_server_is_dead_lettered_and_the_connection_survives(
        tmp_path: Path, nats_url: str, js, unique: str):
    """A message that fits with its own small headers but not with the flow's CloudEvents headers is
    refused before sending (PayloadTooLarge, its payload left out of the DLQ record that names where it
    is), and the runner stays connected: the next message goes through. (Before: nats-server cut the
    connection, nats-py closed it for good, and every flow was dead.)"""
    project = project_from(tmp_path, f"""
    streams:
      - {{name: IN{unique}, subjects: ["{unique}.in.>"]}}
      - {{name: OUT{unique}, subjects: ["{unique}.out.>"]}}
    """, f"""
    name: {unique}
    source: {{subject: {unique}.in.x}}
    steps:
      - publish: {unique}.out.x
    """)
    hub = await started_hub(project, nats_url)
    try:
        limit = hub.nc.max_payload
        dlq = await StreamReader.open(js, f"dlq.{unique}")
        out = await StreamReader.open(js, f"{unique}.out.x")
        await js.publish(f"{unique}.in.x", b"x" * (limit - 200), headers={"ce-id": "big"})
        await js.publish(f"{unique}.in.x", b'{"small": true}', headers={"ce-id": "small"})
        record = (await dlq.wait_for(1))[0]
        assert record.headers["Hub-Dlq-Error-Class"] == "PayloadTooLarge"
        assert f"of stream IN{unique}" in record.headers["Hub-Dlq-Payload-Omitted"]
        assert (await out.wait_for(1))[0].headers["ce-id"] != "big"
        assert hub.broker_state == "connected" and not hub.closed_for_good
    finally:
        await hub.stop()


def write_runner_files(tmp: Path, u: str) -> list[str]:
    (tmp / "flows").mkdir(exist_ok=True)
    (tmp / "flows" / "f.yaml").write_text(textwrap.dedent(f"""
        name: {u}
        source: {{subject: {u}.in.x}}
        steps:
          - publish: {u}.out.x
        """))
    (tmp / "config.yaml").write_text(textwrap.dedent(f"""
        streams:
          - {{name: IN, subjects: ["{u}.in.>"]}}
          - {{name: OUT, subjects: ["{u}.out.>"]}}
        """))
    return ["--config", str(tmp / "config.yaml"), "--flows", str(tmp / "flows")]


async def test_a_runner_whose_connection_closes_for_good_exits_non_zero_with_a_clear_last_line(
        tmp_path: Path, own_server: EmbeddedNats):
    """The broker comes back requiring credentials the runner does not have: nats-py closes the
    connection for good, and `runner.py run` exits 1 saying so, instead of running on without NATS."""
    args = write_runner_files(tmp_path, "dead")
    log = tmp_path / "runner.log"
    with open(log, "wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "runner.py"), "run", "--nats", own_server.url, "--log-level", "info",
            *args, stdout=asyncio.subprocess.DEVNULL, stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        await wait_until(lambda: _logged(log, '"hub_started"'), timeout=60)
        own_server.extra_args = ("--user", "ops", "--pass", "rotated")
        await asyncio.to_thread(own_server.restart)
        code = await asyncio.wait_for(proc.wait(), 60)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
    lines = log.read_text().strip().splitlines()
    assert code == 1
    assert "nats_closed_for_good" in log.read_text()
    assert lines[-1].startswith("runner stopped: the NATS connection closed for good (")
    assert "Authorization" in lines[-1]


async def _logged(log: Path, text: str) -> bool:
    return text in log.read_text(errors="replace")


async def test_the_hub_reports_its_broker_state_for_readiness(tmp_path: Path, own_server: EmbeddedNats):
    """connected while the server runs, reconnecting while it restarts (not closed: it comes back),
    connected again after; wait_closed() does not return for a stop."""
    project = project_from(tmp_path, textwrap.dedent("""
        streams:
          - {name: IN, subjects: ["state.in.>"]}
        """))
    hub = await started_hub(project, own_server.url)
    try:
        assert hub.broker_state == "connected"
        own_server.kill()
        await wait_until(lambda: _state_is(hub, "reconnecting"), timeout=10)
        await asyncio.to_thread(own_server.start)
        await wait_until(lambda: _state_is(hub, "connected"), timeout=15)
        waiting = asyncio.create_task(hub.wait_closed())
    finally:
        await hub.stop()
    await asyncio.sleep(0)
    assert not waiting.done() and not hub.closed_for_good
    waiting.cancel()


async def _state_is(hub: Any, state: str) -> bool:
    return hub.broker_state == state
