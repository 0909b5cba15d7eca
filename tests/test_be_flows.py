"""Belgium's email ERP through the shipped flows, end to end over a real SMTP and IMAP server and a
real nats-server: switches and account changes by flat file, replies matched however they come back,
restarts of the runner and of the IMAP server, hostile mail quarantined, overdue requests alerted."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from engine.embedded_nats import EmbeddedNats
from engine.messages import event_headers
from engine.runtime import Hub
from engine.waiting import pending_records
from sandbox.be_erp import BeErpBehaviour, BelgianErpSimulator
from sandbox.mail import MailSandbox
from sandbox.mail.compose import system_mail
from schemas.be_flatfile import BeAccepted, BeFileHeader, BeFlatFile, attachment_name, encode, subject_tag
from tests.helpers import StreamReader, wait_until
from tests.test_erp_flows import shipped

PASSWORD = "be-flows-pw"
BE_FLOWS = ["be-contract-switch-email", "be-account-change-email", "be-erp-replies", "be-contract-switch-track"]
FAST_TRACK = {"every: [30s, 2m, 10m, 30m, 1h]": "every: [300ms]"}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def mail():
    async with MailSandbox(users={"postmaster@plu.example": PASSWORD}) as sandbox:
        yield sandbox


@pytest.fixture
def js(broker_js):
    return broker_js


@pytest_asyncio.fixture(loop_scope="session")
async def parties(mail, monkeypatch):
    """A hub mailbox and a Belgian ERP of this test's own, and the environment config/sandbox.yaml reads."""
    tag = uuid.uuid4().hex[:8]
    hub_user, erp_user = f"hub-{tag}@plu.example", f"erp-be-{tag}@plu.example"
    await mail.add_user(hub_user, PASSWORD)
    await mail.add_user(erp_user, PASSWORD)
    for name, value in {"SMTP_HOST": mail.host, "SMTP_PORT": str(mail.smtp_port), "IMAP_HOST": mail.host,
                        "IMAP_PORT": str(mail.imap_port), "MAIL_CA_BUNDLE": str(mail.ca_file),
                        "HUB_MAIL_USER": hub_user, "HUB_MAIL_PASSWORD": PASSWORD, "BE_ERP_ADDRESS": erp_user,
                        "CRM_BRIDGE_TOKEN": "t", "ERP_DE_PASSWORD": "unused"}.items():
        monkeypatch.setenv(name, value)
    erp = BelgianErpSimulator(mail, erp_user, PASSWORD, BeErpBehaviour(completion_delay=0.3), idle_seconds=5)
    async with erp:
        yield hub_user, erp
    assert erp.errors == []


async def hub_for(tmp: Path, broker: EmbeddedNats, replace: dict[str, str] | None = None) -> Hub:
    hub = Hub(shipped(tmp, BE_FLOWS, {**FAST_TRACK, **(replace or {})}), servers=[broker.url])
    await hub.start()
    return hub


def contract(n: int, **extra: Any) -> dict[str, Any]:
    return {"contract_id": f"K-BE-{n}", "version": 1, "account_id": f"A-BE-{n}", "country": "BE",
            "tariff_code": "GREEN-12", "signed_on": "2026-12-01", "key_customer": True,
            "sites": [{"site_id": f"S-BE-{n}-1", "postcode": "4000", "city": "Liège", "meter_ids": ["EAN1"]},
                      {"site_id": f"S-BE-{n}-2", "postcode": "1030", "city": "Schaerbeek", "meter_ids": ["EAN2"]}],
            **extra}


async def sign(js: Any, body: dict[str, Any]) -> None:
    await js.publish("crm.contract.signed", json.dumps(body).encode(),
                     headers=event_headers("/crm/salesforce", "crm.contract.signed"))


async def test_a_belgian_switch_goes_out_by_mail_and_comes_back_as_switched(tmp_path: Path, broker, js, mail, parties):
    """The contract reaches the ERP as one flat file (a CSW per site, Liège intact); the ACK and the later
    SWC come back by mail and the CRM gets erp.contract.switch-requested then erp.contract.switched, as
    for the SOAP countries; both replies end in Processed, and nothing stays pending."""
    hub_user, erp = parties
    hub = await hub_for(tmp_path, broker)
    requested = await StreamReader.open(js, "erp.contract.switch-requested")
    switched = await StreamReader.open(js, "erp.contract.switched")
    try:
        await sign(js, contract(1))
        [req] = await requested.wait_for(1)
        [done] = await switched.wait_for(1, timeout=20)

        async def nothing_pending() -> bool:
            return await pending_records(js) == []

        await wait_until(nothing_pending)
    finally:
        await hub.stop()
    body = json.loads(done.data)
    assert body["country"] == "BE" and body["status"] == "COMPLETED" and body["contract_id"] == "K-BE-1"
    assert json.loads(req.data)["erp_ref"] == erp.handled[0].token and len(erp.handled) == 1
    assert await mail.messages(hub_user) == [] and len(await mail.messages(hub_user, "Processed")) == 2


