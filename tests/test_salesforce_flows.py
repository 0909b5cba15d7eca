"""PLU's Salesforce flows as shipped (flows/salesforce-*.yaml, config/sandbox.yaml) against the emulator:
what Salesforce publishes reaches the crm.* subjects, what the ERPs and the meter rules produce goes
back by Collections, Bulk API 2.0 and platform events, and the interval detail is served on request."""

from __future__ import annotations

import asyncio
import io
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import fastavro
import nats
import pytest

from engine.runtime import Hub
from engine.validation import load_project
from sandbox.salesforce import SalesforceOrg
from schemas.crm import AccountChanged, ContractSigned
from tests.helpers import StreamReader, settled, wait_until
from tests.salesforce_org import connect

ROOT = Path(__file__).resolve().parents[1]
FAST = {"within: 20s": "within: 1s", "every: [5s, 15s, 30s, 1m, 2m, 5m]": "every: [200ms, 500ms, 1s]"}


def shipped(tmp_path: Path, names: list[str]) -> list[Path]:
    """The shipped flow files, with the batch and job waits shortened for a test."""
    paths = []
    for name in names:
        text = (ROOT / "flows" / f"{name}.yaml").read_text()
        for slow, fast in FAST.items():
            text = text.replace(slow, fast)
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        paths.append(path)
    return paths


@pytest.fixture
async def org(monkeypatch):
    org = await SalesforceOrg(keepalive=1.0).start()
    connect(org, "sandbox-secret")
    org.add_client("plu-hub", "sandbox-secret")
    monkeypatch.setenv("SALESFORCE_LOGIN_URL", org.url)
    monkeypatch.setenv("SALESFORCE_PUBSUB", org.pubsub_target)
    monkeypatch.setenv("SALESFORCE_CLIENT_SECRET", "sandbox-secret")
    yield org
    await org.stop()


async def hub_with(tmp_path: Path, broker, names: list[str]) -> Hub:
    project = load_project(ROOT / "config" / "sandbox.yaml", shipped(tmp_path, names))
    hub = Hub(project, servers=[broker.url])
    await hub.start()
    return hub


def signed_event(org: SalesforceOrg, contract: str, account: str) -> None:
    org.publish_event("Contract_Signed__e", {
        "Contract_Id__c": contract, "Version__c": 1, "Account_Id__c": account, "Country__c": "DE",
        "Tariff_Code__c": "GREEN-12", "Signed_On__c": 20819, "Key_Customer__c": False,
        "Sites__c": json.dumps([{"site_id": "S-DE-1", "postcode": "10115", "city": "Berlin", "meter_ids": ["M1"]}])})


async def test_salesforce_events_reach_the_crm_subjects_and_erp_results_go_back(org, broker, tmp_path):
    """A signed contract (platform event) becomes crm.contract.signed; an account's new address (CDC)
    becomes crm.account.changed with the whole record; the ERP's key and the switch outcome are written
    back on the Account and the Contract, and that write-back is not sent to the ERP again; invoices
    land as Invoice__c; a key-customer candidate is published as a platform event."""
    org.change("Account", "PLU_Account_Id__c", "A-DE-1", {
        "Name": "Bäckerei Nord", "Country__c": "DE", "Customer_Kind__c": "Business", "BillingStreet": "Hauptstr. 1",
        "BillingPostalCode": "10115", "BillingCity": "Berlin"})
    account_id = org.record("Account", "PLU_Account_Id__c", "A-DE-1")["Id"]
    org.change("Contract", "PLU_Contract_Id__c", "C-DE-1", {"AccountId": account_id, "Status": "Activated"})
    nc = await nats.connect(broker.url)
    js = nc.jetstream()
    hub = await hub_with(tmp_path, broker, [
        "salesforce-contracts-signed", "salesforce-account-changes", "salesforce-account-sync",
        "salesforce-cdc-gaps", "salesforce-contract-outcomes", "salesforce-account-keys", "salesforce-invoices",
        "salesforce-keycustomer-events"])
    try:
        contracts = await StreamReader.open(js, "crm.contract.signed")
        accounts = await StreamReader.open(js, "crm.account.changed")
        signed_event(org, "C-DE-1", "A-DE-1")
        ContractSigned.model_validate((await contracts.wait_for(1))[0].data and contracts.payloads()[0])
        first = AccountChanged.model_validate((await accounts.wait_for(1))[0].data and accounts.payloads()[0])
        assert first.city == "Berlin" and first.kind == "business"   # the account's creation, read back whole
        org.change("Account", "PLU_Account_Id__c", "A-DE-1", {"BillingCity": "Potsdam", "BillingPostalCode": "14467"})
        await accounts.wait_for(2)
        assert accounts.payloads()[1]["city"] == "Potsdam" and accounts.payloads()[1]["name"] == "Bäckerei Nord"

        await js.publish("erp.account.linked", json.dumps({"account_id": "A-DE-1", "country": "DE",
                                                           "erp_account_key": "BP-0001", "created": True}).encode())
        await js.publish("erp.contract.switched", json.dumps({
            "contract_id": "C-DE-1", "version": 1, "account_id": "A-DE-1", "country": "DE", "tariff_code": "GREEN-12",
            "effective_from": "2027-02-01", "erp_ref": "SW-1", "status": "COMPLETED", "reason": None, "sites": [],
            "key_customer": False, "outcome": "switched"}).encode())
        await js.publish("erp.invoice.updated", json.dumps({
            "invoice_id": "INV-DE-1", "country": "DE", "erp_account_key": "BP-0001", "amount": "123.45",
            "currency": "EUR", "changed_at": "2027-01-31T10:00:00Z"}).encode())
        await js.publish("crm.keycustomer.candidate", json.dumps({
            "site_id": "S-DE-1", "months": {"2026-11": 6100.0}, "threshold_kwh": 5000.0, "meters": ["M1"],
            "detected_by": "M1|2026-11", "account_id": "A-DE-1", "site_kind": "business"}).encode())
        await wait_until(lambda: settled(js, "ERP", "salesforce-account-keys", "salesforce-contract-outcomes",
                                         "salesforce-invoices"))
        await wait_until(lambda: settled(js, "CRM", "salesforce-keycustomer-events"))
        assert org.record("Account", "PLU_Account_Id__c", "A-DE-1")["ERP_Account_Key__c"] == "BP-0001"
        contract = org.record("Contract", "PLU_Contract_Id__c", "C-DE-1")
        assert contract["Switch_Status__c"] == "Switched" and contract["ERP_Ref__c"] == "SW-1"
        assert org.record("Invoice__c", "Invoice_Id__c", "INV-DE-1")["Amount__c"] == 123.45
        topic = org.bus.topics["/event/Key_Customer_Candidate__e"]
        schema = fastavro.parse_schema(topic.schema)
        published = fastavro.schemaless_reader(io.BytesIO(topic.events[-1].payload), schema)
        assert published["Site_Id__c"] == "S-DE-1" and json.loads(published["Meters__c"]) == ["M1"]
        # the key write-back made a change event too; it changed no master field, so it went nowhere
        cdc = org.bus.topics["/data/AccountChangeEvent"]
        await wait_until(lambda: _true(hub.ingresses["salesforce-account-changes"].stored == len(cdc.events)))
        await wait_until(lambda: settled(js, "SALESFORCE", "salesforce-account-sync"))
        assert len(accounts.messages) == 2
    finally:
        await hub.stop()
        await nc.close()


