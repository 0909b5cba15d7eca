"""A real SFTP server (asyncssh) on loopback, and the janitor that deletes files past their lifetime.

The PDF Generator's SFTP drop deletes every file older than 24 hours, so the hub must fetch in time, pin the
server's host key, and survive restarts and dropped connections. Tests and the demo need all of that
against real SSH, not a mock:

    server = await SftpServer(root, username="hub", password="pw").start()
    server.known_hosts_line   # "[127.0.0.1]:PORT ssh-ed25519 AAAA..." for a pinned known_hosts file
    await server.restart(new_host_key=True)   # same port and files, a host key the client must refuse
    janitor = Janitor(root, lifetime=86400).start()   # janitor.deleted records what it removed

Clients see `root` as "/" (chroot). Password and public-key auth for the one configured user; files live
on disk, so stop/start keeps them. Run alone: `python -m sandbox.sftp_server ROOT [PORT]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import asyncssh

from engine.tasks import cancel_and_wait


def generate_key() -> asyncssh.SSHKey:
    """A fresh Ed25519 key pair (fast to make, understood by paramiko and OpenSSH)."""
    return asyncssh.generate_private_key("ssh-ed25519")


def public_line(key: asyncssh.SSHKey) -> str:
    """The key as "ssh-ed25519 AAAA..." (the authorized_keys / known_hosts form, without a comment)."""
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


def write_client_key(path: Path | str) -> str:
    """Write a new private key in OpenSSH format (mode 0600) for paramiko; answer its public line."""
    key, path = generate_key(), Path(path)
    path.write_bytes(key.export_private_key("openssh"))
    path.chmod(0o600)
    return public_line(key)


class _Auth(asyncssh.SSHServer):
    """One connection's authentication against the owning SftpServer's user, password and keys."""

    def __init__(self, owner: "SftpServer") -> None:
        self.owner = owner
        self.conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.owner._live.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._live.discard(self.conn)

    def begin_auth(self, username: str) -> bool:
        return True  # always authenticate, even the right user

    def password_auth_supported(self) -> bool:
        return self.owner.password is not None

    def validate_password(self, username: str, password: str) -> bool:
        ok = username == self.owner.username and hmac.compare_digest(password, self.owner.password or "")
        return self.owner._note(username, "password", ok)

    def public_key_auth_supported(self) -> bool:
        return bool(self.owner.authorized_keys)

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        ok = username == self.owner.username and public_line(key) in self.owner.authorized_keys
        return self.owner._note(username, "publickey", ok)


class SftpServer:
    """An SFTP-only SSH server on a fixed loopback port that outlives stop/start and host key changes."""

    def __init__(self, root: Path | str, *, username: str = "hub", password: str | None = "sandbox-sftp-secret",
                 authorized_keys: list[str] | tuple[str, ...] = (), host_key: asyncssh.SSHKey | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.username, self.password = username, password
        self.authorized_keys = {" ".join(k.split()[:2]) for k in authorized_keys}
        self.host_key = host_key or generate_key()
        self.host, self.port = "127.0.0.1", 0
        self.logins: list[tuple[str, str]] = []  # (username, method) of each accepted authentication
        self.auth_failures = 0
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._live: set[asyncssh.SSHServerConnection] = set()

    @property
    def running(self) -> bool:
        return self._acceptor is not None

    @property
    def directory(self) -> str:
        """The drop as clients name it: the chroot's root."""
        return "/"

    def remote(self, name: str) -> str:
        """A file's path as clients see it."""
        return f"/{name}"

    @property
    def version(self) -> str:
        return f"asyncssh {asyncssh.__version__} (sandbox)"

    @property
    def host_key_line(self) -> str:
        """The server's public host key, "ssh-ed25519 AAAA..."."""
        return public_line(self.host_key)

    @property
    def known_hosts_line(self) -> str:
        """The known_hosts entry pinning this server; OpenSSH and paramiko name non-22 ports "[host]:port"."""
        return f"[{self.host}]:{self.port} {self.host_key_line}"

    @property
    def connections(self) -> int:
        """SSH connections open right now."""
        return len(self._live)

    def write_known_hosts(self, path: Path | str) -> Path:
        """Write a known_hosts file holding only this server's entry (as it is now)."""
        path = Path(path)
        path.write_text(self.known_hosts_line + "\n")
        return path

    def authorize_key(self, public: str) -> None:
        """Accept public-key logins of the configured user with this "ssh-ed25519 AAAA..." key."""
        self.authorized_keys.add(" ".join(public.split()[:2]))

    def rotate_host_key(self, key: asyncssh.SSHKey | None = None) -> None:
        """Use a new host key from the next start on (as after a reinstall, or a man in the middle)."""
        self.host_key = key or generate_key()

    async def start(self, host: str = "127.0.0.1", port: int | None = None) -> "SftpServer":
        """Listen on host:port; the first start picks a free port, later ones reuse it unless told."""
        if self._acceptor is not None:
            return self
        self.host = host
        self._acceptor = await asyncssh.listen(
            host, self.port if port is None else port, server_factory=partial(_Auth, self),
            server_host_keys=[self.host_key], sftp_factory=partial(asyncssh.SFTPServer, chroot=str(self.root)),
            allow_scp=False, reuse_address=True, login_timeout=10)
        self.port = self._acceptor.get_port()
        return self

    async def drop_connections(self) -> int:
        """Close every open SSH connection (the listener stays): clients must reconnect. Answers how many."""
        live = list(self._live)
        for conn in live:
            conn.close()
        for conn in live:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), 5)
        self._live.difference_update(live)
        return len(live)

    async def stop(self) -> None:
        """Stop listening and drop every connection; the files stay on disk."""
        if self._acceptor is not None:
            self._acceptor.close()
            await self.drop_connections()
            await self._acceptor.wait_closed()
            self._acceptor = None

    async def close(self) -> None:
        await self.stop()

    async def restart(self, *, new_host_key: bool = False) -> "SftpServer":
        """Stop, then listen again on the same port, with a new host key when asked."""
        await self.stop()
        if new_host_key:
            self.rotate_host_key()
        return await self.start(self.host, self.port)

    def _note(self, username: str, method: str, ok: bool) -> bool:
        if ok:
            self.logins.append((username, method))
        else:
            self.auth_failures += 1
        return ok