async def test_a_refused_record_comes_back_as_switch_failed_with_the_erps_reason(tmp_path: Path, broker, js, parties):
    """A contract the ERP refuses (C009) ends as erp.contract.switch-failed carrying the ERP's code and text."""
    hub = await hub_for(tmp_path, broker)
    failed = await StreamReader.open(js, "erp.contract.switch-failed")
    try:
        await sign(js, contract(2) | {"contract_id": "BLOCKED-2"})
        [msg] = await failed.wait_for(1, timeout=20)
    finally:
        await hub.stop()
    body = json.loads(msg.data)
    assert body["status"] == "FAILED" and body["reason"].startswith("C009: ")


async def test_a_reply_sent_twice_from_a_mail_client_is_handled_once(tmp_path: Path, broker, js, parties):
    """Every reply mailed twice, quoted, re-encoded quoted-printable, without In-Reply-To: the token still
    matches them and the CRM hears of the switch exactly once."""
    hub_user, erp = parties
    erp.behaviour = BeErpBehaviour(completion_delay=0.3, reply_twice=True, mail_client=True)
    hub = await hub_for(tmp_path, broker)
    switched = await StreamReader.open(js, "erp.contract.switched")
    dlq = await StreamReader.open(js, "dlq.>")
    try:
        await sign(js, contract(3))
        await switched.wait_for(1, timeout=20)
        runner = hub.runners["be-erp-replies"]
        await erp.wait_until(lambda e: len(e.sent) == 4)

        async def four_replies_done() -> bool:
            return runner.stats.acked + runner.stats.filtered >= 4

        await wait_until(four_replies_done, timeout=20)
    finally:
        await hub.stop()
    assert len(switched.messages) == 1 and dlq.messages == []


async def test_an_account_change_links_the_erps_key(tmp_path: Path, broker, js, parties):
    """crm.account.changed for Belgium comes back as erp.account.linked with the ERP's key, like elsewhere."""
    hub_user, erp = parties
    hub = await hub_for(tmp_path, broker)
    linked = await StreamReader.open(js, "erp.account.linked")
    try:
        account = {"account_id": "ACC-BE-1", "country": "BE", "name": "Jürgen Müller", "kind": "household",
                   "street": "Rue Royale 1", "postcode": "1030", "city": "Schaerbeek"}
        await js.publish("crm.account.changed", json.dumps(account).encode(),
                         headers=event_headers("/crm/salesforce", "crm.account.changed"))
        [msg] = await linked.wait_for(1, timeout=20)
    finally:
        await hub.stop()
    assert json.loads(msg.data)["erp_account_key"] == erp.accounts["ACC-BE-1"]


async def test_a_reply_arriving_while_the_runner_is_down_completes_the_switch_after_a_restart(
        tmp_path: Path, broker, js, mail, parties):
    """The runner stops after the request went out; the late replies wait in the mailbox; a new runner
    picks them up and the switch completes."""
    hub_user, erp = parties
    erp.behaviour = BeErpBehaviour(completion_delay=None)
    first = await hub_for(tmp_path, broker)
    switched = await StreamReader.open(js, "erp.contract.switched")
    try:
        await sign(js, contract(4))
        await erp.wait_until(lambda e: len(e.sent) == 1)  # the ACK is mailed
    finally:
        await first.stop()
    assert await erp.complete_switches() == 1
    await erp.wait_until(lambda e: len(e.sent) == 2)
    second = await hub_for(tmp_path, broker)
    try:
        [msg] = await switched.wait_for(1, timeout=20)
    finally:
        await second.stop()
    assert json.loads(msg.data)["contract_id"] == "K-BE-4"


