"""One SSH connection with an SFTP channel (paramiko), the server's host key pinned.

paramiko blocks: every method here is called from a worker thread, never on the event loop. The
known_hosts file is loaded read-only (paramiko's "system" keys, never saved back) and a key it does
not list, or a key that differs from the one it lists, is refused with an error naming host, port and
both fingerprints, so whoever reads the log can check them with the server's owner.

File names are bytes on an SFTP v3 server (OpenSSH sends what the file system holds): paramiko's
`listdir_attr` decodes them as UTF-8 and raises for the whole listing on one name that is not, so the
directory is read here with the same requests, keeping each name's bytes (MEASURED.md).
"""

from __future__ import annotations

import posixpath
import socket
import stat
from dataclasses import dataclass
from typing import Any

import paramiko
from paramiko.sftp import CMD_CLOSE, CMD_HANDLE, CMD_NAME, CMD_OPENDIR, CMD_READDIR

from adapters.sftp.config import Credentials, SftpEndpointConfig
from engine.errors import TargetRejected

# Read-ahead per file: SFTP reads of 32 KiB in flight, READ_AHEAD bytes of them past the reader's
# position (asked for by the reader: see ReadAhead), and the SSH window that lets the server send them
# without waiting for us. Memory stays bounded by these (~4 MiB), whatever the file's size; paramiko's
# defaults (no limit on requests, a 2 MiB window) read ~30% slower on loopback (bench/pdf_store.py).
READ_AHEAD = 4 * 1024 * 1024
WINDOW = 8 * 1024 * 1024


class HostKeyRefused(TargetRejected):
    """The server's host key is not the pinned one (unknown or changed): nothing is read from it."""


class LoginRefused(TargetRejected):
    """The server refused the user, password or key."""


# what a dropped or dead connection raises in paramiko (socket.timeout is an OSError)
CONNECTION_TROUBLE = (OSError, EOFError, paramiko.SSHException)


@dataclass(frozen=True)
class RemoteFile:
    """A regular file in the watched directory as one listing saw it."""

    name: str   # as text; a name that is not UTF-8 has its bad bytes escaped (\xff): see raw_path
    path: str
    size: int
    mtime: int  # seconds since the epoch, the server's clock (SFTP v3 has whole seconds)
    raw_path: bytes | None = None  # the path's bytes when the name is not valid UTF-8 (opened by these)

    @property
    def identity(self) -> str:
        """Stable for one version of one file: a file replaced under the same name is a new one."""
        where = self.path if self.raw_path is None else "bytes:" + self.raw_path.hex()
        return f"{where}:{self.size}:{self.mtime}"

    @property
    def name_is_text(self) -> bool:
        return self.raw_path is None


def list_raw(sftp: paramiko.SFTPClient, directory: str) -> list[tuple[bytes, paramiko.SFTPAttributes]]:
    """(name bytes, attributes) of every entry but . and .., the directory handle always closed.
    paramiko's own requests (OPENDIR, READDIR until EOF, CLOSE) without its UTF-8 decoding of names."""
    t, msg = sftp._request(CMD_OPENDIR, directory)  # noqa: SLF001 - the public API decodes names
    if t != CMD_HANDLE:
        raise paramiko.SFTPError("Expected handle")
    handle = msg.get_binary()
    entries = []
    try:
        while True:
            try:
                t, msg = sftp._request(CMD_READDIR, handle)  # noqa: SLF001
            except EOFError:
                break
            if t != CMD_NAME:
                raise paramiko.SFTPError("Expected name response")
            for _ in range(msg.get_int()):
                name, longname = msg.get_string(), msg.get_string()
                attr = paramiko.SFTPAttributes._from_msg(  # noqa: SLF001
                    msg, name.decode("utf-8", "backslashreplace"), longname.decode("utf-8", "backslashreplace"))
                if name not in (b".", b".."):
                    entries.append((name, attr))
    finally:
        try:
            sftp._request(CMD_CLOSE, handle)  # noqa: SLF001
        except (OSError, EOFError, paramiko.SSHException):
            pass
    return entries


def describe_key(key: paramiko.PKey) -> str:
    """`ssh-ed25519 SHA256:...`, as `ssh-keygen -lf` prints it."""
    return f"{key.get_name()} {key.fingerprint}"


class _PinnedOnly(paramiko.MissingHostKeyPolicy):
    """A host key known_hosts does not list is refused with its fingerprint; it is never added."""

    def __init__(self, where: str, known_hosts: str) -> None:
        self.where = where
        self.known_hosts = known_hosts

    def missing_host_key(self, client: Any, hostname: str, key: paramiko.PKey) -> None:
        raise HostKeyRefused(
            f"sftp {self.where}: host key refused: the server offered {describe_key(key)}, and {self.known_hosts} "
            f"has no key for {hostname}; an unknown key is never accepted automatically: check that fingerprint "
            f"with the server's owner, then add the server's line to {self.known_hosts}")


