"""The Salesforce part of `runner.py demo`: PLU's CRM at the centre, emulated (sandbox/salesforce/).

Wiring (sandbox/demo.py):
    org = await start_salesforce()          # before load_project(): the config reads SALESFORCE_* from the env
    ...                                     # the hub starts; the other sections run
    await section_salesforce(js, nc, hub, org, check, deadline)
    await org.stop()                        # with the other sandbox systems

`start_salesforce` starts the emulator, registers the hub's connected app and loads, as a data
migration (no change events), the accounts and contracts the other demo sections write back to.
The section shows: a signed contract (platform event) reaching crm.contract.signed and the ERP switch
flows; a user's account change (CDC) reaching crm.account.changed whole, the ERP's key written back
with no loop; 200 payments by sObject Collections with 3 refused (3 dead letters naming the field,
197 written); month totals by a Bulk API 2.0 job with failed rows dead-lettered; a key-customer
candidate published as a platform event; a month's interval detail served by the hub on request.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any, Callable

from sandbox.salesforce import SalesforceOrg

SECRET = "demo-salesforce-secret"
COUNTRIES = ["DE", "FR", "IT", "PT", "UK", "BE"]   # the contracts of sections 1-4 (sandbox/demo.py)
Check = Callable[[bool, str], None]


async def start_salesforce() -> SalesforceOrg:
    """The emulated org, with what the other sections expect Salesforce to hold already."""
    org = await SalesforceOrg(keepalive=5.0).start()
    org.add_client(os.environ.get("SALESFORCE_CLIENT_ID", "plu-hub"), SECRET)
    os.environ["SALESFORCE_LOGIN_URL"] = org.url
    os.environ["SALESFORCE_PUBSUB"] = org.pubsub_target
    os.environ["SALESFORCE_CLIENT_SECRET"] = SECRET
    for i, country in enumerate(COUNTRIES):
        account = org.seed("Account", "PLU_Account_Id__c", f"A-{country}-{500 + i}",
                           {"Name": f"Demo customer {country}", "Country__c": country})
        org.seed("Contract", "PLU_Contract_Id__c", f"C-{country}-{1000 + i}", {"AccountId": account})
    account = org.seed("Account", "PLU_Account_Id__c", "A-DE-599", {"Name": "Demo customer DE 99", "Country__c": "DE"})
    org.seed("Contract", "PLU_Contract_Id__c", "C-DE-1099", {"AccountId": account})
    for country in ("DE", "FR"):
        org.seed("Account", "PLU_Account_Id__c", f"ACC-{country}-1", {"Name": f"Demo account {country}"})
    return org


class _Seen:
    """What a subject carries, from an ordered consumer."""

    def __init__(self) -> None:
        self.bodies: list[Any] = []
        self.headers: list[dict[str, str]] = []

    async def open(self, js: Any, subject: str) -> "_Seen":
        async def cb(msg: Any) -> None:
            try:
                body = json.loads(msg.data)
            except ValueError:  # the earlier sections' broken messages are on these subjects too
                return
            if isinstance(body, dict):
                self.bodies.append(body)
                self.headers.append(dict(msg.headers or {}))

        self.sub = await js.subscribe(subject, cb=cb, ordered_consumer=True)
        return self


async def _until(predicate: Callable[[], bool], deadline: float) -> bool:
    """The emulator's records are not messages: look every 50 ms until the section's deadline."""
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def section_salesforce(js: Any, nc: Any, hub: Any, org: SalesforceOrg, check: Check, deadline: float,
                             number: int = 14) -> None:
    print(f"\n  {number}. Salesforce at the centre: Pub/Sub API in, sObject Collections and Bulk API 2.0 out")
    signed, switches, accounts, payments_dlq, months_dlq, jobs = [await _Seen().open(js, s) for s in (
        "crm.contract.signed", "erp.contract.switch-requested", "crm.account.changed", "dlq.salesforce-payments",
        "dlq.salesforce-meter-months", "ops.reconciliation")]

    print("       a contract's digital signature completes: Salesforce publishes Contract_Signed__e")
    account_id = org.change("Account", "PLU_Account_Id__c", "A-DE-7001", {
        "Name": "Kühlhaus Nord GmbH", "Country__c": "DE", "Customer_Kind__c": "Business",
        "BillingStreet": "Hafenstraße 4", "BillingPostalCode": "20457", "BillingCity": "Hamburg"})["id"]
    org.change("Contract", "PLU_Contract_Id__c", "C-DE-7001", {"AccountId": account_id, "Status": "Draft"})
    org.publish_event("Contract_Signed__e", {
        "Contract_Id__c": "C-DE-7001", "Version__c": 1, "Account_Id__c": "A-DE-7001", "Country__c": "DE",
        "Tariff_Code__c": "GREEN-12", "Signed_On__c": int(time.time() // 86400), "Key_Customer__c": True,
        "Sites__c": json.dumps([{"site_id": "S-DE-7001", "postcode": "20457", "city": "Hamburg",
                                 "meter_ids": ["M-DE-7001-1"]}])})
    ok = await _until(lambda: any(b["contract_id"] == "C-DE-7001" for b in switches.bodies), deadline)
    check(ok and any(b["contract_id"] == "C-DE-7001" for b in signed.bodies),
          "the signed contract reached crm.contract.signed (stored before its replay id was checkpointed) and the "
          "DE ERP was asked to switch it")

    print("       a user moves the account to Altona in Salesforce (Change Data Capture)")
    org.change("Account", "PLU_Account_Id__c", "A-DE-7001", {"BillingStreet": "Große Elbstraße 1",
                                                            "BillingPostalCode": "22767"})
    ok = await _until(lambda: any(b["account_id"] == "A-DE-7001" and b["postcode"] == "22767"
                                  for b in accounts.bodies), deadline)
    ok_key = await _until(lambda: bool((org.record("Account", "PLU_Account_Id__c", "A-DE-7001") or {})
                                       .get("ERP_Account_Key__c")), deadline)
    record = org.record("Account", "PLU_Account_Id__c", "A-DE-7001") or {}
    print(f"       crm.account.changed: {len(accounts.bodies)} (create and move); ERP key in Salesforce: "
          f"{record.get('ERP_Account_Key__c')}")
    check(ok and ok_key, "the account's change went to the ERP whole (read back from Salesforce), the ERP's key came "
          "back to Salesforce, and that write-back changed no master field: it went nowhere")

    print("       the nightly ERP pull delivers 200 payments; Salesforce refuses 3 of them")
    acks = []
    for i in range(200):
        payment = {"payment_id": f"PAY-DE-7{i:03d}", "country": "DE", "erp_account_key": "BP-7001",
                   "amount": f"{100 + i}.50", "currency": "EUR", "invoice_id": f"DE-INV-7{i:03d}",
                   "changed_at": "2027-01-31T01:45:00Z"}
        if i == 13:
            payment["erp_account_key"] = ""          # REQUIRED_FIELD_MISSING
        elif i == 77:
            payment["payment_id"] = ""               # no external id: MISSING_ARGUMENT
        elif i == 150:
            payment["currency"] = "EUR" * 100        # STRING_TOO_LONG
        acks.append(await js.publish_async("erp.payment.updated", json.dumps(payment).encode()))
    await asyncio.gather(*acks)

    def ours() -> int:  # the nightly batch of section 6 may have written payments of its own
        return sum(1 for r in org.store.records["Payment__c"].values() if r["Payment_Id__c"].startswith("PAY-DE-7"))

    before_requests = len(org.collections_sizes)
    ok = await _until(lambda: len(payments_dlq.bodies) >= 3 and ours() >= 197, deadline)
    for headers in payments_dlq.headers:
        print(f"         dead letter: {headers.get('Hub-Dlq-Error', '')[:110]}")
    sizes = org.collections_sizes[before_requests:]
    print(f"       {ours()} of them in Salesforce, in {len(sizes)} Collections requests "
          f"(largest {max(sizes, default=0)} records)")
    check(ok and ours() == 197 and len(payments_dlq.bodies) == 3,
          "197 payments written and 3 dead letters naming their field errors, from shared 200-record requests")

    print("       1,000 solar feed-in month totals go by Bulk API 2.0 (2 incomplete); the job is followed until done")
    acks = []
    for i in range(1000):  # register 2.8.0 (fed into the grid): no forecast, no key-customer rule takes them
        total = {"meter_id": f"M-SF-{i:04d}", "site_id": f"S-SF-{i // 2:04d}", "register": "1-0:2.8.0",
                 "unit": "kWh", "month": "2027-01", "total": None if i in (111, 666) else 250.0 + i,
                 "readings": 2976, "first_start": "2026-12-31T23:00:00Z", "last_end": "2027-01-31T23:00:00Z",
                 "latest": False}
        acks.append(await js.publish_async("meter.month.completed", json.dumps(total).encode()))
    await asyncio.gather(*acks)
    ok = await _until(lambda: len(months_dlq.bodies) >= 2 and any(j.get("kind") == "salesforce_bulk_job"
                                                                  for j in jobs.bodies), deadline)
    for job in (j for j in jobs.bodies if j.get("kind") == "salesforce_bulk_job"):
        print(f"         job {job['job_id']}: {job['state']}, {job['rows']} rows, {job['processed']} processed, "
              f"{job['failed']} failed -> {job['dead_lettered']} dead letters")
    check(ok and {b["meter_id"] for b in months_dlq.bodies} >= {"M-SF-0111", "M-SF-0666"},
          "month totals loaded as one ingest job; its 2 failed rows are dead letters of the month totals, with the "
          "row's error")

    print("       a key-customer candidate is published to Salesforce as a platform event")
    before = len(org.bus.topics["/event/Key_Customer_Candidate__e"].events)
    await js.publish("crm.keycustomer.candidate", json.dumps({
        "site_id": "S-DE-7001", "months": {"2026-10": 6100.0, "2026-11": 6400.0, "2026-12": 7000.0},
        "threshold_kwh": 5000.0, "meters": ["M-DE-7001-1"], "detected_by": "M-DE-7001-1|2026-12",
        "account_id": "A-DE-7001", "site_kind": "business"}).encode())
    ok = await _until(lambda: len(org.bus.topics["/event/Key_Customer_Candidate__e"].events) > before, deadline)
    check(ok, "Key_Customer_Candidate__e published over the Pub/Sub API, encoded with the topic's Avro schema")

    print("       the portal asks the hub for a month's interval readings (Salesforce holds the total only)")
    first = 1798761600  # 2027-01-01T00:00:00Z
    from datetime import datetime, timezone

    def at(seconds: int) -> str:
        return datetime.fromtimestamp(seconds, timezone.utc).isoformat().replace("+00:00", "Z")

    for day in range(31):
        reading = {"meter_id": "M-SF-DETAIL", "site_id": "S-SF-DETAIL", "register": "1-0:1.8.0",
                   "interval_start": at(first + day * 86400), "read_at": at(first + (day + 1) * 86400),
                   "value": 40.0 + day, "unit": "kWh", "quality": "actual", "source": "vendor1/pull",
                   "zone": "UTC"}  # UTC days: the month the rules close is January in UTC
        await js.publish("meter.reading.received", json.dumps(reading).encode())
    ask = json.dumps({"meter_id": "M-SF-DETAIL", "register": "1-0:1.8.0", "month": "2027-01"}).encode()
    detail: dict[str, Any] = {}

    async def asked() -> bool:
        nonlocal detail
        try:
            detail = json.loads((await nc.request("interval.detail", ask, timeout=5)).data)
        except Exception:
            return False
        return bool(detail.get("complete"))

    while not await asked() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    started = time.monotonic()
    await asked()
    took_ms = (time.monotonic() - started) * 1000
    print(f"       interval.detail M-SF-DETAIL 2027-01: {len(detail.get('intervals', []))} intervals, "
          f"{detail.get('total')} kWh, answered in {took_ms:.0f} ms")
    check(len(detail.get("intervals", [])) == 31 and bool(detail.get("complete")), "the interval detail stays in the hub and is served on request "
          "within the portal's 5 s")
    checkpoint = hub.ingresses["salesforce-account-changes"].checkpoint or {}
    limits = hub.adapters["salesforce"].limits
    print(f"       replay checkpoint of salesforce-account-changes: {checkpoint.get('replay_id')} at "
          f"{checkpoint.get('at')}; org API usage (Sforce-Limit-Info): {limits.used}/{limits.maximum}")
    for seen in (signed, switches, accounts, payments_dlq, months_dlq, jobs):
        await seen.sub.unsubscribe()
