"""Payloads of any size (engine/claim_check.py): the limit comes from the server and counts headers; what
does not fit travels by claim check through the Object Store, and what cannot be stored at all is
quarantined with an alert while the ingress goes on.

The mail tests run a flow whose source and first step are be-erp-replies' own (the `imap:` mailbox, then
`be_erp.parse_reply`) against Dovecot and the pymap sandbox, with a real nats-server at its default
max_payload (1 MiB): before, a mail of max_payload - 100 bytes made nats-server drop the connection and
nats-py close for good, and a bigger one stayed in INBOX for ever.
"""

from __future__ import annotations

import email.policy
import json
import os
from pathlib import Path
from typing import Any

import nats
import pytest

from engine.claim_check import CLAIM_SHA, CLAIM_SIZE, ClaimChecks, fits, max_payload
from engine.config import HubConfig
from engine.ingress import Landing
from engine.spec import Flow
from engine.streams import ensure_streams
from sandbox.mail.compose import system_mail
from schemas.be_flatfile import BeAccepted, BeFileHeader, BeFlatFile, attachment_name, encode, subject_tag
from tests.helpers import StreamReader, project_from, started_hub
from transforms.be_erp import parse_reply

PASSWORD = "imap-test-pw"
os.environ["CLAIM_TEST_IMAP_PASSWORD"] = PASSWORD
MIB = 1024 * 1024