async def test_a_mail_stored_but_not_yet_moved_is_processed_once_after_a_crash(
        tmp_path: Path, broker, js, mail, parties):
    """A crash between storing a mail and moving it leaves it in INBOX: the next runner stores it again,
    JetStream drops the repeat (same Message-ID), the mail is moved and no event is repeated."""
    hub_user, erp = parties
    hub = await hub_for(tmp_path, broker)
    switched = await StreamReader.open(js, "erp.contract.switched")
    try:
        await sign(js, contract(5))
        await switched.wait_for(1, timeout=20)
    finally:
        await hub.stop()
    processed = await mail.messages(hub_user, "Processed")
    for stored in processed:  # the state after a crash: stored in JetStream, still in INBOX
        await mail.inject(hub_user, stored.raw)
    again = await hub_for(tmp_path, broker)
    try:
        ingress = again.ingresses["be-erp-replies"]
        await ingress.wait_for(lambda i: i.duplicates >= len(processed) and i.moved >= len(processed))
    finally:
        await again.stop()
    assert len(switched.messages) == 1 and await mail.messages(hub_user) == []


async def test_the_imap_server_restarting_does_not_stop_the_replies(tmp_path: Path, broker, js, mail, parties):
    """The IMAP server restarts while the hub idles on the mailbox; the hub reconnects and the switch completes."""
    hub_user, erp = parties
    erp.behaviour = BeErpBehaviour(completion_delay=None)
    hub = await hub_for(tmp_path, broker)
    switched = await StreamReader.open(js, "erp.contract.switched")
    try:
        ingress = hub.ingresses["be-erp-replies"]
        await ingress.wait_for(lambda i: i.state == "idle")
        await mail.restart_imap()
        await sign(js, contract(6))
        await erp.wait_until(lambda e: len(e.sent) == 1)
        await erp.complete_switches()
        [msg] = await switched.wait_for(1, timeout=30)
    finally:
        await hub.stop()
    assert json.loads(msg.data)["contract_id"] == "K-BE-6" and ingress.reconnects >= 1


async def test_hostile_and_broken_mail_is_quarantined_with_its_raw_mime_and_the_runner_goes_on(
        tmp_path: Path, broker, js, mail, parties):
    """A mail without attachment, one with a broken flat file and one answering no request each land in
    dlq.be-erp-replies with the raw MIME and the reason; a real switch still completes afterwards."""
    hub_user, erp = parties
    no_file = b"From: spam@example.org\r\nSubject: win!\r\nMessage-ID: <spam-1@example.org>\r\n\r\nclick\r\n"
    broken = system_mail("erp@x", hub_user, "re", "t", b"HDRRSP01garbage\r\n", "PLU_RSP_x.txt").as_bytes()
    stray = system_mail("erp@x", hub_user, f"re {subject_tag('CSW-NOPE')}", "t", encode(BeFlatFile(
        header=BeFileHeader(file_type="RSP", correlation_token="CSW-NOPE", sender="ERP-BE"),
        records=[BeAccepted(ref_seq=1, ref_type="CSW", ref_key="K")])), attachment_name("RSP", "CSW-NOPE")).as_bytes()
    for raw in (no_file, broken, stray):
        await mail.inject(hub_user, raw)
    hub = await hub_for(tmp_path, broker)
    dlq = await StreamReader.open(js, "dlq.be-erp-replies")
    switched = await StreamReader.open(js, "erp.contract.switched")
    try:
        records = await dlq.wait_for(3)
        await sign(js, contract(7))
        await switched.wait_for(1, timeout=20)
    finally:
        await hub.stop()
    classes = sorted(r.headers["Hub-Dlq-Error-Class"] for r in records)
    assert classes == ["FlatFileError", "NotBelgianReply", "UnmatchedReply"]
    assert sorted(r.data for r in records) == sorted([no_file, broken, stray])
    assert all(r.headers.get("Hub-Dlq-Error") for r in records)


async def test_a_request_without_a_reply_by_its_deadline_raises_an_alert_and_stays_visible(
        tmp_path: Path, broker, js, parties):
    """With a 1 s deadline and an ERP that never answers, the alert fires once and the request is listed
    as pending with its checks."""
    hub_user, erp = parties
    erp.behaviour = BeErpBehaviour(reply_delay=3600)
    hub = await hub_for(tmp_path, broker, {"deadline: 48h": "deadline: 1s"})
    alerts = await StreamReader.open(js, "ops.alert.be-contract-switch-track")
    try:
        await sign(js, contract(8))
        [alert] = await alerts.wait_for(1, timeout=20)
        [record] = await pending_records(js, "be-contract-switch-track")
    finally:
        await hub.stop()
    assert json.loads(alert.data)["alert"] == "deadline" and record["key"] == "K-BE-8:v1" and record["alerted"]


