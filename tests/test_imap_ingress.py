"""The `imap:` source (adapters.imap.ImapIngress) against real IMAP servers and a real nats-server.

Every test runs against Dovecot (Debian's dovecot-imapd, what PLU's mailbox runs) and the project's mail
sandbox (pymap): the `imap_server` fixture. A mail arrives by SMTP at the sandbox and by dovecot-lda at
Dovecot, as a mail server delivers it.
"""

from __future__ import annotations

import email.utils
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import nats
import pytest
import pytest_asyncio
import structlog.testing

from adapters.imap import ImapEndpointConfig, ImapIngress, ImapSession
from engine.config import HubConfig
from engine.ingress import Landing
from engine.spec import Flow
from engine.streams import ensure_streams
from sandbox.mail import MailSandbox
from tests.helpers import StreamReader, project_from, started_hub, wait_until

HUB = "hub@plu.example"
PASSWORD = "imap-test-pw"
os.environ["IMAP_TEST_PASSWORD"] = PASSWORD

MakeIngress = Callable[..., Awaitable[ImapIngress]]


@pytest.fixture(scope="module")
def mail(imap_server: Any) -> Any:
    return imap_server


@pytest_asyncio.fixture(scope="module")
async def js(nats_url: str) -> AsyncIterator[Any]:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_streams(js, HubConfig())  # HUB_INGRESS among them
    yield js
    await nc.close()


@pytest_asyncio.fixture
async def user(mail: Any) -> str:
    """A mailbox of this test's own."""
    address = f"u{uuid.uuid4().hex[:8]}@plu.example"
    await mail.add_user(address, PASSWORD)
    return address


def endpoint_for(mail: Any, user: str) -> ImapEndpointConfig:
    return ImapEndpointConfig.model_validate({
        "adapter": "imap", "host": mail.host, "port": mail.imap_port, "security": "tls" if mail.tls else "none",
        "username": user, "password": {"env": "IMAP_TEST_PASSWORD"}, "ca_bundle": str(mail.ca_file or "") or None,
        "timeout": "5s"})


@pytest_asyncio.fixture
async def make_ingress(js: Any, unique: str) -> AsyncIterator[MakeIngress]:
    """Builds, starts and finally stops an ingress for a flow of this test's own."""
    started: list[ImapIngress] = []

    async def make(mail: Any, user: str, landing_cls: type[Landing] = Landing,
                   cls: type[ImapIngress] = ImapIngress, **spec: Any) -> ImapIngress:
        flow = Flow.model_validate({"name": f"mail-{unique}", "source": {"imap": {"endpoint": "mbox", **spec}},
                                    "steps": [{"publish": f"{unique}.mail"}]})
        ingress = cls(flow, flow.source.imap, endpoint_for(mail, user),  # type: ignore[union-attr]
                              landing_cls(flow, js, 5.0, "imap"), None)
        await ingress.start()
        started.append(ingress)
        return ingress

    yield make
    for ingress in started:
        await ingress.stop()


def a_mail(to: str, subject: str, message_id: bool = True) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "erp-be@plu.example", to, subject
    if message_id:
        msg["Message-ID"] = email.utils.make_msgid(domain="erp.example")
    msg.set_content(f"{subject}\n")
    return msg.as_bytes(policy=email.policy.SMTP)


async def delivered(mail: Any, user: str, msg: EmailMessage | bytes) -> None:
    """Deliver a mail as a mail server would, whether or not IMAP is up: by SMTP to the sandbox, by
    dovecot-lda to Dovecot."""
    if isinstance(mail, MailSandbox):
        if isinstance(msg, bytes):
            await mail.inject(user, msg)  # the sandbox's SMTP builds its own envelope: raw bytes go to the store
            return
        await aiosmtplib.send(msg, hostname=mail.host, port=mail.smtp_port, start_tls=True, username=HUB,
                              password=PASSWORD, tls_context=mail.client_context())
        return
    await mail.deliver(user, msg if isinstance(msg, bytes) else msg.as_bytes(policy=email.policy.SMTP))


