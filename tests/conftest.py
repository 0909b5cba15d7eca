"""Shared fixtures: one real nats-server (JetStream, file storage) for the whole session."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # flat layout: engine/, adapters/ ... live at the project root
    sys.path.insert(0, str(ROOT))

from engine import logs  # noqa: E402
from engine.embedded_nats import EmbeddedNats  # noqa: E402

# warnings and errors only, readable: a failing test shows them; `pytest -s` drill reports stay legible
logs.configure("warning", "console")

# pytest-timeout fails a test still running after `timeout` s (pyproject.toml, or -o timeout=N); at
# nine tenths of that, every asyncio task's await chain is printed: what the hung test waits for.


def await_chain(coro: object) -> list[str]:
    """Where a suspended coroutine waits, down its chain of awaits (Task.print_stack shows the top only)."""
    lines = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            lines.append(f"    {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return lines


def print_task_stacks(nodeid: str, after: float) -> None:
    print(f"\n=== {nodeid} still running after {after:.0f} s; asyncio tasks:", file=sys.stderr)
    for task in asyncio.all_tasks():
        print(f"--- {task.get_name()}", *await_chain(task.get_coro()), sep="\n", file=sys.stderr)


@pytest.fixture(autouse=True)
async def _hung_test_report(request: pytest.FixtureRequest):
    after = 0.9 * float(request.config.getini("timeout") or 300)
    timer = asyncio.get_running_loop().call_later(after, print_task_stacks, request.node.nodeid, after)
    yield
    timer.cancel()


@pytest.fixture(scope="session")
def nats_server() -> Iterator[EmbeddedNats]:
    with EmbeddedNats() as server:
        yield server


@pytest.fixture(scope="session")
def nats_url(nats_server: EmbeddedNats) -> str:
    return nats_server.url


@pytest.fixture
async def js(nats_url: str):
    """JetStream on the session's server (tests there keep apart by `unique` names)."""
    import nats

    nc = await nats.connect(nats_url)
    yield nc.jetstream()
    await nc.close()


@pytest.fixture
def broker() -> Iterator[EmbeddedNats]:
    """A nats-server of the test's own: tests of the shipped flows use their real durables, streams
    and buckets, which must not meet another test's."""
    with EmbeddedNats() as server:
        yield server


@pytest.fixture
async def broker_js(broker: EmbeddedNats):
    """JetStream on the test's own server."""
    import nats

    nc = await nats.connect(broker.url)
    yield nc.jetstream()
    await nc.close()


@pytest.fixture
def unique() -> str:
    """A short lowercase token, valid in subjects and stream names, so tests never share state."""
    return "t" + uuid.uuid4().hex[:10]


# --- production servers (sandbox/server_process.py): Dovecot, OpenSSH, Mosquitto, nats-server's MQTT ----------

def require_server(name: str) -> None:
    """Skip (a developer without the server) or fail (CI: HUB_REQUIRE_REAL_SERVERS=1) when `name` is missing."""
    from sandbox.server_process import REQUIRE_ENV, missing_reason, required

    why = missing_reason(name)
    if why is None:
        return
    if required():
        pytest.fail(f"{why} ({REQUIRE_ENV}=1: .ci/run installs it; a skip would hide the server)", pytrace=False)
    pytest.skip(f"{why}; .ci/run installs it (set {REQUIRE_ENV}=1 to make this a failure)")


MQTT_BACKENDS = ["nats", "mosquitto"]  # nats-server's MQTT listener (the wheel's) and Debian's Mosquitto


@pytest.fixture(params=MQTT_BACKENDS)
async def mqtt_broker(request: pytest.FixtureRequest):
    """A QoS-1-persistent MQTT broker of the test's own, once per production broker."""
    from sandbox.mqtt_broker import MqttBroker

    if request.param == "mosquitto":
        require_server("mosquitto")
    async with MqttBroker(backend=request.param) as server:
        yield server


IMAP_SERVERS = ["pymap", "dovecot"]  # the project's mail sandbox (pymap) and Debian's Dovecot


@pytest.fixture(scope="module", params=IMAP_SERVERS)
async def imap_server(request: pytest.FixtureRequest):
    """An IMAP server for a test module, once per server kind: both offer inject, messages, add_user,
    stop_imap/start_imap, imap_port, ca_file; tests add a user of their own."""
    if request.param == "dovecot":
        require_server("dovecot")
        from sandbox.dovecot import DovecotServer as Server
    else:
        from sandbox.mail import MailSandbox as Server
    async with Server(users={"hub@plu.example": "imap-test-pw"}) as server:
        yield server