async def test_a_request_mail_that_bounces_fails_the_switch_alerts_ops_and_leaves_nothing_pending(
        tmp_path: Path, broker, js, mail, parties, monkeypatch):
    """The ERP's address is gone: the submission server accepts the request and then bounces it (an RFC 3464
    report to the hub's mailbox). The CRM gets erp.contract.switch-failed "mail to the Belgian ERP bounced",
    ops get ops.alert.be-erp-replies, nothing waits for a reply and nothing is dead-lettered."""
    hub_user, erp = parties
    gone = f"gone-{uuid.uuid4().hex[:8]}@erp.example.be"
    mail.bounce(gone)
    monkeypatch.setenv("BE_ERP_ADDRESS", gone)
    hub = await hub_for(tmp_path, broker)
    failed = await StreamReader.open(js, "erp.contract.switch-failed")
    alerts = await StreamReader.open(js, "ops.alert.be-erp-replies")
    dlq = await StreamReader.open(js, "dlq.be-erp-replies")
    try:
        await sign(js, contract(9))
        [event] = await failed.wait_for(1, timeout=20)
        [alert] = await alerts.wait_for(1, timeout=20)

        track = hub.runners["be-contract-switch-track"]

        async def tracking_ended() -> bool:  # acked only once `until` is done: UNDELIVERABLE ended the wait
            return track.stats.acked >= 1 and await pending_records(js, "be-contract-switch-track") == []

        await wait_until(tracking_ended, timeout=20)
    finally:
        await hub.stop()
    body, raised = json.loads(event.data), json.loads(alert.data)
    assert body["contract_id"] == "K-BE-9" and body["reason"].startswith(f"mail to the Belgian ERP bounced: 550 5.1.1 <{gone}>")
    assert raised["alert"] == "request_undeliverable" and raised["recipient"] == gone and raised["request"] == "K-BE-9"
    assert dlq.messages == [] and erp.handled == []
    assert len(await mail.messages(hub_user, "Processed")) == 1


@pytest.mark.parametrize("client", ["outlook-reply-with-attachments", "outlook-tnef", "apple-mail-inline",
                                    "script-octet-stream"])
async def test_replies_from_real_client_shapes_complete_the_switch(tmp_path: Path, broker, js, parties, client: str):
    """The ERP's people answer from Outlook (our request first, or TNEF), Apple Mail (inline, RFC 2047 name) or
    a script (octet-stream, no name): the ACK and the SWC travel by SMTP and IMAP and the switch completes."""
    hub_user, erp = parties
    erp.behaviour = BeErpBehaviour(completion_delay=0.3, client=client)
    hub = await hub_for(tmp_path, broker)
    switched = await StreamReader.open(js, "erp.contract.switched")
    dlq = await StreamReader.open(js, "dlq.be-erp-replies")
    try:
        await sign(js, contract(10))
        [done] = await switched.wait_for(1, timeout=20)
    finally:
        await hub.stop()
    assert json.loads(done.data)["contract_id"] == "K-BE-10" and dlq.messages == []


async def test_a_bounce_of_a_mail_we_did_not_send_and_an_echoed_request_are_dead_letters_that_say_so(
        tmp_path: Path, broker, js, mail, parties):
    """A DSN about another system's mail and an Outlook reply carrying only our own request land in
    dlq.be-erp-replies with their raw MIME and a reason that says exactly that."""
    from tests.mail_corpus.build import load

    hub_user, erp = parties
    for name in ("dsn-for-a-mail-we-did-not-send", "outlook-request-only"):
        await mail.inject(hub_user, load(name))
    hub = await hub_for(tmp_path, broker)
    dlq = await StreamReader.open(js, "dlq.be-erp-replies")
    try:
        records = await dlq.wait_for(2, timeout=20)
    finally:
        await hub.stop()
    reasons = {r.headers["Hub-Dlq-Error-Class"]: r.headers["Hub-Dlq-Error"] for r in records}
    assert "for a mail the hub did not send" in reasons["UnknownBounce"]
    assert "carries only our own request" in reasons["NotBelgianReply"]


async def test_the_demo_section_on_real_mail_passes_and_puts_the_erp_back(tmp_path: Path, broker, js, mail, parties):
    """sandbox/demo_mail.section_mail: an Outlook reply with our request first completes the switch, a bounce
    fails the next one and alerts ops; every check passes and the ERP's mailbox takes mail again after."""
    import types

    from sandbox.demo_mail import section_mail

    hub_user, erp = parties
    hub = await hub_for(tmp_path, broker)
    results: list[tuple[bool, str]] = []
    try:
        await section_mail(js._nc, js, types.SimpleNamespace(mail=mail, be_erp=erp), lambda ok, text: results.append(
            (ok, text)), timeout=20)
    finally:
        await hub.stop()
    assert len(results) == 3 and all(ok for ok, _ in results), results
    assert erp.address.lower() not in mail.smtp._handler.bounces and erp.behaviour.client is None
