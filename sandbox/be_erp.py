"""Belgium's ERP as the hub meets it: a mailbox read over IMAP, flat files in, flat-file replies by SMTP.

    async with BelgianErpSimulator(mail, "erp-be@plu.example", "pw", BeErpBehaviour(reply_delay=1)) as erp:
        ...   # the hub mails REQ files to erp-be@plu.example; replies go back to the sender

It IDLEs on its INBOX (reconnecting when the IMAP server goes away), decodes the attached file, applies it
to its books and replies to the sender, In-Reply-To/References set to the request's Message-ID and the
token in the subject and the reply file. Each mail read moves to Processed, or to Unreadable (no reply)
when it holds no flat file or the file fails the codec.

Rules: a CSW for a contract id starting with BLOCKED is refused (C009), one for a tariff not in `tariffs`
too (T001), an ACC for an account id starting with BLOCKED (A009). An accepted switch is ACKed and,
`completion_delay` seconds later (None: on `complete_switches()`), completed in a new mail of SWC records;
an ACC gets LNK and the ERP's key (one key per CRM account). A token applied before is not applied again:
its first reply is sent once more. `behaviour` may change between requests (late, twice, mail client, a real
client's shape).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import email.utils
import itertools
import logging
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import date
from email.message import Message
from typing import Any

import aioimaplib
import aiosmtplib

from engine.tasks import cancel_and_wait
from sandbox.mail import MailSandbox
from sandbox.mail.clients import SHAPES, ReplyTo
from sandbox.mail.compose import client_reply, find_attachment, system_mail
from schemas.be_flatfile import (BeAccepted, BeAccountLinked, BeContractSwitch, BeFileHeader,
                                 BeFlatFile, BeRejected, BeSwitchCompleted, FlatFileError, attachment_name, decode,
                                 encode, subject_tag, token_in_subject)

DEFAULT_TARIFFS = frozenset({"GREEN-12", "FLEX-24", "FIX-36", "NIGHT-12"})  # as the SOAP country ERPs
SENDER = "ERP-BE"
log = logging.getLogger(__name__)


@dataclass
class BeErpBehaviour:
    """How the ERP answers; a test changes these to get the awkward cases."""

    reply_delay: float = 0.0  # seconds between reading a request and mailing the reply
    completion_delay: float | None = None  # seconds until an accepted switch completes; None: on demand
    tariffs: frozenset[str] = DEFAULT_TARIFFS
    reply_twice: bool = False  # mail every reply two times
    mail_client: bool = False  # replies written by a person: quoted, re-encoded, no In-Reply-To
    client: str | None = None  # replies in a real client's shape: a name of sandbox/mail/clients.py SHAPES


@dataclass
class PendingSwitch:
    contract_id: str
    version: int
    tariff_code: str
    erp_ref: str
    token: str
    ref_seq: int
    request: Message
    completed_on: date | None = None


@dataclass
class Handled:
    """One mail the ERP read: its token (None if unreadable), Message-ID, and whether it was a duplicate."""

    token: str | None
    message_id: str | None
    duplicate: bool = False
    problem: str | None = None


class BelgianErpSimulator:
    """The ERP's books (accounts, switches), its IMAP reader and its SMTP replies."""

    def __init__(self, mail: MailSandbox, address: str, password: str, behaviour: BeErpBehaviour | None = None,
                 *, idle_seconds: float = 20.0) -> None:
        self.mail, self.address, self.password = mail, address, password
        self.behaviour = behaviour or BeErpBehaviour()
        self.idle_seconds = idle_seconds
        self.accounts: dict[str, str] = {}  # CRM account id -> ERP key
        self.switches: dict[tuple[str, int], PendingSwitch] = {}  # (contract id, version) -> switch
        self.handled: list[Handled] = []
        self.sent: list[Message] = []
        self.errors: list[BaseException] = []  # what broke a reply or the reader (a bug, not a behaviour)
        self._replies: dict[str, BeFlatFile] = {}  # token -> the first reply
        self._keys = itertools.count(1)
        self._refs = itertools.count(1)
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reader: asyncio.Task[None] | None = None

    # --- life cycle and observation ----------------------------------------------------------------

    async def start(self) -> "BelgianErpSimulator":
        self._reader = asyncio.create_task(self._read_forever(), name=f"be-erp {self.address}")
        return self

    async def stop(self) -> None:
        await cancel_and_wait([self._reader, *self._tasks])

    async def __aenter__(self) -> "BelgianErpSimulator":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def duplicates(self) -> list[str]:
        return [h.token for h in self.handled if h.duplicate and h.token]

    async def wait_until(self, condition: Callable[["BelgianErpSimulator"], bool], timeout: float = 10.0) -> None:
        """Until `condition(self)` holds, checked after every mail read and every reply sent."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: condition(self))

    async def _note(self, item: Handled | Message) -> None:
        async with self._changed:
            (self.handled if isinstance(item, Handled) else self.sent).append(item)  # type: ignore[arg-type]
            self._changed.notify_all()

    # --- the mailbox --------------------------------------------------------------------------------

    async def _read_forever(self) -> None:
        backoff = 0.05
        while True:
            lost = asyncio.Event()
            imap = aioimaplib.IMAP4(self.mail.host, self.mail.imap_port, ssl_context=self.mail.client_context(),
                                    conn_lost_cb=lambda exc, lost=lost: lost.set())
            try:
                await imap.wait_hello_from_server()
                if (await imap.login(self.address, self.password)).result != "OK":
                    raise ConnectionError(f"IMAP login refused for {self.address}")
                for folder in ("Processed", "Unreadable"):
                    await imap.create(folder)  # NO when it exists: fine
                backoff = 0.05
                while not lost.is_set():
                    if not await self._drain(imap):
                        await self._idle(imap, lost)
            except (OSError, TimeoutError, aioimaplib.Abort, aioimaplib.CommandTimeout, ConnectionError):
                await asyncio.sleep(backoff)  # the server went away: come back like a mail client would
                backoff = min(backoff * 2, 1.0)
            except Exception as exc:  # a bug: keep it visible in `errors`, and keep reading
                log.exception("be-erp %s: reader failed", self.address)
                self.errors.append(exc)
                await asyncio.sleep(1.0)
            finally:
                with suppress(Exception):
                    imap.protocol.transport.close()

    async def _idle(self, imap: aioimaplib.IMAP4, lost: asyncio.Event) -> None:
        idle = await imap.idle_start(timeout=self.idle_seconds)
        push = asyncio.ensure_future(imap.wait_server_push(timeout=self.idle_seconds + 5))
        dropped = asyncio.ensure_future(lost.wait())
        try:
            await asyncio.wait({push, dropped}, return_when=asyncio.FIRST_COMPLETED)
            if lost.is_set():
                raise ConnectionError("IMAP connection lost")
            imap.idle_done()
            await asyncio.wait_for(idle, 5)
        finally:  # also when the simulator stops mid-IDLE: no waiter outlives it
            for task in (push, dropped, idle):
                task.cancel()

    async def _drain(self, imap: aioimaplib.IMAP4) -> int:
        """Read every mail in INBOX and move it out; answers how many it moved. SELECT (a synchronous command in
        aioimaplib) tells how many wait: aioimaplib drops the `* n EXISTS` a server sends during an
        asynchronous command (SEARCH, FETCH), and IDLE would not tell that mail again."""
        selected = await imap.select("INBOX")
        exists = next((int(line.split()[0]) for line in selected.lines if line.endswith(b"EXISTS")), 0)
        if not exists:
            return 0
        found = await imap.uid_search("ALL")
        uids = [u.decode() for u in found.lines[0].split() if u.isdigit()] if found.result == "OK" else []
        moved = 0
        for uid in uids:
            fetched = await imap.uid("fetch", uid, "(BODY.PEEK[])")
            raw = next((bytes(line) for line in fetched.lines if isinstance(line, bytearray)), None)
            if raw is not None:
                readable = await self._handle(email.message_from_bytes(raw, policy=email.policy.default))
                moved += (await imap.uid("move", uid, "Processed" if readable else "Unreadable")).result == "OK"
        return moved  # 0 when nothing could be moved: IDLE rather than read the same mail again at once

    # --- the books ----------------------------------------------------------------------------------

    async def _handle(self, request: Message) -> bool:
        message_id = request.get("Message-ID")
        data = find_attachment(request, b"HDR")
        try:
            file = decode(data) if data is not None else None
        except FlatFileError as exc:
            file, problem = None, str(exc)
        else:
            problem = "no attached flat file" if file is None else (
                None if file.header.file_type == "REQ" else f"a {file.header.file_type} file, not a request")
        if file is None or problem:
            await self._note(Handled(None, message_id, problem=problem))
            return False
        token = file.header.correlation_token
        duplicate = token in self._replies
        if not duplicate:
            self._replies[token] = self._apply(file, request)
        await self._note(Handled(token, message_id, duplicate))
        self._later(self._reply(request, self._replies[token], self.behaviour.reply_delay))
        if not duplicate and self.behaviour.completion_delay is not None:
            self._later(self._complete_after(token, self.behaviour.completion_delay))
        return True

    def _apply(self, file: BeFlatFile, request: Message) -> BeFlatFile:
        token = file.header.correlation_token
        answers = [self._switch(r, n, token, request) if isinstance(r, BeContractSwitch) else self._account(r, n)
                   for n, r in enumerate(file.records, 1)]
        return BeFlatFile(header=BeFileHeader(file_type="RSP", correlation_token=token, sender=SENDER),
                          records=answers)

    def _account(self, record: Any, seq: int) -> Any:
        if record.account_id.upper().startswith("BLOCKED"):
            return BeRejected(ref_seq=seq, ref_type="ACC", ref_key=record.account_id, reason_code="A009",
                              reason_text="Compte bloqué / rekening geblokkeerd")
        key = self.accounts.setdefault(record.account_id, f"BE{next(self._keys):08d}")
        return BeAccountLinked(ref_seq=seq, account_id=record.account_id, erp_key=key)

    def _switch(self, record: BeContractSwitch, seq: int, token: str, request: Message) -> Any:
        if record.contract_id.upper().startswith("BLOCKED"):
            return BeRejected(ref_seq=seq, ref_type="CSW", ref_key=record.contract_id, reason_code="C009",
                              reason_text=f"Contrat bloqué / contract geblokkeerd: {record.contract_id}")
        if record.tariff_code not in self.behaviour.tariffs:
            return BeRejected(ref_seq=seq, ref_type="CSW", ref_key=record.contract_id, reason_code="T001",
                              reason_text=f"Tarif inconnu / onbekend tarief: {record.tariff_code}")
        key = (record.contract_id, record.contract_version)
        if key not in self.switches:  # the same contract version again keeps its first order
            self.switches[key] = PendingSwitch(record.contract_id, record.contract_version, record.tariff_code,
                                               f"SW{next(self._refs):010d}", token, seq, request)
        return BeAccepted(ref_seq=seq, ref_type="CSW", ref_key=record.contract_id, erp_ref=self.switches[key].erp_ref)

    async def complete_switches(self, token: str | None = None) -> int:
        """Complete the pending switches (of one request token, or all) now: one SWC mail per request."""
        pending = [s for s in self.switches.values() if s.completed_on is None and token in (None, s.token)]
        for request_token in dict.fromkeys(s.token for s in pending):
            batch = [s for s in pending if s.token == request_token]
            for switch in batch:
                switch.completed_on = date.today()
            reply = BeFlatFile(
                header=BeFileHeader(file_type="RSP", correlation_token=request_token, sender=SENDER),
                records=[BeSwitchCompleted(ref_seq=s.ref_seq, contract_id=s.contract_id, contract_version=s.version,
                                           tariff_code=s.tariff_code, effective_on=s.completed_on, erp_ref=s.erp_ref)
                         for s in batch])
            await self._reply(batch[0].request, reply, 0.0)
        return len(pending)

    async def _complete_after(self, token: str, delay: float) -> None:
        await asyncio.sleep(delay)  # the ERP's nightly batch, shortened
        await self.complete_switches(token)

    # --- replies ------------------------------------------------------------------------------------

    def _later(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.errors.append(task.exception())  # type: ignore[arg-type]
            log.error("be-erp %s: %r", self.address, task.exception())

    async def _reply(self, request: Message, reply: BeFlatFile, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)  # a late reply, as the behaviour asks
        behaviour = self.behaviour
        to = email.utils.parseaddr(request.get("Reply-To") or request.get("From") or "")[1]
        for _ in range(2 if behaviour.reply_twice else 1):
            if behaviour.client:
                raw = self._client_mail(request, to, reply, behaviour.client)
                msg: Message = email.message_from_bytes(raw, policy=email.policy.default)
                await aiosmtplib.send(raw, hostname=self.mail.host, port=self.mail.smtp_port, sender=self.address,
                                      recipients=[to], username=self.address, password=self.password,
                                      start_tls=self.mail.tls is not None, tls_context=self.mail.client_context())
            else:
                msg = self._reply_mail(request, to, reply, behaviour.mail_client)
                await aiosmtplib.send(msg, hostname=self.mail.host, port=self.mail.smtp_port, sender=self.address,
                                      recipients=[to], username=self.address, password=self.password,
                                      start_tls=self.mail.tls is not None, tls_context=self.mail.client_context())
            await self._note(msg)

    def _client_mail(self, request: Message, to: str, reply: BeFlatFile, client: str) -> bytes:
        """The reply as a person would send it from `client` (sandbox/mail/clients.py): our request file
        goes back too where that client sends the original's attachments."""
        token = reply.header.correlation_token
        shape = SHAPES[client]
        context = ReplyTo(request_id=str(request.get("Message-ID", "")), request_subject=str(request.get("Subject", "")),
                          hub=to, erp=self.address, reply_file=encode(reply), reply_name=attachment_name("RSP", token),
                          request_file=find_attachment(request, b"HDR") or b"", request_name=attachment_name("REQ", token),
                          seed=f"{token}:{len(self.sent)}", date=email.utils.formatdate(localtime=True))
        return shape(context)

    def _reply_mail(self, request: Message, to: str, reply: BeFlatFile, mail_client: bool) -> Message:
        token = reply.header.correlation_token
        data, name = encode(reply), attachment_name("RSP", token)
        if mail_client:
            subject = f"RE: {request.get('Subject', '')}"
            if token_in_subject(subject) != token:
                subject += " " + subject_tag(token)
            return client_reply(request, self.address, subject, "Bonjour, voici la réponse du service facturation.",
                                data, name)
        return system_mail(self.address, to, f"ERP-BE antwoord / réponse {subject_tag(token)}",
                           "Automatisch bericht ERP-BE / message automatique ERP-BE.\n", data, name,
                           in_reply_to=request.get("Message-ID"), references=request.get("References"))
