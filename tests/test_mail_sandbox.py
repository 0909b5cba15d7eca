"""The mail sandbox (sandbox/mail): real aiosmtpd and pymap servers, driven by aiosmtplib and aioimaplib."""

from __future__ import annotations

import asyncio
import email
import email.policy
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import date
from email.message import EmailMessage

import aioimaplib
import aiosmtplib
import pytest
import pytest_asyncio

from sandbox.mail import MailSandbox
from schemas.be_flatfile import BeContractSwitch, BeFileHeader, BeFlatFile, decode, encode

PASSWORD = "sandbox-pw"


@pytest_asyncio.fixture(scope="module")
async def mail() -> AsyncIterator[MailSandbox]:
    async with MailSandbox(users={"hub@plu.example": PASSWORD}) as sandbox:
        yield sandbox


@pytest_asyncio.fixture
async def user(mail: MailSandbox) -> str:
    """A mailbox of this test's own."""
    address = f"u{uuid.uuid4().hex[:8]}@plu.example"
    await mail.add_user(address, PASSWORD)
    return address


async def send(mail: MailSandbox, to: str, subject: str = "hello", attachment: bytes | None = None) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "hub@plu.example", to, subject
    msg["Message-ID"] = email.utils.make_msgid(domain="plu.example")
    msg.set_content("Bonjour, voir la pièce jointe.\n")
    if attachment is not None:
        msg.add_attachment(attachment, maintype="text", subtype="plain", filename="PLU_REQ_t.txt",
                           params={"charset": "iso-8859-1"})
    await aiosmtplib.send(msg, hostname=mail.host, port=mail.smtp_port, start_tls=True, username="hub@plu.example",
                          password=PASSWORD, tls_context=mail.client_context())
    return msg


async def imap_session(mail: MailSandbox, user: str, mailbox: str = "INBOX",
                       conn_lost_cb: Callable[[Exception | None], None] | None = None) -> aioimaplib.IMAP4:
    # IMAP4 with an SSL context is implicit TLS, like IMAP4_SSL, and also takes a connection-lost callback
    imap = aioimaplib.IMAP4(mail.host, mail.imap_port, ssl_context=mail.client_context(), conn_lost_cb=conn_lost_cb)
    await imap.wait_hello_from_server()
    assert (await imap.login(user, PASSWORD)).result == "OK"
    assert (await imap.select(mailbox)).result == "OK"
    return imap


async def fetch_all(imap: aioimaplib.IMAP4) -> list[bytes]:
    response = await imap.uid("fetch", "1:*", "(BODY.PEEK[])")
    assert response.result == "OK"
    return [bytes(line) for line in response.lines if isinstance(line, bytearray)]


def a_flat_file() -> bytes:
    return encode(BeFlatFile(
        header=BeFileHeader(file_type="REQ", correlation_token="tok-1", sender="PLU-HUB"),
        records=[BeContractSwitch(contract_id="C-1", account_id="A-1", tariff_code="GREEN-12",
                                  signed_on=date(2025, 5, 1), site_id="S-1", postcode="4000", city="Liège")]))


async def test_latin1_flat_file_attachment_round_trips(mail: MailSandbox, user: str) -> None:
    """A mail sent by aiosmtplib over STARTTLS with a Latin-1 flat file comes out of IMAP with the exact bytes."""
    data = a_flat_file()
    await send(mail, user, "PLU contract switch", attachment=data)
    imap = await imap_session(mail, user)
    [raw] = await fetch_all(imap)
    await imap.logout()
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    [part] = list(parsed.iter_attachments())
    assert part.get_payload(decode=True) == data
    assert decode(part.get_payload(decode=True)).records[0].city == "Liège"


async def test_smtp_requires_starttls_auth_and_a_local_recipient(mail: MailSandbox, user: str) -> None:
    """SMTP refuses AUTH before STARTTLS, a wrong password, and a recipient that is not a local mailbox."""
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "hub@plu.example", user, "x"
    msg.set_content("x")
    with pytest.raises(aiosmtplib.SMTPException, match="STARTTLS"):
        await aiosmtplib.send(msg, hostname=mail.host, port=mail.smtp_port, start_tls=False,
                              username="hub@plu.example", password=PASSWORD)
    with pytest.raises(aiosmtplib.SMTPAuthenticationError):
        await aiosmtplib.send(msg, hostname=mail.host, port=mail.smtp_port, start_tls=True,
                              username="hub@plu.example", password="wrong", tls_context=mail.client_context())
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
        await aiosmtplib.send(msg, recipients=["someone@elsewhere.example"], hostname=mail.host, port=mail.smtp_port,
                              start_tls=True, username="hub@plu.example", password=PASSWORD,
                              tls_context=mail.client_context())
    assert mail.delivered(user) == 0