async def stored(js: Any, ingress: ImapIngress) -> list[Any]:
    """Every message JetStream holds on the flow's ingress subject, in order."""
    subject = ingress.landing.subject
    info = await js.stream_info("HUB_INGRESS", subjects_filter=subject)
    count = (info.state.subjects or {}).get(subject, 0)
    reader = await StreamReader.open(js, subject)
    try:
        return await reader.wait_for(count, timeout=5) if count else []
    finally:
        await reader.sub.unsubscribe()


async def test_each_mail_is_stored_once_and_moved_only_after_the_store(mail: Any, js: Any, user: str,
                                                                       make_ingress: MakeIngress) -> None:
    """Each mail lands in JetStream with its raw bytes and mail headers while still in INBOX, then goes to Processed."""
    raws = [a_mail(user, "first"), a_mail(user, "second"), a_mail(user, "no id", message_id=False)]
    uids = [await mail.inject(user, raw) for raw in raws]
    in_inbox_at_store: list[bool] = []

    class WatchedLanding(Landing):
        async def store_many(self, items: list[Any]) -> list[Any]:
            outcomes = await super().store_many(items)
            inbox = [m.raw for m in await mail.messages(user)]
            in_inbox_at_store.extend(data in inbox for data, _, _ in items)
            return outcomes

    ingress = await make_ingress(mail, user, WatchedLanding)
    await ingress.wait_for(lambda i: i.moved == 3)
    assert in_inbox_at_store == [True, True, True]
    msgs = await stored(js, ingress)
    assert [m.data for m in msgs] == raws
    first = msgs[0].headers
    assert first["Hub-Mail-Message-Id"] == email.message_from_bytes(raws[0])["Message-ID"]
    assert (first["Hub-Mail-Uid"], first["Hub-Mail-Folder"]) == (str(uids[0]), "INBOX")
    assert first["Nats-Msg-Id"] == ingress.landing.message_id(first["Hub-Mail-Message-Id"])
    assert "Hub-Mail-Message-Id" not in msgs[2].headers
    assert msgs[2].headers["Nats-Msg-Id"] == ingress.landing.message_id(
        f"uid:{msgs[2].headers['Hub-Mail-Uidvalidity']}:{uids[2]}")
    assert await mail.messages(user) == []
    processed = await mail.messages(user, "Processed")
    assert [m.raw for m in processed] == raws and not any("\\Seen" in m.flags for m in processed)
    assert (ingress.stored, ingress.duplicates, ingress.failed) == (3, 0, 0)


async def test_mail_arriving_during_idle_is_picked_up_promptly(mail: Any, js: Any, user: str,
                                                               make_ingress: MakeIngress) -> None:
    """A mail delivered by SMTP while the ingress waits in IDLE wakes it and is stored at once, not at a renew."""
    ingress = await make_ingress(mail, user)
    await ingress.wait_for(lambda i: i.state == "idle")
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = HUB, user, "while idle"
    msg.set_content("x")
    began = time.monotonic()
    await delivered(mail, user, msg)
    await ingress.wait_for(lambda i: i.moved == 1, timeout=5)
    assert time.monotonic() - began < 30  # IDLE renews only every 5 minutes: this was the push
    [stored_msg] = await stored(js, ingress)
    assert b"Subject: while idle" in stored_msg.data


class QuickRetryIngress(ImapIngress):
    """The production backoff (0.5 s doubling to 30 s) shortened, so an outage of several attempts stays fast."""

    BACKOFF_START = 0.02
    BACKOFF_MAX = 0.05


async def test_imap_restart_reconnects_and_goes_on(mail: Any, js: Any, user: str,
                                                   make_ingress: MakeIngress) -> None:
    """Across an IMAP restart of several failed attempts the ingress warns once, reconnects and stores the new mail."""
    await mail.inject(user, a_mail(user, "before"))
    ingress = await make_ingress(mail, user, cls=QuickRetryIngress)
    await ingress.wait_for(lambda i: i.moved == 1 and i.state == "idle")
    with structlog.testing.capture_logs() as logs:
        await mail.stop_imap()
        await ingress.wait_for(lambda i: i.attempts >= 3)  # lost, then refused twice
        await delivered(mail, user, a_mail(user, "during the outage"))
        await mail.start_imap()
        await ingress.wait_for(lambda i: i.moved == 2, timeout=10)
    assert ingress.reconnects == 1 and ingress.attempts == 0
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["imap_unavailable"]
    assert [b"Subject: before" in m.data for m in await stored(js, ingress)] == [True, False]
    assert await mail.messages(user) == []


