"""aiosmtpd as the sandbox's submission server: AUTH required, STARTTLS before AUTH, delivery into the store.

aiosmtpd's `Controller` runs the server on a thread with its own event loop; the store's pymap mailboxes
belong to the test's loop, so the sandbox serves `aiosmtpd.smtp.SMTP` on that loop instead. Mail for a
user of the store lands in that user's INBOX; any other recipient is refused at RCPT (no relaying).
A recipient set to bounce (`bounces`) is accepted at RCPT, as a submission server accepts mail for a
remote domain, and then bounced the way Postfix does when the next hop refuses it: an RFC 3464 report
(sandbox/mail/bounces.py) delivered to the envelope sender's INBOX.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import ssl
import warnings
import weakref
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from sandbox.mail.bounces import postfix_dsn
from sandbox.mail.store import MailStore


class _DropKnownWarnings(logging.Filter):
    """aiosmtpd 1.4.6 warns that `Session.login_data` is deprecated on every AUTH it completes itself, and
    that AUTH without TLS is risky, which is the plain mode's documented choice on loopback."""

    NOISE = ("login_data is deprecated", "auth_require_tls == False")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(noise in record.getMessage() for noise in self.NOISE)


logging.getLogger("mail.log").addFilter(_DropKnownWarnings())


class _Delivery:
    """aiosmtpd handler: accept local recipients, append each accepted mail to their INBOX."""

    def __init__(self, store: MailStore, hostname: str) -> None:
        self.store = store
        self.hostname = hostname
        self.bounces: dict[str, tuple[str, str]] = {}  # address -> (the next hop's SMTP reply, RET: full | hdrs)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,  # noqa: N802
                          rcpt_options: list[str]) -> str:
        if address.lower() in self.bounces:
            envelope.rcpt_tos.append(address)
            return "250 2.1.5 OK"
        if self.store.user_for(address) is None:
            return f"550 5.1.1 <{address}>: no such mailbox here (this server does not relay)"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        raw = envelope.original_content or b""
        received = (f"Received: from {session.host_name or 'unknown'} ([{session.peer[0]}])\r\n"
                    f"\tby {self.hostname} with ESMTP{'S' if session.ssl else ''}A;"
                    f" {email.utils.formatdate(localtime=False)}\r\n").encode("ascii", "replace")
        for address in envelope.rcpt_tos:
            if address.lower() in self.bounces:
                await self._bounce(address, envelope.mail_from or "", received + raw)
                continue
            user = self.store.user_for(address)
            if user is not None:
                await self.store.deliver(user, received + raw)
        return "250 2.0.0 OK: queued"

    async def _bounce(self, address: str, sender: str, raw: bytes) -> None:
        """What the submission server does once the next hop refused `address`: a DSN to the sender."""
        owner = self.store.user_for(sender)
        if owner is None:
            return  # a bounce to a sender we do not host would leave the sandbox: dropped
        reply, ret = self.bounces[address.lower()]
        await self.store.deliver(owner, postfix_dsn(raw, address, sender, reply, ret=ret, host=self.hostname))


class SmtpServer:
    """An SMTP submission server on a loopback port; `tls_context` turns on (and requires) STARTTLS."""

    def __init__(self, store: MailStore, host: str = "127.0.0.1", *, hostname: str,
                 tls_context: ssl.SSLContext | None = None, port: int = 0) -> None:
        self.store = store
        self.host = host
        self.port = port
        self.hostname = hostname
        self.tls_context = tls_context
        self._handler = _Delivery(store, hostname)
        self._server: asyncio.AbstractServer | None = None
        self._sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()

    def _protocol(self) -> SMTP:
        tls = self.tls_context is not None
        with warnings.catch_warnings():  # AUTH without TLS is the plain mode's documented choice (loopback)
            warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")
            protocol = SMTP(self._handler, hostname=self.hostname, tls_context=self.tls_context,
                            require_starttls=tls, auth_required=True, auth_require_tls=tls,
                            authenticator=self._authenticate, loop=asyncio.get_running_loop())
        self._sessions.add(protocol)
        return protocol

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                      auth_data: Any) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            user = self.store.user_for(auth_data.login.decode("utf-8", "replace"))
            if user and self.store.check_password(user, auth_data.password.decode("utf-8", "replace")):
                return AuthResult(success=True, auth_data=user)
        return AuthResult(success=False, handled=False)

    def bounce(self, address: str, reply: str = "550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown in "
               "local recipient table", ret: str = "full") -> None:
        """Accept mail for `address`, then bounce it to its sender with `reply` (RET=full or hdrs)."""
        self._handler.bounces[address.lower()] = (reply, ret)

    def deliver_again(self, address: str) -> None:
        """Stop bouncing mail for `address` (a local user gets mail again)."""
        self._handler.bounces.pop(address.lower(), None)

    async def start(self) -> None:
        if self._server is None:
            loop = asyncio.get_running_loop()
            self._server = await loop.create_server(self._protocol, self.host, self.port, reuse_address=True)
            self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for session in list(self._sessions):
            if session.transport is not None:
                session.transport.close()
        await server.wait_closed()