class SftpSession:
    """A logged-in SFTP session; `open()` connects, the other methods read; all of them block."""

    def __init__(self, config: SftpEndpointConfig, credentials: Credentials) -> None:
        self.config = config
        self.credentials = credentials
        self.where = f"{config.host}:{config.port}"
        self._client: paramiko.SSHClient | None = None
        self.sftp: paramiko.SFTPClient | None = None

    def open(self) -> None:
        """Connect, check the host key against known_hosts (read now), log in, open the SFTP channel."""
        c = self.config
        client = paramiko.SSHClient()
        try:
            client.load_system_host_keys(c.known_hosts)  # read-only: paramiko never writes these back
        except (OSError, paramiko.SSHException) as exc:
            raise HostKeyRefused(f"sftp {self.where}: cannot read known_hosts {c.known_hosts}: {exc}") from None
        client.set_missing_host_key_policy(_PinnedOnly(self.where, c.known_hosts))
        try:
            client.connect(c.host, c.port, username=c.username, timeout=c.timeout, banner_timeout=c.timeout,
                           auth_timeout=c.timeout, channel_timeout=c.timeout, **self.credentials.paramiko_kwargs())
            sftp = paramiko.SFTPClient.from_transport(client.get_transport(), window_size=WINDOW)
            if sftp is None:
                raise paramiko.SSHException(f"sftp {self.where}: the server opened no SFTP channel")
            sftp.get_channel().settimeout(c.timeout)  # a read that makes no progress fails instead of hanging
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyRefused(
                f"sftp {self.where}: host key refused: the server offered {describe_key(exc.key)}, but "
                f"{c.known_hosts} pins {describe_key(exc.expected_key)} for {exc.hostname}: the server was "
                "reinstalled or someone is in the middle; nothing is read from it until known_hosts is corrected "
                "(check the new fingerprint with the server's owner first)") from None
        except paramiko.AuthenticationException as exc:
            client.close()
            raise LoginRefused(f"sftp {self.where}: login of {c.username!r} refused: {exc}") from None
        except BaseException:
            client.close()
            raise
        self._client, self.sftp = client, sftp

    def listdir(self, directory: str) -> list[RemoteFile]:
        """Regular files of `directory`, oldest first; hidden names (a writer's `.x.part`) are skipped. A
        name that is not valid UTF-8 is listed with its bytes (`raw_path`), not a reason to fail the rest."""
        assert self.sftp is not None
        found = []
        for raw, attr in list_raw(self.sftp, directory):
            if raw.startswith(b".") or attr.st_mode is None or not stat.S_ISREG(attr.st_mode):
                continue
            try:
                name, raw_path = raw.decode("utf-8"), None
            except UnicodeDecodeError:
                name = raw.decode("utf-8", "backslashreplace")
                raw_path = posixpath.join(directory.encode("utf-8"), raw)
            found.append(RemoteFile(name, posixpath.join(directory, name), int(attr.st_size or 0),
                                    int(attr.st_mtime or 0), raw_path))
        found.sort(key=lambda f: (f.mtime, f.name))
        return found

    def open_file(self, remote: RemoteFile) -> "ReadAhead":
        """Open for reading front to back with a bounded read-ahead (pipelined requests, so loopback
        speed is not round-trip bound, and never more than READ_AHEAD asked for beyond the reader)."""
        assert self.sftp is not None
        fh = self.sftp.open(remote.raw_path or remote.path, "rb")  # paramiko sends a bytes path as it is
        return ReadAhead(fh, remote.size)

    def exists(self, remote: RemoteFile) -> bool:
        """Whether the file is still there (False after the janitor or someone else removed it)."""
        assert self.sftp is not None
        try:
            self.sftp.stat(remote.raw_path or remote.path)
        except FileNotFoundError:
            return False
        return True

    def alive(self) -> bool:
        """Whether the SSH transport still runs (a failed file read on a live one is that file's problem)."""
        transport = self._client.get_transport() if self._client is not None else None
        return bool(transport is not None and transport.is_active())

    def close(self) -> None:
        client, self._client, self.sftp = self._client, None, None
        if client is not None:
            try:
                client.close()
            except (OSError, EOFError, paramiko.SSHException, socket.error):
                pass


class ReadAhead:
    """A remote file read front to back, its read requests sent ahead by the reader itself: before each
    read, enough to cover READ_AHEAD beyond the position (paramiko's prefetch bookkeeping, without its
    request thread). With that thread, a reader that caught up with it (the thread descheduled on a
    loaded machine) found the prefetch "done", fell back to plain reads, and each plain read then
    parsed every answer still arriving into the prefetch buffer, unread, while the thread went on
    asking: the whole file in memory (a 50 MiB PDF, tests/test_sftp_ingress.py, 1 run in 5 under load)."""

    def __init__(self, fh: paramiko.SFTPFile, size: int) -> None:
        self.fh, self.size, self._asked = fh, size, 0

    def read(self, n: int) -> bytes:
        self._ask(self.fh.tell() + max(n, 0) + READ_AHEAD)
        return self.fh.read(n)

    def _ask(self, end: int) -> None:
        fh, end = self.fh, min(end, self.size)
        if self._asked >= end:
            return
        step = fh.MAX_REQUEST_SIZE
        chunks = [(offset, min(step, end - offset)) for offset in range(self._asked, end, step)]
        self._asked = end
        fh._prefetch_thread(chunks, None)  # sends the requests, here; answers are read by fh.read
        with fh._prefetch_lock:  # "done" means no answer outstanding: fh.read waits for them otherwise
            fh._prefetching, fh._prefetch_done = True, not fh._prefetch_extents

    def close(self) -> None:
        self.fh.close()

    def __enter__(self) -> "ReadAhead":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
