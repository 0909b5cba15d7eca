"""The `salesforce` endpoint's Collections upserts against the emulator: one request for many flow
messages, and each message settled by its own record's result."""

from __future__ import annotations

import asyncio
import json

import nats
import pytest

from engine.adapter import CallContext
from engine.errors import BusinessError, SlotsBusy, TargetServerError, Throttled
from sandbox.salesforce import SalesforceOrg
from tests.helpers import StreamReader, project_from, settled, started_hub, wait_until
from tests.salesforce_org import config, connect

FLOW = """
name: sf-account-keys
source: {subject: erp.account.linked}
steps:
  - transform: salesforce_crm.account_key_record
  - call: {endpoint: salesforce, operation: upsert_account}
on_error: {retry: [50ms, 100ms, 200ms], redeliver: [500ms, 1s]}
limits: {concurrency: 256}
idempotency: {enabled: false}
"""
COLLECTIONS = "\n".join(["collections: {linger: 200ms}"])


@pytest.fixture
async def org():
    org = await SalesforceOrg().start()
    connect(org)
    for i in range(200):
        org.change("Account", "PLU_Account_Id__c", f"A-{i:03d}", {"Name": f"Account {i}", "Country__c": "DE"})
    org.change("Account", "PLU_Account_Id__c", "A-OTHER", {"Name": "Holds K-DUP", "ERP_Account_Key__c": "K-DUP"})
    yield org
    await org.stop()


def linked(i: int, key: str | None = None, account: str | None = None) -> bytes:
    return json.dumps({"account_id": f"A-{i:03d}" if account is None else account, "country": "DE",
                       "erp_account_key": key or f"K-{i:03d}", "created": True}).encode()


def hub_config(org: SalesforceOrg) -> str:
    return config(org).replace("    operations:", "    collections: {linger: 200ms}\n    operations:")


async def test_three_bad_records_of_200_leave_197_done_and_3_dead_letters_naming_their_fields(org, broker,
                                                                                           tmp_path):
    """200 ERP keys go back to Salesforce in Collections requests; three records Salesforce refuses (an
    account it does not know and cannot create without a Name, a key another account holds, no external
    id) become three dead letters naming the field, and the other 197 are written."""
    nc = await nats.connect(broker.url)
    js = nc.jetstream()
    project = project_from(tmp_path, hub_config(org), FLOW)
    hub = await started_hub(project, broker.url)
    try:
        for i in range(200):
            if i == 17:
                body = linked(i, account="A-UNKNOWN")         # not in Salesforce: a create without Name
            elif i == 99:
                body = linked(i, key="K-DUP")                 # another account's ERP key
            elif i == 150:
                body = linked(i, account="")                  # no external id value
            else:
                body = linked(i)
            await js.publish("erp.account.linked", body)
        dlq = await StreamReader.open(js, "dlq.sf-account-keys")
        records = await dlq.wait_for(3)
        await wait_until(lambda: settled(js, "ERP", "sf-account-keys"))
        errors = {m.headers["Hub-Dlq-Error"].split(": ")[1]: m.headers["Hub-Dlq-Error"] for m in records}
        assert [m.headers["Hub-Dlq-Error-Class"] for m in records] == ["BusinessError"] * 3
        assert "fields: ERP_Account_Key__c" in errors["DUPLICATE_VALUE"]
        assert "PLU_Account_Id__c not specified" in errors["MISSING_ARGUMENT"]
        assert "fields: Name" in errors["REQUIRED_FIELD_MISSING"]
        assert {json.loads(m.data)["account_id"] for m in records} == {"A-UNKNOWN", "A-099", ""}
        keyed = [r for r in org.store.records["Account"].values() if r.get("ERP_Account_Key__c", "").startswith("K-")
                 and r["PLU_Account_Id__c"] != "A-OTHER"]
        assert len(keyed) == 197
        assert sum(org.collections_sizes) == 200 and len(org.collections_sizes) <= 4
    finally:
        await hub.stop()
        await nc.close()


async def test_a_locked_row_is_retried_and_then_written(org, broker, tmp_path):
    """UNABLE_TO_LOCK_ROW (another transaction holds the record) is transient: the message is tried again
    and written once the lock is gone; nothing goes to the dead-letter queue."""
    nc = await nats.connect(broker.url)
    js = nc.jetstream()
    org.store.lock("Account", "A-005")
    project = project_from(tmp_path, hub_config(org), FLOW)
    hub = await started_hub(project, broker.url)
    try:
        for i in range(10):
            await js.publish("erp.account.linked", linked(i))
        await wait_until(lambda: _true(org.store.lock_refusals >= 1))
        org.store.lock("Account", "A-005", held=False)
        await wait_until(lambda: settled(js, "ERP", "sf-account-keys"))
        assert org.record("Account", "PLU_Account_Id__c", "A-005")["ERP_Account_Key__c"] == "K-005"
        with pytest.raises(nats.js.errors.NotFoundError):
            await js.get_last_msg("DLQ", "dlq.sf-account-keys")
    finally:
        await hub.stop()
        await nc.close()


async def _true(value: bool) -> bool:
    return value


