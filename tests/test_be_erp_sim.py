"""The Belgian ERP simulator (sandbox/be_erp.py) over the real mail sandbox: requests mailed in, replies mailed back."""

from __future__ import annotations

import email
import email.policy
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date
from email.message import Message

import aioimaplib
import aiosmtplib
import pytest_asyncio

from sandbox.be_erp import BelgianErpSimulator
from sandbox.mail import MailSandbox
from sandbox.mail.compose import find_attachment, system_mail
from schemas.be_flatfile import (BeAccepted, BeAccountChange, BeAccountLinked, BeContractSwitch, BeFileHeader,
                                 BeFlatFile, BeRejected, BeSwitchCompleted, attachment_name, decode, encode,
                                 subject_tag, token_in_subject)

PASSWORD = "sandbox-pw"


@dataclass
class Parties:
    hub: str
    erp: BelgianErpSimulator


@pytest_asyncio.fixture(scope="module")
async def mail() -> AsyncIterator[MailSandbox]:
    async with MailSandbox(users={"postmaster@plu.example": PASSWORD}) as sandbox:
        yield sandbox


@pytest_asyncio.fixture
async def parties(mail: MailSandbox) -> AsyncIterator[Parties]:
    """A hub mailbox and an ERP (with its own mailbox) of this test's own."""
    tag = uuid.uuid4().hex[:8]
    hub, erp = f"hub-{tag}@plu.example", f"erp-be-{tag}@plu.example"
    await mail.add_user(hub, PASSWORD)
    await mail.add_user(erp, PASSWORD)
    async with BelgianErpSimulator(mail, erp, PASSWORD) as simulator:
        yield Parties(hub, simulator)
        assert simulator.errors == []


def switch(contract: str, tariff: str = "GREEN-12", version: int = 1) -> BeContractSwitch:
    return BeContractSwitch(contract_id=contract, contract_version=version, account_id="A-1", tariff_code=tariff,
                            signed_on=date(2025, 5, 1), site_id="S-1", postcode="4000", city="Liège")


ACCOUNT = BeAccountChange(account_id="A-1", kind="household", name="Jürgen Müller", street="Rue Royale 1",
                          postcode="1030", city="Schaerbeek")


async def send_request(mail: MailSandbox, p: Parties, *records: object,
                       token: str | None = None) -> tuple[str, Message]:
    token = token or f"be-{uuid.uuid4().hex[:12]}"
    data = encode(BeFlatFile(header=BeFileHeader(file_type="REQ", correlation_token=token, sender="PLU-HUB"),
                             records=list(records)))
    msg = system_mail(p.hub, p.erp.address, f"PLU request {subject_tag(token)}", "Demande PLU, voir fichier.\n",
                      data, attachment_name("REQ", token))
    await aiosmtplib.send(msg, hostname=mail.host, port=mail.smtp_port, start_tls=True, username=p.hub,
                          password=PASSWORD, tls_context=mail.client_context())
    return token, msg


async def replies(mail: MailSandbox, p: Parties, count: int) -> list[Message]:
    await mail.wait_for_delivery(p.hub, count)
    return [email.message_from_bytes(m.raw, policy=email.policy.default) for m in await mail.messages(p.hub)]


def file_of(msg: Message) -> BeFlatFile:
    data = find_attachment(msg, b"HDR")
    assert data is not None, msg
    return decode(data)


async def test_request_gets_an_accepted_reply_threaded_to_it(mail: MailSandbox, parties: Parties) -> None:
    """A switch and an account change get ACK and LNK in one mail threaded to the request, token in subject and file."""
    token, request = await send_request(mail, parties, switch("C-1"), ACCOUNT)
    [reply] = await replies(mail, parties, 1)
    assert reply["In-Reply-To"] == request["Message-ID"] and request["Message-ID"] in reply["References"]
    assert token_in_subject(reply["Subject"]) == token
    file = file_of(reply)
    assert (file.header.file_type, file.header.correlation_token, file.header.sender) == ("RSP", token, "ERP-BE")
    ack, link = file.records
    assert isinstance(ack, BeAccepted) and (ack.ref_seq, ack.ref_key) == (1, "C-1") and ack.erp_ref
    assert isinstance(link, BeAccountLinked) and link.ref_seq == 2 and link.erp_key == parties.erp.accounts["A-1"]
    await parties.erp.wait_until(lambda erp: any(h.token == token for h in erp.handled))
    assert await mail.messages(parties.erp.address) == []
    assert len(await mail.messages(parties.erp.address, "Processed")) == 1


async def test_unknown_tariff_and_blocked_contract_are_rejected(mail: MailSandbox, parties: Parties) -> None:
    """Per record: an unknown tariff is REJ T001, a BLOCKED contract REJ C009, and the good record is still accepted."""
    await send_request(mail, parties, switch("C-1", tariff="NOPE-99"), switch("BLOCKED-7"), switch("C-3"))
    [reply] = await replies(mail, parties, 1)
    unknown, blocked, ok = file_of(reply).records
    assert isinstance(unknown, BeRejected) and unknown.reason_code == "T001" and "NOPE-99" in unknown.reason_text
    assert isinstance(blocked, BeRejected) and blocked.reason_code == "C009" and blocked.ref_seq == 2
    assert isinstance(ok, BeAccepted) and ok.ref_key == "C-3"
    assert list(parties.erp.switches) == [("C-3", 1)]


