"""The registered `smtp` adapter: a flow's `call` step sends a mail (Belgium's ERP is reached by email).

Built on aiosmtplib. Connections are kept for `keep_alive` and reused, because STARTTLS plus AUTH
costs several round trips per mail; at most `max_connections` mails are in flight at once. Every
failure leaves `call()` as an engine.errors class (see replies.py); the password is resolved at start
and never logged or put in an error text.
"""

from __future__ import annotations

import asyncio
import email.utils
import ssl
import time
from typing import Any

import aiosmtplib
import structlog

from engine.adapter import Adapter, CallContext, EndpointConfig
from adapters.smtp.compose import build_message, envelope_address, message_domain, parse_payload, wire_bytes
from adapters.smtp.config import SmtpEndpointConfig, is_loopback
from adapters.smtp.replies import send_error
from engine.errors import ConfigError, HubError, RoutingError, ValidationFailed
from engine.messages import derived_id
from engine.registry import register
from engine.secrets import resolve_setting

log = structlog.get_logger("hub.smtp")
OPERATIONS = (None, "send")


@register
class SmtpAdapter(Adapter):
    """Sends one mail per call through a small pool of authenticated SMTP connections."""

    name = "smtp"
    Config = SmtpEndpointConfig
    operations_doc = ("`send` (or none): the payload {to, subject, text, message_id?, headers?, attachments?} is "
                      "mailed; the answer is {message_id, accepted, refused}.")

    config: SmtpEndpointConfig

    def __init__(self, endpoint: str, config: EndpointConfig, services: Any) -> None:
        super().__init__(endpoint, config, services)
        self._password: str | None = None
        self._tls: ssl.SSLContext | None = None
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []  # connected clients, with when they went idle
        self._slots = asyncio.Semaphore(self.config.max_connections)
        self._started = False
        self._sender = ""
        self._domain = "localhost"

    def check_operation(self, operation: str | None) -> str | None:
        if operation in OPERATIONS:
            return None
        return f"endpoint {self.endpoint!r} (smtp) has one operation, send; got {operation!r}"

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        c, issues = self.config, []
        try:
            self._sender = envelope_address(c.from_address)
            self._domain = message_domain(c.from_address)
        except ValueError as exc:
            issues.append(f"endpoint {self.endpoint!r}: from_address: {exc}")
        if c.password is not None:
            self._password = resolve_setting(self.endpoint, "password", c.password, issues)
        if c.security != "none":
            try:
                self._tls = ssl.create_default_context(cafile=c.ca_bundle)
            except (OSError, ssl.SSLError) as exc:
                issues.append(f"endpoint {self.endpoint!r}: ca_bundle: {exc}")
        elif not is_loopback(c.host):
            log.warning("smtp_cleartext", endpoint=self.endpoint, host=c.host,
                        hint="security: none sends the password in clear; use starttls or tls off loopback")
        if issues:
            raise ConfigError(issues)
        self._started = True

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for client, _ in idle:
            try:
                await asyncio.wait_for(client.quit(), 2.0)
            except Exception:
                client.close()
        self._started = False

    # --- the call ------------------------------------------------------------------------------

    async def call(self, operation: str | None, payload: Any, ctx: CallContext) -> Any:
        if not self._started:
            raise RuntimeError(f"smtp endpoint {self.endpoint!r} used before start()")
        if operation not in OPERATIONS:
            raise RoutingError(self.check_operation(operation) or "unknown operation")
        if isinstance(payload, dict) and not payload.get("to") and self.config.to:
            payload = {**payload, "to": self.config.to}
        mail = parse_payload(self.endpoint, payload)
        message_id = mail.message_id or self._message_id(ctx, mail.to, mail.subject)
        msg = build_message(mail, self.config.from_address, message_id)
        if ctx.correlation_id and "X-Correlation-Id" not in msg:
            msg["X-Correlation-Id"] = ctx.correlation_id
        try:
            recipients = [envelope_address(a) for a in mail.to]
        except ValueError as exc:
            raise ValidationFailed(f"{self.endpoint}: send payload to: {exc}") from None
        data = wire_bytes(msg)
        timeout = ctx.timeout if ctx.timeout and ctx.timeout > 0 else self.config.timeout
        where = f"{self.endpoint}: send to {', '.join(recipients)}"
        try:
            async with asyncio.timeout(timeout):
                async with self._slots:
                    refused = await self._send(recipients, data, timeout)
        except HubError:
            raise
        except Exception as exc:
            raise send_error(where, exc, self.config.username, timeout) from exc
        accepted = [r for r in recipients if r not in refused]
        log.info("smtp_sent", endpoint=self.endpoint, message_id=message_id, accepted=len(accepted),
                 refused=len(refused), bytes=len(data))
        return {"message_id": message_id, "accepted": accepted, "refused": refused}

    def _message_id(self, ctx: CallContext, to: list[str], subject: str) -> str:
        """Stable across redeliveries of the same message (a resend carries the same Message-ID, so a
        receiver that dedupes on it sees a duplicate); random when the call has no identity."""
        if not ctx.msg_id:
            return email.utils.make_msgid(domain=self._domain)
        return f"<{derived_id('smtp', ctx.msg_id, ','.join(to), subject)}@{self._domain}>"

    async def _send(self, recipients: list[str], data: bytes, timeout: float) -> dict[str, dict[str, Any]]:
        """One mail transaction; answers the refused recipients (a partial refusal still sends)."""
        client, reused = await self._acquire(timeout)
        done = False
        try:
            try:
                await client.mail(self._sender)
            except aiosmtplib.SMTPServerDisconnected:
                if not reused:
                    raise
                client.close()  # the server dropped the idle connection; nothing was sent on it yet
                client = await self._open(timeout)
                await client.mail(self._sender)
            refused: dict[str, dict[str, Any]] = {}
            errors: list[aiosmtplib.SMTPRecipientRefused] = []
            for address in recipients:
                try:
                    await client.rcpt(address)
                except aiosmtplib.SMTPRecipientRefused as exc:
                    errors.append(exc)
                    refused[address] = {"code": exc.code, "message": exc.message}
            if len(errors) == len(recipients):
                raise aiosmtplib.SMTPRecipientsRefused(errors)
            await client.data(data)
            done = True
            return refused
        finally:
            self._release(client, done)

    # --- the pool ------------------------------------------------------------------------------

    async def _acquire(self, timeout: float) -> tuple[aiosmtplib.SMTP, bool]:
        """An idle connection still open and fresh enough, else a new one (connected, TLS, AUTH done)."""
        now = time.monotonic()
        while self._idle:
            client, since = self._idle.pop()
            if client.is_connected and now - since < self.config.keep_alive:
                return client, True
            client.close()
        return await self._open(timeout), False

    async def _open(self, timeout: float) -> aiosmtplib.SMTP:
        c = self.config
        client = aiosmtplib.SMTP(
            hostname=c.host, port=c.port, use_tls=c.security == "tls", start_tls=c.security == "starttls",
            tls_context=self._tls, username=c.username, password=self._password, timeout=timeout,
            local_hostname=c.helo_name or self._domain)
        try:
            await client.connect()
        except BaseException:
            client.close()
            raise
        return client

    def _release(self, client: aiosmtplib.SMTP, reusable: bool) -> None:
        """Back to the pool after a clean transaction; closed after any failure (its state is unknown)."""
        if reusable and client.is_connected and self.config.keep_alive > 0 and self._started:
            self._idle.append((client, time.monotonic()))
        else:
            client.close()
