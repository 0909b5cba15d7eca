"""A real MQTT 3.1.1 broker for tests and the demo, on a free loopback port: vendor 4's broker.

    async with MqttBroker() as broker:          # amqtt, in-process: needs only pip
        broker.host, broker.port, broker.users  # clients log in (anonymous is refused)
        await broker.wait_disconnected("hub-1") # the broker has registered that the client is gone
        await broker.restart()                  # same port; amqtt forgets sessions, mosquitto keeps them

`backend="amqtt"` (default) runs amqtt in this event loop. It keeps a persistent session
(clean_session=False) of an authenticated client and queues QoS 1 messages published while that
client is away, which is the property the hub's subscriber needs. Its gaps, measured in
tests/test_mqtt_broker.py: it does not re-send QoS 1 messages it delivered but never got a PUBACK
for (MQTT-4.4.0-1), so a hub that dies between receiving and storing loses them, and so do
messages published before amqtt has noticed a client left (tests await `wait_disconnected`); a
restart loses every session. `backend="mosquitto"` runs Debian's mosquitto (when on PATH) with
persistence and has none of these gaps. amqtt keeps no session for anonymous clients, hence the users.
"""

from __future__ import annotations

import asyncio
import ctypes
import getpass
import hmac
import logging
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amqtt.broker import Broker
from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session

HUB_USER, HUB_PASSWORD = "plu-hub", "mqtt-sandbox-hub"
VENDOR4_USER, VENDOR4_PASSWORD = "vendor4", "mqtt-sandbox-vendor4"
BACKENDS = ("amqtt", "mosquitto")
_JOINED = re.compile(r"New client connected from \S+ as (\S+) ")
_LEFT = re.compile(r"Client (\S+) (?:disconnected|closed its connection|has exceeded timeout)|"
                   r"Socket error on client (\S+), disconnecting")


class PasswordAuthPlugin(BaseAuthPlugin):
    """amqtt authentication against an in-memory user table (sandbox credentials only); it also tells
    the MqttBroker when a client's connection is registered and when its end is."""

    @dataclass
    class Config:
        users: dict[str, str] = field(default_factory=dict)
        observer: Any = None  # the MqttBroker

    async def authenticate(self, *, session: Session) -> bool:
        expected = self.config.users.get(session.username or "")
        return expected is not None and hmac.compare_digest(expected.encode(), (session.password or "").encode())

    async def on_broker_client_connected(self, *, client_id: str, client_session: Session) -> None:
        self.config.observer._note(client_id, True)

    async def on_broker_client_disconnected(self, *, client_id: str, client_session: Session) -> None:
        self.config.observer._note(client_id, False)


def mosquitto_available() -> bool:
    return shutil.which("mosquitto") is not None and shutil.which("mosquitto_passwd") is not None


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