async def test_duplicate_request_is_applied_once(mail: MailSandbox, parties: Parties) -> None:
    """The same token mailed twice is applied once; the second mail gets the first reply again."""
    token, _ = await send_request(mail, parties, switch("C-1"), ACCOUNT)
    await replies(mail, parties, 1)
    keys = dict(parties.erp.accounts)
    await send_request(mail, parties, switch("C-1", tariff="FLEX-24"), token=token)
    first, second = await replies(mail, parties, 2)
    assert file_of(first).records == file_of(second).records
    assert parties.erp.duplicates == [token]
    assert len(parties.erp.switches) == 1 and parties.erp.switches[("C-1", 1)].tariff_code == "GREEN-12"
    assert parties.erp.accounts == keys


async def test_mail_client_reply_parses_with_the_codec(mail: MailSandbox, parties: Parties) -> None:
    """A mail client's reply (quoted, QP attachment in mixed-in-alternative, no In-Reply-To) still yields the file."""
    parties.erp.behaviour.mail_client = True
    token, request = await send_request(mail, parties, switch("C-1"))
    await mail.wait_for_delivery(parties.hub, 1)
    imap = aioimaplib.IMAP4(mail.host, mail.imap_port, ssl_context=mail.client_context())
    await imap.wait_hello_from_server()
    await imap.login(parties.hub, PASSWORD)
    await imap.select("INBOX")
    fetched = await imap.uid("fetch", "1:*", "(BODY.PEEK[])")
    await imap.logout()
    [raw] = [bytes(line) for line in fetched.lines if isinstance(line, bytearray)]
    reply = email.message_from_bytes(raw, policy=email.policy.default)
    assert reply["In-Reply-To"] is None and reply["References"] is None
    assert reply["Subject"].startswith("RE: ") and token_in_subject(reply["Subject"]) == token
    assert reply.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in reply.get_payload()] == ["text/plain", "multipart/mixed"]
    assert "> Demande PLU" in reply.get_payload()[0].get_content()
    assert b"Content-Transfer-Encoding: quoted-printable" in raw
    file = file_of(reply)
    assert file.header.correlation_token == token and isinstance(file.records[0], BeAccepted)


async def test_late_reply_then_switch_completed_in_a_later_mail(mail: MailSandbox, parties: Parties) -> None:
    """With a reply delay the ACK comes late; with a completion delay an SWC mail follows, same token, threaded."""
    parties.erp.behaviour.reply_delay = 0.3
    parties.erp.behaviour.completion_delay = 0.5
    started = time.monotonic()
    token, request = await send_request(mail, parties, switch("C-1"), switch("C-2"))
    ack_mail, done_mail = await replies(mail, parties, 2)
    assert time.monotonic() - started >= 0.5
    assert all(isinstance(r, BeAccepted) for r in file_of(ack_mail).records)
    done = file_of(done_mail)
    assert done.header.correlation_token == token and done_mail["In-Reply-To"] == request["Message-ID"]
    assert [(r.ref_seq, r.contract_id) for r in done.records] == [(1, "C-1"), (2, "C-2")]
    assert all(isinstance(r, BeSwitchCompleted) and r.erp_ref for r in done.records)


async def test_switch_completes_on_demand_and_replies_can_come_twice(mail: MailSandbox, parties: Parties) -> None:
    """`reply_twice` mails each reply two times; `complete_switches()` sends the SWC when the test wants it."""
    parties.erp.behaviour.reply_twice = True
    token, _ = await send_request(mail, parties, switch("C-1"))
    first, second = await replies(mail, parties, 2)
    assert first["Message-ID"] != second["Message-ID"] and file_of(first).records == file_of(second).records
    assert await parties.erp.complete_switches(token) == 1
    completed = (await replies(mail, parties, 4))[2:]
    assert [type(file_of(m).records[0]) for m in completed] == [BeSwitchCompleted, BeSwitchCompleted]


async def test_unreadable_mail_is_set_aside_and_the_erp_carries_on(mail: MailSandbox, parties: Parties) -> None:
    """A mail without a flat file, or with a broken one, gets no reply and goes to Unreadable; the ERP carries on."""
    await mail.inject(parties.erp.address, b"From: spam@elsewhere.example\r\nSubject: hi\r\n\r\nno attachment\r\n")
    broken = system_mail(parties.hub, parties.erp.address, "broken", "x\n", b"HDRREQ01 nonsense\r\n", "x.txt")
    await mail.inject(parties.erp.address, broken.as_bytes())
    await send_request(mail, parties, switch("C-1"))
    await replies(mail, parties, 1)
    await parties.erp.wait_until(lambda erp: len(erp.handled) == 3)
    problems = [h.problem for h in parties.erp.handled if h.problem]
    assert problems[0] == "no attached flat file" and "line 1, field" in problems[1]
    assert len(await mail.messages(parties.erp.address, "Unreadable")) == 2


async def test_erp_reconnects_after_an_imap_restart(mail: MailSandbox, parties: Parties) -> None:
    """When the IMAP server restarts, the ERP reconnects by itself and answers mail sent meanwhile."""
    await send_request(mail, parties, switch("C-1"))
    await replies(mail, parties, 1)
    await mail.stop_imap()
    await send_request(mail, parties, switch("C-2"))
    await mail.start_imap()
    second = (await replies(mail, parties, 2))[1]
    assert file_of(second).records[0].ref_key == "C-2"
