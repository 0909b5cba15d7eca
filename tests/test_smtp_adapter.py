"""The `smtp` adapter against the real mail sandbox (aiosmtpd with STARTTLS and AUTH, pymap over IMAPS)."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import os
import socket
import uuid
from collections.abc import AsyncIterator

import aioimaplib
import pytest
import pytest_asyncio

from engine.adapter import CallContext
from adapters.smtp import SmtpAdapter, SmtpEndpointConfig, reply_error
from engine.errors import (TargetRejected, TargetServerError, TargetTimeout, TargetUnavailable, Throttled,
                           ValidationFailed)
from sandbox.mail import MailSandbox

HUB = "hub@plu.example"
PASSWORD = "smtp-test-pw"
# a Belgian flat file as the ERP reads it: ISO-8859-1, CRLF line ends, a trailing CRLF
FLAT = "HDR|REQ|tok-1|PLU-HUB\r\nCSW|C-1|Liège|Schaerbeek|Müller\r\nTRL|1\r\n".encode("iso-8859-1")


@pytest_asyncio.fixture(scope="module")
async def mail() -> AsyncIterator[MailSandbox]:
    async with MailSandbox(users={HUB: PASSWORD}) as sandbox:
        yield sandbox


@pytest_asyncio.fixture
async def user(mail: MailSandbox) -> str:
    """A mailbox of this test's own."""
    address = f"u{uuid.uuid4().hex[:8]}@plu.example"
    await mail.add_user(address, PASSWORD)
    return address


def endpoint(mail: MailSandbox, **overrides: object) -> SmtpEndpointConfig:
    os.environ["SMTP_TEST_PASSWORD"] = PASSWORD
    cfg = {"adapter": "smtp", "host": mail.host, "port": mail.smtp_port, "security": "starttls",
           "username": HUB, "password": {"env": "SMTP_TEST_PASSWORD"}, "ca_bundle": str(mail.ca_file),
           "from_address": f"PLU Hub <{HUB}>", "timeout": "5s", **overrides}
    return SmtpEndpointConfig.model_validate(cfg)


@pytest_asyncio.fixture
async def smtp(mail: MailSandbox) -> AsyncIterator[SmtpAdapter]:
    adapter = SmtpAdapter("erp_be_mail", endpoint(mail), None)
    await adapter.start()
    yield adapter
    await adapter.close()


def ctx(msg_id: str = "", timeout: float = 5.0) -> CallContext:
    return CallContext({}, msg_id, "corr-1", timeout)