async def test_an_expired_session_is_renewed_once_and_the_records_are_written(org, broker, tmp_path):
    """Salesforce ends the session (INVALID_SESSION_ID): the endpoint logs in again and sends the request
    once more; every record is written and none is dead-lettered."""
    nc = await nats.connect(broker.url)
    js = nc.jetstream()
    project = project_from(tmp_path, hub_config(org), FLOW)
    hub = await started_hub(project, broker.url)
    try:
        await js.publish("erp.account.linked", linked(1))
        await wait_until(lambda: settled(js, "ERP", "sf-account-keys"))
        org.sessions.expire_all()
        for i in range(2, 12):
            await js.publish("erp.account.linked", linked(i))
        await wait_until(lambda: settled(js, "ERP", "sf-account-keys"))
        adapter = hub.adapters["salesforce"]
        assert adapter.tokens.logins == 2
        assert all(org.record("Account", "PLU_Account_Id__c", f"A-{i:03d}")["ERP_Account_Key__c"] == f"K-{i:03d}"
                   for i in range(1, 12))
    finally:
        await hub.stop()
        await nc.close()


async def call(adapter, operation: str, payload, timeout: float = 5.0):
    return await adapter.call(operation, payload, CallContext({}, "m-1", "c-1", timeout))


async def started_adapter(org: SalesforceOrg, tmp_path, extra: str = ""):
    from adapters.salesforce import SalesforceAdapter
    from engine.adapter import Services

    project = project_from(tmp_path, config(org).replace("    operations:", f"{extra}    operations:"),
                           "name: noop\nsource: {subject: crm.noop}\nsteps: [{filter: 'false'}]\n")
    adapter = SalesforceAdapter("salesforce", project.endpoints["salesforce"], Services())
    await adapter.start()
    return adapter


async def test_the_org_s_spent_allowance_is_throttled(tmp_path):
    """REQUEST_LIMIT_EXCEEDED (403) is Throttled, so the endpoint's circuit opens and messages wait; and
    Sforce-Limit-Info is read from every answer."""
    async with SalesforceOrg(daily_api_limit=2) as org:
        connect(org)
        adapter = await started_adapter(org, tmp_path)
        try:
            result = await call(adapter, "upsert_account", {"PLU_Account_Id__c": "A-1", "Name": "One"})
            assert result["created"] is True and adapter.limits.used == 1 and adapter.limits.maximum == 2
            await call(adapter, "upsert_account", {"PLU_Account_Id__c": "A-2", "Name": "Two"})
            with pytest.raises(Throttled, match="REQUEST_LIMIT_EXCEEDED"):
                await call(adapter, "upsert_account", {"PLU_Account_Id__c": "A-3", "Name": "Three"})
        finally:
            await adapter.close()


async def test_the_allowance_keeps_a_reserve_and_paces_requests(tmp_path):
    """With `allowance`, the endpoint stops calling while fewer than `reserve` requests remain today
    (Throttled, no request sent), and paces requests to share x daily limit / 24 h."""
    async with SalesforceOrg(daily_api_limit=8640) as org:  # share 1: 0.1 request/s
        connect(org)
        adapter = await started_adapter(org, tmp_path, "    allowance: {share: 1.0, reserve: 100, burst: 1}\n")
        try:
            await call(adapter, "upsert_account", {"PLU_Account_Id__c": "A-1", "Name": "One"})
            assert adapter.limits.rate() == pytest.approx(0.1)
            with pytest.raises(SlotsBusy, match="paced to 0.10 requests/s"):
                await call(adapter, "upsert_account", {"PLU_Account_Id__c": "A-2", "Name": "Two"}, timeout=1.0)
            sent = org.rest.requests
            org.usage.calls.extend([org.clock.time()] * 8600)       # the org's other users spend the day
            adapter.limits.observe(f"api-usage={org.usage.used()}/8640")
            with pytest.raises(Throttled, match="kept for the org's other users"):
                await call(adapter, "upsert_account", {"PLU_Account_Id__c": "A-3", "Name": "Three"})
            assert org.rest.requests == sent
        finally:
            await adapter.close()


async def test_record_errors_map_onto_the_taxonomy(tmp_path):
    """A record's UNABLE_TO_LOCK_ROW is transient, its REQUIRED_FIELD_MISSING a BusinessError naming the field."""
    async with SalesforceOrg() as org:
        connect(org)
        adapter = await started_adapter(org, tmp_path)
        try:
            org.change("Account", "PLU_Account_Id__c", "A-1", {"Name": "One"})
            org.store.lock("Account", "A-1")
            results = await asyncio.gather(
                call(adapter, "upsert_account", {"PLU_Account_Id__c": "A-1", "ERP_Account_Key__c": "K1"}),
                call(adapter, "upsert_account", {"PLU_Account_Id__c": "A-2"}), return_exceptions=True)
            assert isinstance(results[0], TargetServerError) and "UNABLE_TO_LOCK_ROW" in str(results[0])
            assert isinstance(results[1], BusinessError) and "fields: Name" in str(results[1])
            assert org.collections_sizes == [2]
        finally:
            await adapter.close()