async def _true(value: bool) -> bool:
    return value


def daily(meter: str, site: str, year: int, month: int, kwh: float) -> list[dict]:
    first = datetime(year, month, 1, tzinfo=timezone.utc)
    days = ((first + timedelta(days=32)).replace(day=1) - first).days
    return [{"meter_id": meter, "site_id": site, "register": "1-0:1.8.0",
             "interval_start": (first + timedelta(days=d)).isoformat().replace("+00:00", "Z"),
             "read_at": (first + timedelta(days=d + 1)).isoformat().replace("+00:00", "Z"),
             "value": kwh, "unit": "kWh", "quality": "actual", "source": "vendor1/pull",
             "zone": "UTC"} for d in range(days)]  # UTC days: the months the rules count them in


async def test_month_totals_and_forecasts_go_by_bulk_and_the_interval_detail_stays_in_the_hub(org, broker, tmp_path):
    """Readings of January for 40 meters: the hub completes each month, Salesforce gets each register's
    month total and February's forecast by Bulk API 2.0 (jobs, never a record per reading), and a request
    for one meter's January, with the 5 s deadline the portal gives it, is answered from the hub with its
    31 days."""
    nc = await nats.connect(broker.url)
    js = nc.jetstream()
    hub = await hub_with(tmp_path, broker, ["meter-month-totals", "meter-reading-forecast", "salesforce-meter-months",
                                            "salesforce-meter-forecasts", "salesforce-bulk-jobs",
                                            "salesforce-meter-detail"])
    try:
        reconciliation = await StreamReader.open(js, "ops.reconciliation")
        readings = [r for m in range(40) for r in daily(f"M-{m:02d}", f"S-{m // 2:02d}", 2027, 1, 10.0 + m)]
        acks = [await js.publish_async("meter.reading.received", json.dumps(r).encode()) for r in readings]
        await asyncio.gather(*acks)
        await wait_until(lambda: _true(org.count("Meter_Month__c") == 80), timeout=60)
        jobs = [j for j in org.jobs.jobs.values()]
        assert sum(len(j.rows) for j in jobs) == 80 and org.collections_sizes == []
        records = org.store.records["Meter_Month__c"].values()
        january = {r["Meter_Id__c"]: r["Total__c"] for r in records if r["Kind__c"] == "Actual"}
        february = {r["Meter_Id__c"]: r["Total__c"] for r in records if r["Kind__c"] == "Forecast"}
        assert january["M-03"] == 31 * 13.0 and february["M-03"] == 28 * 13.0
        assert {r["Month__c"] for r in records} == {"2027-01", "2027-02"}
        await reconciliation.wait_for(len(jobs))
        answer = await nc.request("interval.detail", json.dumps({"meter_id": "M-03", "register": "1-0:1.8.0",
                                                                 "month": "2027-01"}).encode(), timeout=5)
        detail = json.loads(answer.data)
        assert detail["found"] and detail["complete"] and len(detail["intervals"]) == 31
        assert detail["total"] == 31 * 13.0
    finally:
        await hub.stop()
        await nc.close()
