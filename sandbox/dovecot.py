"""Dovecot (Debian's dovecot-imapd) as an unprivileged, throw-away IMAP server for tests and benchmarks.

    async with DovecotServer(users={"hub@plu.example": "pw"}) as mail:
        uid = await mail.inject("hub@plu.example", raw)          # IMAP APPEND, as a client stores a mail
        await mail.deliver("hub@plu.example", raw)               # dovecot-lda, as an MTA delivers one
        await mail.messages("hub@plu.example", "Processed")      # UID, flags, raw bytes (read over IMAP)
        await mail.stop_imap(); await mail.start_imap()          # a restart: every session is cut

Everything lives in a temporary directory of its own: config, a passwd-file user database (PLAIN
passwords: test accounts only), maildirs, sockets, state. It listens on 127.0.0.1 on a free port, with
implicit TLS (IMAPS: aioimaplib has no STARTTLS) and a certificate from a CA made at start, or plain
with `tls=False` (plaintext login allowed: loopback only). Started as root (CI), the login processes run
as `dovenull`, Dovecot's own as `dovecot` and the mail as `nobody` (Dovecot refuses root for each of
them); started as another user, everything runs as that user. The server and its session processes die
with the test process. Facts measured here (MEASURED.md): IDLE announces new mail ~0.5 s after it is
stored (Dovecot's notify delay); a SIGTERM to the master leaves the sessions running, so `stop_imap`
kills them as a real restart or crash would.
"""

from __future__ import annotations

import asyncio
import getpass
import grp
import imaplib
import os
import pwd
import re
import ssl
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from sandbox.server_process import ServerProcess, descendants, free_port, missing_reason

LDA = "/usr/lib/dovecot/dovecot-lda"
_APPENDUID = re.compile(rb"\[APPENDUID \d+ (\d+)\]")
_FETCHED = re.compile(rb"UID (\d+) FLAGS \(([^)]*)\)")


@dataclass(frozen=True)
class StoredMessage:
    """One message as the server holds it: IMAP UID, flags (e.g. "\\Seen"), raw MIME as IMAP fetches it."""

    uid: int
    flags: frozenset[str]
    raw: bytes


def _ids() -> tuple[str, str, str, int, int]:
    """(login user, internal user and group, mail uid and gid) for the user running the tests."""
    if os.geteuid() != 0:
        me = getpass.getuser()
        return me, me, grp.getgrgid(os.getegid()).gr_name, os.geteuid(), os.getegid()
    nobody = pwd.getpwnam("nobody")
    return "dovenull", "dovecot", "dovecot", nobody.pw_uid, nobody.pw_gid