async def _terminate(process: asyncio.subprocess.Process) -> None:
    """SIGTERM (mosquitto then writes its persistence file), repeated: mosquitto 2.0 sets its run flag
    after logging "running", so a SIGTERM sent right after that line can be lost (seen in this suite)."""
    for _ in range(20):
        if process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 0.5)
            return
        except TimeoutError:
            pass
    process.kill()
    await process.wait()


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the test process dies, so no broker outlives a killed run."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class MqttBroker:
    """Start, stop and restart one broker; `port` stays the same across restarts."""

    def __init__(self, users: dict[str, str] | None = None, *, backend: str = "amqtt", host: str = "127.0.0.1",
                 port: int = 0, max_queued: int = 1_000_000, quiet: bool = True) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}")
        if backend == "mosquitto" and not mosquitto_available():
            raise RuntimeError("mosquitto and mosquitto_passwd are not on PATH (apt-get install mosquitto)")
        self.users = dict(users) if users is not None else {HUB_USER: HUB_PASSWORD, VENDOR4_USER: VENDOR4_PASSWORD}
        self.backend, self.host, self.port = backend, host, port
        self.max_queued = max_queued  # mosquitto drops QoS 1 messages queued past this, per client
        self.running = False
        self._broker: Broker | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._drainer: asyncio.Task[None] | None = None
        self.connected: set[str] = set()  # client ids the broker holds a live connection for
        self._changed: asyncio.Event | None = None
        if quiet:  # amqtt warns about a PUBACK race of its own on every burst; errors still show
            logging.getLogger("amqtt").setLevel(logging.ERROR)
            logging.getLogger("transitions").setLevel(logging.ERROR)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    async def wait_disconnected(self, client_id: str, timeout: float = 10) -> None:
        """Return once the broker has registered that `client_id` is gone: from then on, what is
        published for it is queued in its session (before, amqtt may still write it to the dead socket)."""
        async with asyncio.timeout(timeout):
            while client_id in self.connected:
                self._changed = self._changed or asyncio.Event()
                await self._changed.wait()

    def _note(self, client_id: str, connected: bool) -> None:
        (self.connected.add if connected else self.connected.discard)(client_id)
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def start(self) -> "MqttBroker":
        if self.running:
            return self
        self.connected.clear()
        if self.backend == "amqtt":
            await self._start_amqtt()
        else:
            await self._start_mosquitto()
        self.running = True
        return self

    async def stop(self) -> None:
        if not self.running:
            return
        self.running = False
        if self._broker is not None:
            broker, self._broker = self._broker, None
            await broker.shutdown()
        if self._process is not None:
            process, self._process = self._process, None
            await _terminate(process)

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def close(self) -> None:
        """Stop and remove mosquitto's files (its sessions go with them)."""
        await self.stop()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    async def __aenter__(self) -> "MqttBroker":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- amqtt -----------------------------------------------------------------------------------

    async def _start_amqtt(self) -> None:
        config: dict[str, Any] = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {f"{__name__}.PasswordAuthPlugin": {"users": self.users, "observer": self}},
        }
        broker = Broker(config)  # a fresh instance per start: amqtt closes its plugins on shutdown
        await broker.start()
        server = broker._servers["default"].instance  # amqtt exposes no bound address; port 0 needs it
        self.port = server.sockets[0].getsockname()[1]
        self._broker = broker

    # --- mosquitto -------------------------------------------------------------------------------

    async def _start_mosquitto(self) -> None:
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="plu-mosquitto-")
            self._write_passwords(Path(self._dir.name) / "passwd")
        if not self.port:
            self.port = _free_port(self.host)
        base = Path(self._dir.name)
        (base / "mosquitto.conf").write_text("\n".join([
            f"listener {self.port} {self.host}", "allow_anonymous false", f"password_file {base / 'passwd'}",
            f"user {getpass.getuser()}",  # started as root, mosquitto would switch to a user who cannot read here
            "persistence true", f"persistence_location {base}/", "autosave_interval 0",
            f"max_queued_messages {self.max_queued}", "log_dest stderr", "log_type error", "log_type warning",
            "log_type notice", "log_type information", ""]))
        self._process = await asyncio.create_subprocess_exec(  # its log on stderr: unbuffered, read as it comes
            "mosquitto", "-c", str(base / "mosquitto.conf"), stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        seen: list[str] = []
        async with asyncio.timeout(10):
            while True:  # ready once it logs that it runs (after opening the listener)
                line = (await self._process.stderr.readline()).decode(errors="replace")
                if not line:
                    raise RuntimeError("mosquitto exited: " + "".join(seen[-5:]))
                seen.append(line)
                if " running" in line:
                    break
        self._drainer = asyncio.get_running_loop().create_task(self._follow_log(self._process))

    async def _follow_log(self, process: asyncio.subprocess.Process) -> None:
        """Read mosquitto's log to the end (a full pipe would stall it), noting who connects and leaves."""
        while process.stderr is not None and (line := (await process.stderr.readline()).decode(errors="replace")):
            if found := _JOINED.search(line):
                self._note(found.group(1), True)
            elif found := _LEFT.search(line):
                self._note(found.group(1) or found.group(2), False)

    def _write_passwords(self, path: Path) -> None:
        path.touch(mode=0o600)
        for user, password in self.users.items():
            subprocess.run(["mosquitto_passwd", "-b", str(path), user, password], check=True, capture_output=True)
