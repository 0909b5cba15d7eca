"""OpenSSH (Debian's sshd with its sftp-server) as a throw-away SFTP server for tests and benchmarks.

    server = await OpenSshServer(root).start()      # sshd -D on a free loopback port, its own host key
    server.authorize_key(write_client_key(path))    # public-key login of the user running the tests
    server.directory                                # where clients find the drop: the real path of `root`
    await server.restart(new_host_key=True)         # same port and files, a host key the client must refuse
    await server.drop_connections()                 # kill the session processes: clients must reconnect

The same controls as sandbox/sftp_server.SftpServer (asyncssh, in-process), so one test runs on both.
sshd runs unprivileged where it can (as the user running the tests) and as root in CI; either way it
accepts only that user, only by public key (sshd checks passwords against the system's accounts, which
a test must not touch), and hands the SFTP subsystem to OpenSSH's own sftp-server binary. It has no
chroot (sshd demands root-owned parents for one), so paths are the drop's real ones: `directory`.
A stop kills the listener and every session, as a reboot or crash would (MEASURED.md: a SIGTERM to
the listener alone leaves running sessions alive).
"""

from __future__ import annotations

import getpass
import os
import re
import subprocess
import tempfile
from pathlib import Path

import asyncssh

from sandbox.server_process import ServerProcess, descendants, free_port, missing_reason
from sandbox.sftp_server import generate_key, public_line

SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
_ACCEPTED = re.compile(r"Accepted (\S+) for (\S+) from ")
_FAILED = re.compile(r"Failed \S+ for |Connection closed by authenticating user |Invalid user ")


class OpenSshServer:
    """An SFTP drop served by OpenSSH on a fixed loopback port that outlives stop/start and host key changes."""

    password = None  # public-key logins only

    def __init__(self, root: Path | str, *, authorized_keys: list[str] | tuple[str, ...] = (),
                 host_key: asyncssh.SSHKey | None = None) -> None:
        if why := missing_reason("openssh"):
            raise RuntimeError(why)
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.username = getpass.getuser()
        self.authorized_keys = {" ".join(k.split()[:2]) for k in authorized_keys}
        self.host_key = host_key or generate_key()
        self.host, self.port = "127.0.0.1", 0
        self.logins: list[tuple[str, str]] = []  # (username, method) of each accepted authentication
        self.auth_failures = 0
        self._dir = tempfile.TemporaryDirectory(prefix="plu-sshd-")
        self._server: ServerProcess | None = None
        self.version = subprocess.run([SSHD, "-V"], capture_output=True, text=True).stderr.splitlines()[0]

    @property
    def directory(self) -> str:
        """The drop as clients name it."""
        return str(self.root)

    def remote(self, name: str) -> str:
        """A file's path as clients see it."""
        return f"{self.directory}/{name}"

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def host_key_line(self) -> str:
        return public_line(self.host_key)

    @property
    def known_hosts_line(self) -> str:
        return f"[{self.host}]:{self.port} {self.host_key_line}"

    @property
    def connections(self) -> int:
        """SSH connections open now (sshd forks one child per connection)."""
        if self._server is None or self._server.pid is None:
            return 0
        return len(_children(self._server.pid))

    def write_known_hosts(self, path: Path | str) -> Path:
        path = Path(path)
        path.write_text(self.known_hosts_line + "\n")
        return path

    def authorize_key(self, public: str) -> None:
        """Accept public-key logins with this "ssh-ed25519 AAAA..." key (sshd reads the file at each login)."""
        self.authorized_keys.add(" ".join(public.split()[:2]))
        self._write_authorized_keys()

    def rotate_host_key(self, key: asyncssh.SSHKey | None = None) -> None:
        self.host_key = key or generate_key()

    # --- lifecycle ------------------------------------------------------------------------------

    def _write_authorized_keys(self) -> Path:
        path = Path(self._dir.name) / "authorized_keys"
        path.write_text("".join(f"{k}\n" for k in sorted(self.authorized_keys)))
        path.chmod(0o600)
        return path

    def _config(self) -> Path:
        base = Path(self._dir.name)
        key = base / "host_key"
        key.write_bytes(self.host_key.export_private_key("openssh"))
        key.chmod(0o600)
        config = base / "sshd_config"
        config.write_text("\n".join([
            f"ListenAddress {self.host}:{self.port}", f"HostKey {key}", f"PidFile {base}/sshd.pid",
            f"AuthorizedKeysFile {self._write_authorized_keys()}", f"AllowUsers {self.username}",
            "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "UsePAM no", "StrictModes no",                  # the test's temp dirs are nobody's business
            "PermitRootLogin prohibit-password",            # CI runs as root: key logins only
            "MaxStartups 100:30:200", "MaxSessions 20", "LogLevel VERBOSE",
            "AllowTcpForwarding no", "X11Forwarding no", "PermitTTY no",
            f"Subsystem sftp {SFTP_SERVER}", f"ForceCommand {SFTP_SERVER}", ""]))
        return config

    async def start(self, host: str = "127.0.0.1", port: int | None = None) -> "OpenSshServer":
        """Listen on host:port; the first start picks a free port, later ones reuse it unless told."""
        if self._server is not None:
            return self
        self.host = host
        self.port = port if port is not None else (self.port or free_port(host))
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        server = ServerProcess([SSHD, "-D", "-e", "-f", str(self._config())], ready=lambda line: "Server listening" in line,
                               on_line=self._log, name="sshd")
        await server.start()
        self._server = server
        return self

    async def stop(self) -> None:
        """Stop listening and kill every session; the files stay on disk."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(children=True)

    async def restart(self, *, new_host_key: bool = False) -> "OpenSshServer":
        await self.stop()
        if new_host_key:
            self.rotate_host_key()
        return await self.start(self.host, self.port)

    async def drop_connections(self) -> int:
        """Kill every session process (the listener stays): clients must reconnect. Answers how many."""
        if self._server is None or self._server.pid is None:
            return 0
        sessions = _children(self._server.pid)
        for pid in sessions:
            for victim in [*descendants(pid), pid]:
                try:
                    os.kill(victim, 9)
                except ProcessLookupError:
                    pass
        return len(sessions)

    async def close(self) -> None:
        await self.stop()
        self._dir.cleanup()

    def _log(self, line: str) -> None:
        if found := _ACCEPTED.search(line):
            self.logins.append((found.group(2), found.group(1)))
        elif _FAILED.search(line):
            self.auth_failures += 1


def _children(pid: int) -> list[int]:
    """Direct children of `pid` (sshd: one per connection)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return found
