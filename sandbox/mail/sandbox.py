"""A real SMTP server and a real IMAP server on loopback, sharing one mail store, for tests and the demo.

    async with MailSandbox(users={"hub@plu.example": "pw", "erp-be@plu.example": "pw2"}) as mail:
        await aiosmtplib.send(msg, hostname=mail.host, port=mail.smtp_port, start_tls=True,
                              username="hub@plu.example", password="pw", tls_context=mail.client_context())
        imap = aioimaplib.IMAP4_SSL(mail.host, mail.imap_port, ssl_context=mail.client_context())

With `tls=True` (the default) SMTP offers STARTTLS and refuses AUTH and MAIL before it, and IMAP is
implicit TLS (IMAPS: aioimaplib cannot STARTTLS), both with a certificate from a CA made at start
(`ca_file`, `client_context()`). With `tls=False` both are plain TCP and SMTP AUTH is allowed in clear,
acceptable only because the servers listen on loopback. SMTP always requires AUTH (PLAIN or LOGIN).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType

from sandbox.mail.imap import ImapServer
from sandbox.mail.smtp import SmtpServer
from sandbox.mail.store import MailStore, StoredMessage
from sandbox.mail.tls import SandboxTls


class MailSandbox:
    """Both servers and the store; `stop_imap()` / `start_imap()` restart IMAP on its port, keeping mail."""

    def __init__(self, users: Mapping[str, str], *, tls: bool = True, host: str = "127.0.0.1",
                 hostname: str = "mail.plu.example") -> None:
        if not users:
            raise ValueError("the mail sandbox needs at least one user")
        self.users = dict(users)
        self.host = host
        self.hostname = hostname
        self.tls = SandboxTls(hostname) if tls else None
        server_ctx = self.tls.server_context() if self.tls else None
        self.store = MailStore(hostname, server_ctx)
        self.smtp = SmtpServer(self.store, host, hostname=hostname, tls_context=server_ctx)
        self.imap = ImapServer(self.store, host, ssl_context=server_ctx)
        self._started = False

    async def start(self) -> "MailSandbox":
        for address, password in self.users.items():
            await self.store.add_user(address, password)
        self._started = True
        await self.smtp.start()
        await self.imap.start()
        return self

    async def stop(self) -> None:
        await self.imap.stop()
        await self.smtp.stop()
        if self.tls:
            self.tls.close()

    async def __aenter__(self) -> "MailSandbox":
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    # --- where clients connect ------------------------------------------------------------------

    @property
    def smtp_port(self) -> int:
        return self.smtp.port

    @property
    def imap_port(self) -> int:
        return self.imap.port

    @property
    def ca_file(self) -> Path | None:
        """PEM file of the CA that signed both servers' certificate (None without TLS)."""
        return self.tls.ca_file if self.tls else None

    def client_context(self) -> ssl.SSLContext | None:
        """A verifying client SSL context for either server (None without TLS)."""
        return self.tls.client_context() if self.tls else None

    # --- controls -------------------------------------------------------------------------------

    async def add_user(self, address: str, password: str) -> None:
        """Another mailbox owner, e.g. one per test so tests never share a mailbox."""
        self.users[address] = password
        if self._started:
            await self.store.add_user(address, password)

    def bounce(self, address: str, reply: str = "550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown in "
               "local recipient table", ret: str = "full") -> None:
        """Mail to `address` is accepted and then bounced to its sender, as a real MTA does when the next hop
        refuses it: a Postfix-style RFC 3464 report in the sender's INBOX (RET full or hdrs)."""
        self.smtp.bounce(address, reply, ret)

    def deliver_again(self, address: str) -> None:
        """Undo `bounce`: mail for a local `address` is delivered again."""
        self.smtp.deliver_again(address)

    async def stop_imap(self) -> None:
        """Close the IMAP listener and drop its clients (each gets `* BYE`); SMTP and the store go on."""
        await self.imap.stop()

    async def start_imap(self) -> None:
        """Listen for IMAP again on the same port, over the same store."""
        await self.imap.start()

    async def restart_imap(self) -> None:
        await self.imap.stop()
        await self.imap.start()

    async def inject(self, user: str, raw: bytes, mailbox: str = "INBOX", flags: Iterable[str] = ()) -> int:
        """Put raw bytes (hostile or broken MIME welcome) into a mailbox, bypassing SMTP; answers the UID."""
        return await self.store.deliver(user, raw, mailbox, flags)

    # --- observation ----------------------------------------------------------------------------

    async def messages(self, user: str, mailbox: str = "INBOX") -> list[StoredMessage]:
        """What a mailbox holds now: UID, flags and raw MIME of each message, oldest first."""
        return await self.store.messages(user, mailbox)

    async def mailboxes(self, user: str) -> list[str]:
        return await self.store.mailbox_names(user)

    def delivered(self, user: str) -> int:
        """Messages delivered to the user so far (by SMTP or `inject`), whatever has happened to them since."""
        return self.store.delivered(user)

    async def wait_for_delivery(self, user: str, count: int, timeout: float = 10.0) -> None:
        """Until `count` messages in all have been delivered to the user (TimeoutError after `timeout`)."""
        await self.store.wait_for_delivery(user, count, timeout)