async def read_inbox(mail: MailSandbox, user: str) -> list[bytes]:
    """Every mail in the user's INBOX, fetched over IMAPS as a client would."""
    imap = aioimaplib.IMAP4(mail.host, mail.imap_port, ssl_context=mail.client_context())
    await imap.wait_hello_from_server()
    await imap.login(user, PASSWORD)
    await imap.select("INBOX")
    response = await imap.uid("fetch", "1:*", "(BODY.PEEK[])")
    await imap.logout()
    return [bytes(line) for line in response.lines if isinstance(line, bytearray)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_latin1_crlf_attachment_arrives_byte_exact(mail: MailSandbox, smtp: SmtpAdapter, user: str) -> None:
    """A Latin-1 CRLF flat file, given as bytes or as text with a charset, is read back over IMAP byte for byte."""
    answer = await smtp.call("send", {
        "to": user, "subject": "PLU contract switch [tok-1] — Liège",
        "text": "Bonjour, voir le fichier joint.", "headers": {"X-PLU-Token": "tok-1", "In-Reply-To": "<r@x>"},
        "attachments": [
            {"filename": "PLU_REQ_1.txt", "content_type": "text/plain; charset=ISO-8859-1",
             "data_b64": base64.b64encode(FLAT).decode()},
            {"filename": "PLU_REQ_2.txt", "content_type": "text/plain", "text": FLAT.decode("iso-8859-1"),
             "charset": "iso-8859-1"}]}, ctx("m-1"))
    assert answer["accepted"] == [user] and answer["refused"] == {}
    [raw] = await read_inbox(mail, user)
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Message-ID"] == answer["message_id"]
    assert (msg["Subject"], msg["X-PLU-Token"], msg["In-Reply-To"]) == (
        "PLU contract switch [tok-1] — Liège", "tok-1", "<r@x>")
    assert msg.get_body(("plain",)).get_content().strip() == "Bonjour, voir le fichier joint."
    parts = list(msg.iter_attachments())
    assert [p.get_payload(decode=True) for p in parts] == [FLAT, FLAT]
    assert [p.get_content_charset() for p in parts] == ["iso-8859-1", "iso-8859-1"]


async def test_message_id_is_stable_for_a_message_and_kept_when_given(smtp: SmtpAdapter, user: str) -> None:
    """The made Message-ID is the same for a redelivered message, and a payload's own Message-ID is used as is."""
    first = await smtp.call(None, {"to": [user], "subject": "s", "text": "x"}, ctx("same-id"))
    again = await smtp.call(None, {"to": [user], "subject": "s", "text": "x"}, ctx("same-id"))
    own = await smtp.call("send", {"to": [user], "text": "x", "message_id": "<own@plu.example>"}, ctx("same-id"))
    assert first["message_id"] == again["message_id"] and first["message_id"].endswith("@plu.example>")
    assert own["message_id"] == "<own@plu.example>"


async def test_unknown_recipient_is_rejected_with_the_server_reply(smtp: SmtpAdapter, user: str) -> None:
    """A 550 for the only recipient is a permanent TargetRejected with the server's text; a partial one is reported."""
    with pytest.raises(TargetRejected, match=r"550.*no such mailbox") as info:
        await smtp.call("send", {"to": "nobody@elsewhere.example", "text": "x"}, ctx())
    assert info.value.status == 550 and not info.value.transient
    answer = await smtp.call("send", {"to": [user, "nobody@elsewhere.example"], "text": "x"}, ctx())
    assert answer["accepted"] == [user]
    assert answer["refused"]["nobody@elsewhere.example"]["code"] == 550


async def test_wrong_password_is_rejected_naming_the_user(mail: MailSandbox, user: str) -> None:
    """An AUTH refusal (535) is a permanent TargetRejected saying whose login failed, without the password."""
    os.environ["SMTP_WRONG_PASSWORD"] = "not-the-password"
    adapter = SmtpAdapter("bad_auth", endpoint(mail, password={"env": "SMTP_WRONG_PASSWORD"}), None)
    await adapter.start()
    with pytest.raises(TargetRejected, match=f"authentication failed for {HUB}: 535") as info:
        await adapter.call("send", {"to": user, "text": "x"}, ctx())
    assert "not-the-password" not in str(info.value)
    await adapter.close()


async def test_server_down_is_target_unavailable(mail: MailSandbox, user: str) -> None:
    """Nothing listening on the port is a transient TargetUnavailable."""
    adapter = SmtpAdapter("down", endpoint(mail, port=free_port()), None)
    await adapter.start()
    with pytest.raises(TargetUnavailable) as info:
        await adapter.call("send", {"to": user, "text": "x"}, ctx())
    assert info.value.transient
    await adapter.close()


async def test_silent_server_is_target_timeout(mail: MailSandbox, user: str) -> None:
    """A server that accepts the connection but never greets ends the call as TargetTimeout within its deadline."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    adapter = SmtpAdapter("silent", endpoint(mail, port=port), None)
    await adapter.start()
    with pytest.raises(TargetTimeout, match="0.3s"):
        await adapter.call("send", {"to": user, "text": "x"}, ctx(timeout=0.3))
    await adapter.close()
    server.close()


async def test_busy_greeting_is_throttled(mail: MailSandbox, user: str) -> None:
    """A server greeting with 421 (closing, try later) is a transient Throttled."""
    async def busy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"421 4.3.2 mail.plu.example busy, try again later\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(busy, "127.0.0.1", 0)
    adapter = SmtpAdapter("busy", endpoint(mail, port=server.sockets[0].getsockname()[1]), None)
    await adapter.start()
    with pytest.raises(Throttled, match="421"):
        await adapter.call("send", {"to": user, "text": "x"}, ctx())
    await adapter.close()
    server.close()


def test_reply_codes_map_onto_the_taxonomy() -> None:
    """4xx replies are transient (421/452 Throttled, others TargetServerError); 5xx are TargetRejected."""
    kinds = {code: type(reply_error("e", code, "text")) for code in (421, 450, 451, 452, 550, 553, 554)}
    assert kinds == {421: Throttled, 450: TargetServerError, 451: TargetServerError, 452: Throttled,
                     550: TargetRejected, 553: TargetRejected, 554: TargetRejected}


async def test_bad_payloads_fail_validation_before_connecting(smtp: SmtpAdapter) -> None:
    """A missing recipient, a forged From, an injected header line or bad base64 is a ValidationFailed."""
    bad = [{"subject": "no to"}, {"to": "a@plu.example", "headers": {"From": "ceo@plu.example"}},
           {"to": "a@plu.example", "headers": {"X-Token": "a\r\nBcc: x@evil.example"}},
           {"to": "a@plu.example", "attachments": [{"filename": "f", "data_b64": "!!"}]},
           {"to": "not an address"}, "just text"]
    for payload in bad:
        with pytest.raises(ValidationFailed):
            await smtp.call("send", payload, ctx())
    assert smtp.check_operation("deliver") is not None and smtp.check_operation("send") is None


async def test_connection_is_reused_and_replaced_after_a_server_restart(mail: MailSandbox, smtp: SmtpAdapter,
                                                                        user: str) -> None:
    """Sends reuse one pooled connection; after the SMTP server restarts, the next send opens a fresh one."""
    await smtp.call("send", {"to": user, "text": "1"}, ctx())
    [(first, _)] = smtp._idle
    await smtp.call("send", {"to": user, "text": "2"}, ctx())
    assert smtp._idle[0][0] is first
    await mail.smtp.stop()
    await mail.smtp.start()
    await smtp.call("send", {"to": user, "text": "3"}, ctx())
    assert smtp._idle[0][0] is not first
    assert len(await read_inbox(mail, user)) == 3


async def test_security_none_sends_in_clear_on_loopback(user: str) -> None:
    """`security: none` talks plain SMTP with AUTH, which the sandbox allows on loopback only."""
    async with MailSandbox(users={HUB: PASSWORD, user: PASSWORD}, tls=False) as plain:
        adapter = SmtpAdapter("plain", endpoint(plain, security="none", ca_bundle=None), None)
        await adapter.start()
        answer = await adapter.call("send", {"to": user, "subject": "plain", "text": "x"}, ctx())
        await adapter.close()
        assert answer["accepted"] == [user] and plain.delivered(user) == 1