@dataclass(frozen=True)
class Deleted:
    """One file the janitor removed: its path relative to the root, its age and size then, and when."""

    name: str
    age: float
    size: int
    at: float


class Janitor:
    """Deletes files under `root` whose modification time is older than `lifetime` seconds.

    The real drop deletes after 24 h whether or not anybody fetched the file; tests use seconds. `sweep()`
    runs once (deterministic in tests), `start()` sweeps every `interval` seconds in the background.
    """

    def __init__(self, root: Path | str, lifetime: float = 24 * 3600, interval: float | None = None) -> None:
        self.root = Path(root)
        self.lifetime = lifetime
        self.interval = interval if interval is not None else min(max(lifetime / 10, 0.05), 60.0)
        self.deleted: list[Deleted] = []
        self._swept = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    def sweep(self, now: float | None = None) -> list[Deleted]:
        """Delete every file past its lifetime now; answers (and records) what went."""
        now = time.time() if now is None else now
        gone = []
        for path in sorted(p for p in self.root.rglob("*") if p.is_file()):
            with contextlib.suppress(FileNotFoundError):  # fetched or moved meanwhile
                st = path.stat()
                if now - st.st_mtime > self.lifetime:
                    path.unlink()
                    gone.append(Deleted(path.relative_to(self.root).as_posix(), now - st.st_mtime, st.st_size, now))
        self.deleted.extend(gone)
        return gone

    def start(self) -> "Janitor":
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def stop(self) -> None:
        await cancel_and_wait([self._task])
        self._task = None

    async def wait_deleted(self, name: str, timeout: float = 10) -> Deleted:
        """Return the record once the background sweeps deleted `name` (relative to root)."""
        def found() -> Deleted | None:
            return next((d for d in self.deleted if d.name == name), None)
        async with asyncio.timeout(timeout):
            async with self._swept:
                await self._swept.wait_for(lambda: found() is not None)
        return found()  # type: ignore[return-value]

    async def _run(self) -> None:
        while True:
            self.sweep()
            async with self._swept:
                self._swept.notify_all()
            await asyncio.sleep(self.interval)


async def _serve(root: str, port: int) -> None:
    server = await SftpServer(root).start(port=port)
    print(f"sftp://{server.username}:{server.password}@{server.host}:{server.port}/  root={server.root}\n"
          f"known_hosts: {server.known_hosts_line}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m sandbox.sftp_server ROOT [PORT]")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0))