async def test_a_failed_store_leaves_the_mail_in_inbox(mail: Any, js: Any, user: str, unique: str,
                                                       make_ingress: MakeIngress) -> None:
    """While JetStream does not confirm (no stream captures the subject), the mail stays unseen in INBOX; then lands."""
    raw = a_mail(user, "keep me")
    await mail.inject(user, raw)

    class NoStreamLanding(Landing):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            self.real_subject, self.subject = self.subject, f"nostream.{unique}"

    ingress = await make_ingress(mail, user, NoStreamLanding, cls=QuickRetryIngress)
    await ingress.wait_for(lambda i: i.failed >= 1 and i.state == "retrying")
    [kept] = await mail.messages(user)
    assert kept.raw == raw and "\\Seen" not in kept.flags
    assert (ingress.stored, ingress.moved) == (0, 0)
    ingress.landing.subject = ingress.landing.real_subject  # type: ignore[attr-defined]
    await ingress.wait_for(lambda i: i.moved == 1)
    assert [m.data for m in await stored(js, ingress)] == [raw]
    assert await mail.messages(user) == []


async def test_an_already_stored_mail_is_moved_not_stored_twice(mail: Any, js: Any, user: str,
                                                                make_ingress: MakeIngress) -> None:
    """A mail stored before a crash (same Message-ID) is a JetStream duplicate: counted, moved, kept once."""
    raw = a_mail(user, "stored before the crash")
    await mail.inject(user, raw)
    ingress = await make_ingress(mail, user)
    await ingress.wait_for(lambda i: i.moved == 1)
    # the crash: the same mail is back in INBOX (a move that never happened), with a new UID
    await mail.inject(user, raw)
    await ingress.wait_for(lambda i: i.moved == 2)
    assert (ingress.stored, ingress.duplicates) == (1, 1)
    assert [m.data for m in await stored(js, ingress)] == [raw]
    assert len(await mail.messages(user, "Processed")) == 2


async def test_hostile_mail_is_stored_with_clean_headers(mail: Any, js: Any, user: str,
                                                         make_ingress: MakeIngress) -> None:
    """Broken MIME with a folded, non-ASCII Message-ID is stored byte for byte; its header value is one ASCII line."""
    hostile = (b"Message-ID: <caf\xe9\r\n\t@evil.example>\r\nContent-Type: multipart/mixed; boundary=\"x\"\r\n\r\n"
               b"--x\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!\xff\xfe\r\n")
    await mail.inject(user, hostile)
    ingress = await make_ingress(mail, user)
    await ingress.wait_for(lambda i: i.moved == 1)
    [msg] = await stored(js, ingress)
    assert msg.data == hostile
    value = msg.headers["Hub-Mail-Message-Id"]
    assert value.isascii() and value.isprintable() and value.startswith("<caf") and value.endswith("@evil.example>")