class DovecotServer:
    """One Dovecot instance; `imap_port` stays the same across stop_imap / start_imap."""

    def __init__(self, users: Mapping[str, str], *, tls: bool = True, host: str = "127.0.0.1",
                 hostname: str = "mail.plu.example") -> None:
        if why := missing_reason("dovecot"):
            raise RuntimeError(why)
        if not users:
            raise ValueError("the Dovecot server needs at least one user")
        self.users = dict(users)
        self.host, self.hostname = host, hostname
        self.imap_port = 0
        self._tls_enabled = tls
        self.tls = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._server: ServerProcess | None = None
        self.imap = self  # as MailSandbox.imap: the IMAP server (`connections`)
        self.version = subprocess.run(["dovecot", "--version"], capture_output=True, text=True).stdout.strip()

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> "DovecotServer":
        self._dir = tempfile.TemporaryDirectory(prefix="plu-dovecot-")
        base = self.base = Path(self._dir.name)
        base.chmod(0o755)  # Dovecot's own processes (another user when started as root) read below it
        login, internal, group, uid, gid = _ids()
        self._uid, self._gid = uid, gid
        (base / "run").mkdir()
        (base / "state").mkdir()
        (base / "home").mkdir()
        os.chown(base / "home", uid, gid)
        self._write_passwd()
        ssl_lines = ["ssl = no"]
        if self._tls_enabled:
            from sandbox.mail.tls import SandboxTls  # a CA made now, trusted by the tests' clients only

            self.tls = SandboxTls(self.hostname)
            cert, key = base / "server.pem", base / "server.key"
            self.tls._cert.private_key_pem.write_to_path(str(key))  # noqa: SLF001 - trustme keeps them there
            cert.write_bytes(b"".join(blob.bytes() for blob in self.tls._cert.cert_chain_pems))  # noqa: SLF001
            key.chmod(0o600)
            ssl_lines = ["ssl = required", f"ssl_cert = <{cert}", f"ssl_key = <{key}", "ssl_min_protocol = TLSv1.2"]
        self.imap_port = self.imap_port or free_port(self.host)
        (base / "dovecot.conf").write_text("\n".join([
            f"base_dir = {base}/run", f"state_dir = {base}/state",
            "log_path = /dev/stderr", "info_log_path = /dev/stderr", "protocols = imap",
            f"listen = {self.host}", *ssl_lines,
            "disable_plaintext_auth = no",        # plain IMAP on loopback (tls=False) logs in too
            "auth_mechanisms = plain login", "auth_verbose = yes",
            f"default_login_user = {login}", f"default_internal_user = {internal}",
            f"default_internal_group = {group}", f"first_valid_uid = {min(uid, 500)}",
            f"first_valid_gid = {min(gid, 1)}",
            "passdb {", "  driver = passwd-file", f"  args = scheme=PLAIN username_format=%u {base}/users/%u", "}",
            "userdb {", "  driver = static", f"  args = uid={uid} gid={gid} home={base}/home/%u", "}",
            "mail_location = maildir:~/Maildir",
            "namespace inbox {", "  inbox = yes", "  separator = /", "}",
            "protocol imap {", "  mail_max_userip_connections = 100", "}",
            "service imap-login {", "  chroot =",
            "  inet_listener imap {", f"    port = {0 if self._tls_enabled else self.imap_port}", "  }",
            "  inet_listener imaps {", f"    port = {self.imap_port if self._tls_enabled else 0}",
            f"    ssl = {'yes' if self._tls_enabled else 'no'}", "  }", "}",
            "service anvil {", "  chroot =", "}",
            "service stats {", "  unix_listener stats-writer {", "    mode = 0666", "  }", "}", ""]))
        await self.start_imap()
        return self

    async def start_imap(self) -> None:
        """Start the server (again, on the same port, over the same mail)."""
        if self._server is not None:
            return
        (self.base / "run" / "master.pid").unlink(missing_ok=True)
        server = ServerProcess(["dovecot", "-F", "-c", str(self.base / "dovecot.conf")],
                               ready=lambda line: "starting up" in line, on_line=self._log, name="dovecot")
        await server.start()
        self._server = server
        await self._until_listening()

    async def _until_listening(self, timeout: float = 10.0) -> None:
        """The master logs "starting up" before its listeners accept: wait until a connect works."""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    _, writer = await asyncio.open_connection(self.host, self.imap_port)
                except OSError:
                    await asyncio.sleep(0.02)
                    continue
                writer.close()
                return

    async def stop_imap(self) -> None:
        """Stop the master and kill every session (each client sees its connection drop); mail stays."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(children=True)

    async def restart_imap(self) -> None:
        await self.stop_imap()
        await self.start_imap()

    async def stop(self) -> None:
        await self.stop_imap()
        if self.tls is not None:
            self.tls.close()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    async def __aenter__(self) -> "DovecotServer":
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    def _log(self, line: str) -> None:
        if "Error" in line or "Fatal" in line or "Panic" in line:
            print(f"dovecot: {line}", flush=True)

    # --- users and clients ----------------------------------------------------------------------

    def _write_passwd(self) -> None:
        """One passwd-file per user (the passdb path has %u): a user added while Dovecot runs is a file
        it has never read, whereas a changed shared file is re-read at most once a second."""
        folder = self.base / "users"
        folder.mkdir(mode=0o755, exist_ok=True)
        for user, password in self.users.items():
            path = folder / user
            tmp = path.with_suffix(".new")
            tmp.write_text(f"{user}:{{PLAIN}}{password}\n")
            tmp.chmod(0o644)
            tmp.replace(path)

    async def add_user(self, address: str, password: str) -> None:
        self.users[address] = password
        if self._dir is not None:
            self._write_passwd()

    @property
    def ca_file(self) -> Path | None:
        return self.tls.ca_file if self.tls else None

    def client_context(self) -> ssl.SSLContext | None:
        return self.tls.client_context() if self.tls else None

    @property
    def connections(self) -> int:
        """IMAP sessions open now (Dovecot runs one `imap` process per logged-in client)."""
        if self._server is None or self._server.pid is None:
            return 0
        count = 0
        for pid in descendants(self._server.pid):
            try:
                count += Path(f"/proc/{pid}/comm").read_text().strip() == "imap"
            except OSError:
                pass
        return count

    def _client(self, user: str) -> imaplib.IMAP4:
        if self.tls is not None:
            client: imaplib.IMAP4 = imaplib.IMAP4_SSL(self.host, self.imap_port, ssl_context=self.client_context(),
                                                      timeout=30)
        else:
            client = imaplib.IMAP4(self.host, self.imap_port, timeout=30)
        client.login(user, self.users[user])
        return client

    # --- mail in and out ------------------------------------------------------------------------

    async def inject(self, user: str, raw: bytes, mailbox: str = "INBOX", flags: Iterable[str] = ()) -> int:
        """Store raw bytes in a mailbox (created if missing) by IMAP APPEND; answers the UID (UIDPLUS)."""
        def append() -> int:
            client = self._client(user)
            try:
                client.create(_quoted(mailbox))  # NO when it exists: fine
                typ, data = client.append(_quoted(mailbox), f"({' '.join(flags)})" if flags else None, None, raw)
                if typ != "OK" or not (found := _APPENDUID.search(data[0] or b"")):
                    raise RuntimeError(f"APPEND to {mailbox}: {typ} {data!r}")
                return int(found.group(1))
            finally:
                client.logout()

        return await asyncio.to_thread(append)

    async def deliver(self, user: str, raw: bytes, mailbox: str = "INBOX") -> None:
        """Deliver as a mail server does: dovecot-lda, the local delivery agent an MTA runs. It runs as the
        mail user with that user's home, so it needs no auth service: mail arrives while IMAP is down too."""
        home = self.base / "home" / user
        uid, gid = self._uid, self._gid

        def as_mail_user() -> None:
            if os.geteuid() == 0:
                os.setgid(gid)
                os.setuid(uid)

        if not home.exists():
            home.mkdir()
            os.chown(home, uid, gid)
        process = await asyncio.create_subprocess_exec(
            LDA, "-c", str(self.base / "dovecot.conf"), "-m", mailbox, "-f", "erp-be@plu.example",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={"HOME": str(home), "USER": user, "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            preexec_fn=as_mail_user)
        out, _ = await process.communicate(raw)
        if process.returncode != 0:
            raise RuntimeError(f"dovecot-lda exited {process.returncode}: {out.decode(errors='replace')}")

    async def messages(self, user: str, mailbox: str = "INBOX") -> list[StoredMessage]:
        """What a mailbox holds now, oldest first, read over IMAP without changing a flag (EXAMINE, PEEK)."""
        def read() -> list[StoredMessage]:
            client = self._client(user)
            try:
                typ, _ = client.select(_quoted(mailbox), readonly=True)
                if typ != "OK":
                    raise KeyError(f"{user} has no mailbox {mailbox!r}")
                typ, data = client.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[])")
                found = []
                for item in data:
                    if isinstance(item, tuple) and (m := _FETCHED.search(item[0])):
                        flags = frozenset(f for f in m.group(2).decode().split() if f != "\\Recent")
                        found.append(StoredMessage(int(m.group(1)), flags, item[1]))
                return sorted(found, key=lambda s: s.uid)
            finally:
                client.logout()

        return await asyncio.to_thread(read)


def _quoted(mailbox: str) -> str:
    """A mailbox name for imaplib (which sends arguments as given): quoted, modified UTF-7."""
    from adapters.imap.session import mailbox_name

    return mailbox_name(mailbox)

