"""The `batch` source (engine/batching.py) on a real nats-server, and the JWT bearer login of the
`salesforce` endpoint against the emulator."""

from __future__ import annotations

import json

import nats
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from engine.adapter import CallContext, Services
from engine.batching import read_batch
from engine.errors import TargetRejected
from engine.messages import REPLAY_FOR
from sandbox.salesforce import SalesforceOrg
from tests.helpers import StreamReader, project_from, settled, started_hub, wait_until

CONFIG = """
nats: {urls: []}
streams:
  - {name: METER, subjects: ["meter.>"]}
  - {name: OUT, subjects: ["out.>"]}
"""
FLOW = """
name: gather
source:
  batch: {subject: meter.month.completed, size: 5, within: 500ms, transform: salesforce_meter.month_record,
          key: "{Hub_Key__c}"}
steps:
  - publish: out.batches
"""


def total(meter: str, value: float, **change) -> bytes:
    return json.dumps({"meter_id": meter, "site_id": "S1", "register": "r", "unit": "kWh", "month": "2027-01",
                       "total": value, "readings": 31, **change}).encode()


async def test_batches_close_full_or_late_keep_the_last_of_a_key_and_dead_letter_what_cannot_join(broker,
                                                                                                 tmp_path):
    """Seven totals: a full batch of five closes at once, the rest when `within` runs out; a total sent
    again replaces the first in its batch; one whose transform fails is dead-lettered alone with its
    reason; a replay meant for another flow is not taken; every source message is acked."""
    nc = await nats.connect(broker.url)
    js = nc.jetstream()
    hub = await started_hub(project_from(tmp_path, CONFIG, FLOW), broker.url)
    try:
        batches = await StreamReader.open(js, "out.batches")
        for meter, value in (("M1", 1.0), ("M2", 2.0), ("M3", 3.0), ("M1", 1.5), ("M4", 4.0)):
            await js.publish("meter.month.completed", total(meter, value))
        await batches.wait_for(1)
        await js.publish("meter.month.completed", json.dumps({"meter_id": "M5"}).encode())   # no month: fails
        await js.publish("meter.month.completed", total("M6", 6.0), headers={REPLAY_FOR: "another-flow"})
        await js.publish("meter.month.completed", total("M7", 7.0))
        await batches.wait_for(2)
        first, second = batches.payloads()
        assert first["count"] == 4 and first["stream"] == "METER" and first["flow"] == "gather"
        items = await read_batch(js, first)
        assert [(i["item"]["Meter_Id__c"], i["item"]["Total__c"]) for i in items] == [
            ("M2", 2.0), ("M3", 3.0), ("M1", 1.5), ("M4", 4.0)]          # the later M1 replaced the first
        assert [i["item"]["Meter_Id__c"] for i in await read_batch(js, second)] == ["M7"]
        [dead] = await (await StreamReader.open(js, "dlq.gather")).wait_for(1)
        assert json.loads(dead.data)["meter_id"] == "M5" and dead.headers["Hub-Dlq-Error-Class"] == "TransformFailed"
        assert "KeyError" in dead.headers["Hub-Dlq-Error"]
        assert dead.headers["Hub-Dlq-Subject"] == "meter.month.completed"
        await wait_until(lambda: settled(js, "METER", "gather-batch"))
    finally:
        await hub.stop()
        await nc.close()


async def test_jwt_bearer_logs_in_with_the_key_and_a_wrong_key_is_refused(tmp_path, monkeypatch):
    """The endpoint signs an RS256 assertion with its private key; the org accepts it for the app
    holding the certificate and refuses one signed with another key (TargetRejected, invalid_grant)."""
    from adapters.salesforce import SalesforceAdapter
    from engine.validation import load_project

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    async with SalesforceOrg() as org:
        org.add_client("jwt-app", "unused", certificate_key=key.public_key())
        (tmp_path / "key.pem").write_text(pem)
        (tmp_path / "config.yaml").write_text(f"""
endpoints:
  salesforce:
    adapter: salesforce
    login_url: {org.url}
    pubsub: {org.pubsub_target}
    pubsub_tls: false
    auth: {{jwt_bearer: {{client_id: jwt-app, username: integration@plu.example, audience: "{org.url}",
                         private_key: {{file: {tmp_path / 'key.pem'}}}}}}}
    operations:
      upsert_account: {{upsert: {{sobject: Account, external_id: PLU_Account_Id__c}}}}
""")
        endpoint = load_project(tmp_path / "config.yaml", []).endpoints["salesforce"]
        adapter = SalesforceAdapter("salesforce", endpoint, Services())
        await adapter.start()
        try:
            ok = await adapter.call("upsert_account", {"PLU_Account_Id__c": "A-1", "Name": "One"},
                                    CallContext({}, "m", "c", 5.0))
            assert ok["created"] is True and adapter.tokens.logins == 1
        finally:
            await adapter.close()
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (tmp_path / "key.pem").write_text(other.private_bytes(serialization.Encoding.PEM,
                                                              serialization.PrivateFormat.PKCS8,
                                                              serialization.NoEncryption()).decode())
        adapter = SalesforceAdapter("salesforce", endpoint, Services())
        await adapter.start()
        try:
            with pytest.raises(TargetRejected, match="invalid_grant"):
                await adapter.call("upsert_account", {"PLU_Account_Id__c": "A-2", "Name": "Two"},
                                   CallContext({}, "m", "c", 5.0))
        finally:
            await adapter.close()