def reply_of(size: int, token: str, to: str) -> bytes:
    """A Belgian ERP reply (flat file attached) padded to exactly `size` bytes in its MIME epilogue."""
    file = encode(BeFlatFile(header=BeFileHeader(file_type="RSP", correlation_token=token, sender="ERP-BE"),
                             records=[BeAccepted(ref_seq=1, ref_type="CSW", ref_key=f"K-{token}")]))
    raw = system_mail("erp-be@plu.example", to, f"re {subject_tag(token)}", "see attachment", file,
                      attachment_name("RSP", token)).as_bytes(policy=email.policy.SMTP)
    need = size - len(raw)
    assert need >= 0, f"the reply alone is {len(raw)} bytes"
    line = b"x" * 76 + b"\r\n"
    pad = line * (need // len(line))
    tail = need - len(pad)
    pad += b"y" * max(0, tail - 2) + b"\r\n"[:tail] if tail else b""
    out = raw + pad
    assert len(out) == size
    return out


@pytest.fixture(scope="module")
def mail(imap_server: Any) -> Any:
    return imap_server


async def test_a_payload_over_the_limit_with_its_headers_goes_by_claim_check_and_the_connection_lives(
        nats_url: str, unique: str) -> None:
    """A body of max_payload - 100 bytes fits alone but not with its headers: it is stored by claim check
    (same bytes, size and SHA-256 in the reference), and the connection stays up for the next publish."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await ensure_streams(js, HubConfig())
        await js.add_stream(name=unique.upper(), subjects=[f"{unique}.>"])
        assert max_payload(js) == nc.max_payload == MIB
        flow = Flow.model_validate({"name": f"big-{unique}", "source": {"subject": f"{unique}.in"},
                                    "steps": [{"publish": f"{unique}.out"}]})
        landing = Landing(flow, js, 5.0, "test")
        body = os.urandom(MIB - 100)
        assert not fits(js, body, {"ce-id": "x" * 40})
        assert await landing.store(body, "one") is True
        assert await landing.store(b"small", "two") is True and nc.is_connected
        reader = await StreamReader.open(js, landing.subject)
        [big, small] = await reader.wait_for(2)
        await reader.sub.unsubscribe()
        assert big.data == b"" and big.headers[CLAIM_SIZE] == str(len(body)) and small.data == b"small"
        assert await ClaimChecks(js).fetch(big.headers) == body and landing.claimed == 1
    finally:
        await nc.close()


def project_for(tmp: Path, mail: Any, user: str, unique: str) -> Any:
    return project_from(tmp, f"""
        streams:
          - {{name: {unique.upper()}, subjects: ["{unique}.>", "ops.alert.mail-{unique}"]}}
        endpoints:
          mbox:
            adapter: imap
            host: {mail.host}
            port: {mail.imap_port}
            username: {user}
            password: {{env: CLAIM_TEST_IMAP_PASSWORD}}
            ca_bundle: {mail.ca_file}
            timeout: 10s
        """, f"""
        name: mail-{unique}
        source: {{imap: {{endpoint: mbox, folder: INBOX, processed: Processed}}}}   # be-erp-replies' source
        steps:
          - transform: be_erp.parse_reply                                          # and its first step
          - publish: {unique}.parsed
        """)


async def test_mails_of_max_payload_minus_100_and_of_5_mib_reach_the_flow_by_claim_check(
        tmp_path: Path, mail: Any, nats_url: str, unique: str) -> None:
    """Both mails are stored by claim check and moved to Processed, the hub stays connected, and
    be_erp.parse_reply gets each mail's exact bytes (its output equals parsing the original)."""
    user = f"u{unique}@plu.example"
    await mail.add_user(user, PASSWORD)
    raws = [reply_of(MIB - 100, f"CSW-{unique}-A", user), reply_of(5 * MIB, f"CSW-{unique}-B", user)]
    for raw in raws:
        await mail.inject(user, raw)
    hub = await started_hub(project_for(tmp_path, mail, user, unique), nats_url)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    parsed = await StreamReader.open(js, f"{unique}.parsed")
    try:
        got = await parsed.wait_for(2, timeout=30)
        ingress = hub.ingresses[f"mail-{unique}"]
        await ingress.wait_for(lambda i: i.moved == 2)
        assert hub.nc.is_connected and ingress.landing.claimed == 2
        stored = await StreamReader.open(js, ingress.landing.subject)
        landed = await stored.wait_for(2)
        await stored.sub.unsubscribe()
    finally:
        await hub.stop()
        await parsed.sub.unsubscribe()
        await nc.close()
    assert sorted(json.dumps(m, sort_keys=True) for m in (json.loads(g.data) for g in got)) == \
        sorted(json.dumps(parse_reply(raw), sort_keys=True) for raw in raws)
    assert [m.data for m in landed] == [b"", b""] and sorted(int(m.headers[CLAIM_SIZE]) for m in landed) == \
        [MIB - 100, 5 * MIB] and all(len(m.headers[CLAIM_SHA]) == 64 for m in landed)
    assert await mail.messages(user) == [] and len(await mail.messages(user, "Processed")) == 2


async def test_a_mail_too_big_to_store_at_all_is_quarantined_with_an_alert_and_the_next_one_lands(
        tmp_path: Path, mail: Any, nats_url: str, unique: str) -> None:
    """A mail over the claim-check limit is moved to Quarantine unread with a mail_quarantined alert naming
    its size; the mail after it lands, and nothing is left in INBOX to be fetched again."""
    user = f"u{unique}@plu.example"
    await mail.add_user(user, PASSWORD)
    hub = await started_hub(project_for(tmp_path, mail, user, unique), nats_url)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    alerts = await StreamReader.open(js, f"ops.alert.mail-{unique}")
    parsed = await StreamReader.open(js, f"{unique}.parsed")
    try:
        ingress = hub.ingresses[f"mail-{unique}"]
        ingress.landing.claims.max_bytes = 2 * MIB  # the production limit is 64 MiB: the same path, smaller
        await ingress.wait_for(lambda i: i.state == "idle")
        await mail.inject(user, reply_of(3 * MIB, f"CSW-{unique}-Q", user))
        await mail.inject(user, reply_of(64 * 1024, f"CSW-{unique}-N", user))
        [alert] = await alerts.wait_for(1)
        [ok] = await parsed.wait_for(1)
        await ingress.wait_for(lambda i: i.moved == 1 and i.quarantined == 1)
    finally:
        await hub.stop()
        await alerts.sub.unsubscribe()
        await parsed.sub.unsubscribe()
        await nc.close()
    body = json.loads(alert.data)
    assert (body["alert"], body["moved_to"]) == ("mail_quarantined", "Quarantine")
    assert f"{3 * MIB} bytes exceed the claim-check limit" in body["reason"]
    assert json.loads(ok.data)["token"] == f"CSW-{unique}-N"
    assert await mail.messages(user) == [] and len(await mail.messages(user, "Quarantine")) == 1