async def test_flag_and_move_to_a_folder(mail: MailSandbox, user: str) -> None:
    """A client can flag one mail \\Seen and move another into a Processed folder; the store shows both."""
    await send(mail, user, "first")
    await send(mail, user, "second")
    imap = await imap_session(mail, user)
    first, second = [m.uid for m in await mail.messages(user)]
    assert (await imap.uid("store", str(first), "+FLAGS", r"(\Seen)")).result == "OK"
    assert (await imap.create("Processed")).result == "OK"
    assert (await imap.uid("move", str(second), "Processed")).result == "OK"
    await imap.logout()
    [inbox] = await mail.messages(user)
    assert inbox.uid == first and "\\Seen" in inbox.flags
    [moved] = await mail.messages(user, "Processed")
    assert b"Subject: second" in moved.raw
    assert await mail.mailboxes(user) == ["INBOX", "Processed"]


async def test_idle_wakes_on_new_mail(mail: MailSandbox, user: str) -> None:
    """A client in IDLE is told of a mail delivered by SMTP without polling."""
    imap = await imap_session(mail, user)
    assert imap.has_capability("IDLE")
    idle = await imap.idle_start(timeout=10)
    await send(mail, user, "wake up")
    push = await imap.wait_server_push(timeout=5)
    assert any(b"EXISTS" in line for line in push)
    imap.idle_done()
    await asyncio.wait_for(idle, 5)
    assert len(await fetch_all(imap)) == 1
    await imap.logout()


async def test_imap_restart_keeps_messages_and_port(mail: MailSandbox, user: str) -> None:
    """Stopping IMAP drops its clients and refuses new ones; started again on the same port, the mail is still there."""
    await send(mail, user, "before restart")
    lost = asyncio.Event()
    imap = await imap_session(mail, user, conn_lost_cb=lambda exc: lost.set())
    uid_validity = next(line for line in (await imap.select("INBOX")).lines if b"UIDVALIDITY" in line)
    port = mail.imap_port
    await mail.stop_imap()
    await asyncio.wait_for(lost.wait(), 5)
    refused = aioimaplib.IMAP4_SSL(mail.host, port, ssl_context=mail.client_context())
    with pytest.raises(OSError):
        await refused.wait_hello_from_server()
    await send(mail, user, "while IMAP is down")  # SMTP and the store carry on
    await mail.start_imap()
    assert mail.imap_port == port
    imap = await imap_session(mail, user)
    assert uid_validity in (await imap.select("INBOX")).lines
    raws = await fetch_all(imap)
    await imap.logout()
    assert [b"before restart" in raws[0], b"while IMAP is down" in raws[1]] == [True, True]


async def test_injected_raw_mime_is_served_byte_for_byte(mail: MailSandbox, user: str) -> None:
    """Broken mail put straight into a mailbox (no SMTP) reaches the IMAP client exactly as injected."""
    hostile = (b"From: =?bogus?Q?x?=\r\nContent-Type: multipart/mixed; boundary=\"never-closed\"\r\n\r\n"
               b"--never-closed\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not base64\xff\xfe\r\n")
    uid = await mail.inject(user, hostile)
    imap = await imap_session(mail, user)
    assert await fetch_all(imap) == [hostile]
    await imap.logout()
    assert [m.uid for m in await mail.messages(user)] == [uid]


async def test_plain_mode_allows_auth_without_tls_on_loopback() -> None:
    """With tls=False both servers speak plain TCP and SMTP AUTH works in clear (loopback only)."""
    async with MailSandbox(users={"hub@plu.example": PASSWORD}, tls=False) as plain:
        assert plain.client_context() is None and plain.ca_file is None
        msg = EmailMessage()
        msg["From"] = msg["To"] = "hub@plu.example"
        msg["Subject"] = "plain"
        msg.set_content("x")
        await aiosmtplib.send(msg, hostname=plain.host, port=plain.smtp_port, start_tls=False,
                              username="hub@plu.example", password=PASSWORD)
        imap = aioimaplib.IMAP4(plain.host, plain.imap_port)
        await imap.wait_hello_from_server()
        await imap.login("hub@plu.example", PASSWORD)
        await imap.select("INBOX")
        assert len(await fetch_all(imap)) == 1
        await imap.logout()


async def test_idle_announces_mail_that_arrived_just_before_it(mail: MailSandbox, user: str) -> None:
    """A mail delivered after the client's last command but before IDLE began is announced as soon as IDLE starts."""
    imap = await imap_session(mail, user)
    await mail.inject(user, b"Subject: early\r\n\r\nx\r\n")  # no command in between tells the client of it
    idle = await imap.idle_start(timeout=10)
    push = await imap.wait_server_push(timeout=5)
    assert any(b"EXISTS" in line for line in push)
    imap.idle_done()
    await asyncio.wait_for(idle, 5)
    await imap.logout()