async def test_without_move_it_copies_flags_and_expunges(mail: Any, js: Any, user: str,
                                                         make_ingress: MakeIngress,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """On a server without MOVE the mail is copied to Processed, flagged \\Deleted and expunged from INBOX."""
    real_has = ImapSession.has
    monkeypatch.setattr(ImapSession, "has", lambda self, cap: cap != "MOVE" and real_has(self, cap))
    await mail.inject(user, a_mail(user, "old server"))
    ingress = await make_ingress(mail, user, folder="INBOX", processed="Traité")
    await ingress.wait_for(lambda i: i.moved == 1)
    assert await mail.messages(user) == []
    assert len(await mail.messages(user, "Traité")) == 1


async def test_plain_imap_with_polling(mail: Any, user: str, js: Any, make_ingress: MakeIngress) -> None:
    """With `security: none` on loopback and `idle: false`, the ingress polls and still lands each mail."""
    async with type(mail)(users={user: PASSWORD}, tls=False) as plain:
        ingress = await make_ingress(plain, user, idle=False, poll="100ms")
        await ingress.wait_for(lambda i: i.state == "polling")
        await plain.inject(user, a_mail(user, "polled"))
        await ingress.wait_for(lambda i: i.moved == 1)
        await ingress.stop()
        assert ingress.state == "stopped" and ingress.stored == 1


async def test_a_hub_runs_an_imap_flow_end_to_end(tmp_path: Path, mail: Any, js: Any, user: str,
                                                  unique: str, nats_url: str) -> None:
    """A Hub with an imap-sourced flow republishes each mail's raw bytes, and logs out when it stops."""
    project = project_from(tmp_path, f"""
        streams:
          - {{name: {unique.upper()}, subjects: ["{unique}.>"]}}
        endpoints:
          mbox:
            adapter: imap
            host: ${{IMAP_HOST:-{mail.host}}}
            port: ${{IMAP_PORT:-{mail.imap_port}}}
            username: {user}
            password: {{env: IMAP_TEST_PASSWORD}}
            ca_bundle: {mail.ca_file}
            timeout: 5s
        """, f"""
        name: mail-{unique}
        source: {{imap: {{endpoint: mbox, processed: Processed}}}}
        steps:
          - publish: {unique}.mail
        """)
    raw = a_mail(user, "through the hub")
    await mail.inject(user, raw)
    hub = await started_hub(project, nats_url)
    out = await StreamReader.open(js, f"{unique}.mail")  # the hub declared the stream; all of it is read
    try:
        [msg] = await out.wait_for(1)
        assert msg.data == raw
        await hub.ingresses[f"mail-{unique}"].wait_for(lambda i: i.moved == 1)
    finally:
        await hub.stop()
        await out.sub.unsubscribe()
    assert await mail.messages(user) == []

    async def logged_out() -> bool:
        return mail.imap.connections == 0

    await wait_until(logged_out, timeout=5)


async def test_a_mail_too_big_to_store_goes_to_the_quarantine_folder_the_source_names(
        mail: Any, js: Any, user: str, unique: str, make_ingress: MakeIngress) -> None:
    """With `quarantine: Hub-Too-Big`, a mail past the claim-check limit is moved to that folder (created
    on the server), unread, with the alert naming it; INBOX is left empty and nothing goes to Quarantine."""
    await js.add_stream(name=f"OPS{unique}", subjects=[f"ops.alert.mail-{unique}"])
    alerts = await StreamReader.open(js, f"ops.alert.mail-{unique}")
    ingress = await make_ingress(mail, user, quarantine="Hub-Too-Big")
    ingress.landing.claims.max_bytes = 4096  # the production limit is 64 MiB: the same path, smaller
    await ingress.wait_for(lambda i: i.state in ("idle", "polling"))
    await delivered(mail, user, a_mail(user, "x" * 8192))
    [alert] = await alerts.wait_for(1)
    await ingress.wait_for(lambda i: i.quarantined == 1)
    assert json.loads(alert.data)["moved_to"] == "Hub-Too-Big"
    assert await mail.messages(user) == [] and len(await mail.messages(user, "Hub-Too-Big")) == 1
    with pytest.raises(KeyError):
        await mail.messages(user, "Quarantine")


def test_the_quarantine_folder_is_a_folder_of_its_own() -> None:
    """A quarantine named like the watched or the processed folder is refused at load (the mail would be
    fetched again, or look processed); the default is Quarantine."""
    def source(**imap: Any) -> Any:
        return Flow.model_validate({"name": "m", "source": {"imap": {"endpoint": "mbox", **imap}},
                                    "steps": [{"publish": "x.mail"}]}).source
    assert source().imap.quarantine == "Quarantine"
    for same in ({"quarantine": "INBOX"}, {"processed": "Done", "quarantine": "Done"}):
        with pytest.raises(ValueError, match="a folder of its own"):
            source(**same)
