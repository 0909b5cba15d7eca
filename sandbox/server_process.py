"""Production servers (Dovecot, OpenSSH's sshd, Mosquitto, nats-server's MQTT listener) run as child
processes for tests, benchmarks and the demo: on a free loopback port, their log read as it comes, and
never outliving the process that started them.

`require(name)` is how a test asks for one: a developer without it sees a skip that names the Debian
package; with HUB_REQUIRE_REAL_SERVERS=1 (set by .ci/run) a missing server fails the test instead, so CI
can never pass by skipping the servers the hub meets in the field.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

REQUIRE_ENV = "HUB_REQUIRE_REAL_SERVERS"

# what each server needs on PATH (or at a fixed path), and the Debian packages that bring it
SERVERS: dict[str, tuple[tuple[str, ...], str]] = {
    "dovecot": (("dovecot", "doveadm"), "dovecot-imapd"),
    "openssh": (("/usr/sbin/sshd", "ssh-keygen", "/usr/lib/openssh/sftp-server"),
                "openssh-server openssh-sftp-server"),
    "mosquitto": (("mosquitto", "mosquitto_passwd"), "mosquitto"),
}


def _found(tool: str) -> bool:
    return Path(tool).is_file() if tool.startswith("/") else shutil.which(tool) is not None


def available(name: str) -> bool:
    """Whether the server `name` (a key of SERVERS) is installed here."""
    return all(_found(tool) for tool in SERVERS[name][0])


def missing_reason(name: str) -> str | None:
    """None when installed; else what is missing and how to install it."""
    tools, packages = SERVERS[name]
    absent = [t for t in tools if not _found(t)]
    if not absent:
        return None
    return f"{name} is not installed ({', '.join(absent)} missing): apt-get install {packages}"


def required() -> bool:
    """True where every real server must be there (CI): a missing one is a failure, not a skip."""
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the parent dies, so no server outlives a killed run."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc), children first; empty where /proc is missing."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class ServerProcess:
    """One child process whose log (stderr) is read line by line: `start` returns once a line matches
    `ready`; afterwards every line goes to `on_line` (a full pipe would stall the server)."""

    def __init__(self, argv: Sequence[str], *, ready: Callable[[str], bool], on_line: Callable[[str], None] = print,
                 env: dict[str, str] | None = None, name: str | None = None) -> None:
        self.argv = list(argv)
        self.ready = ready
        self.on_line = on_line
        self.env = env
        self.name = name or Path(self.argv[0]).name
        self.process: asyncio.subprocess.Process | None = None
        self.log: list[str] = []  # the last lines, for error messages
        self._follower: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def start(self, timeout: float = 15.0) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env=self.env,
            preexec_fn=die_with_parent if sys.platform == "linux" else None)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    line = await self._line(self.process)
                    if line is None:
                        raise RuntimeError(f"{self.name} exited ({await self.process.wait()}): "
                                           + " | ".join(self.log[-8:]))
                    self.on_line(line)
                    if self.ready(line):
                        break
        except BaseException:
            await self.stop()
            raise
        self._follower = asyncio.get_running_loop().create_task(self._follow(self.process), name=f"{self.name}-log")

    async def _line(self, process: asyncio.subprocess.Process) -> str | None:
        assert process.stderr is not None
        raw = await process.stderr.readline()
        if not raw:
            return None
        line = raw.decode(errors="replace").rstrip("\n")
        self.log = [*self.log[-49:], line]
        return line

    async def _follow(self, process: asyncio.subprocess.Process) -> None:
        while (line := await self._line(process)) is not None:
            self.on_line(line)

    def signal_children(self, sig: int = signal.SIGKILL) -> int:
        """Send `sig` to every process below the server (its sessions); answers how many."""
        count = 0
        for pid in descendants(self.pid or -1):
            try:
                os.kill(pid, sig)
                count += 1
            except ProcessLookupError:
                pass
        return count

    async def stop(self, *, children: bool = True, grace: float = 5.0) -> None:
        """SIGTERM (repeated: a server may miss one sent while it is still setting up its handlers),
        SIGKILL after `grace`; with `children`, every session process below it is killed too."""
        process, self.process = self.process, None
        if process is None:
            return
        below = descendants(process.pid) if children else []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while process.returncode is None and loop.time() < deadline:
            try:
                process.terminate()
            except ProcessLookupError:
                break
            try:
                await asyncio.wait_for(process.wait(), 0.5)
            except TimeoutError:
                pass
        if process.returncode is None:
            process.kill()
            await process.wait()
        for pid in below:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._follower is not None:
            follower, self._follower = self._follower, None
            if not children:  # sessions left running keep the log pipe open: stop reading it
                follower.cancel()
            try:
                await asyncio.wait_for(follower, 2.0)
            except (TimeoutError, asyncio.CancelledError):
                follower.cancel()
