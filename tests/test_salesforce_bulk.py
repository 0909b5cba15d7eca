"""Bulk API 2.0 through the hub: month totals gathered by a `batch` source, loaded as one ingest job,
the job followed with `until`, its failed rows dead-lettered as the messages they came from."""

from __future__ import annotations

import json

import nats
import pytest

from sandbox.salesforce import SalesforceOrg
from tests.helpers import StreamReader, project_from, settled, started_hub, wait_until
from tests.salesforce_org import config, connect

LOAD = """
name: sf-months-bulk
source:
  batch: {subject: meter.month.completed, size: 1000, within: 1s, transform: salesforce_meter.month_record,
          key: "{Hub_Key__c}"}
steps:
  - call: {endpoint: salesforce, operation: load_meter_months}
  - publish: salesforce.bulk.job.submitted
"""
TRACK = """
name: sf-bulk-jobs
source: {subject: salesforce.bulk.job.submitted}
steps:
  - call: {endpoint: salesforce, operation: bulk_status, into: status}
  - until: {done: "contains(['JobComplete', 'Failed', 'Aborted'], status.state)", every: [100ms, 200ms, 500ms]}
  - call: {endpoint: salesforce, operation: bulk_results}
  - publish: ops.reconciliation
on_error: {retry: [200ms], redeliver: [1s]}
"""


def total(i: int, **change) -> bytes:
    body = {"meter_id": f"M-{i:04d}", "site_id": f"S-{i // 2:04d}", "register": "1-0:1.8.0", "unit": "kWh",
            "month": "2027-01", "total": 100.0 + i, "readings": 2976, "first_start": "2026-12-31T23:00:00Z",
            "last_end": "2027-01-31T23:00:00Z", "latest": True}
    return json.dumps({**body, **change}).encode()


@pytest.fixture
async def org():
    org = await SalesforceOrg().start()
    connect(org)
    yield org
    await org.stop()


async def test_a_bulk_job_with_failed_rows_leaves_the_rest_done_and_dead_letters_each_failed_row(org, broker,
                                                                                             tmp_path):
    """300 month totals in one job: three rows Salesforce refuses (no total, no site, a count that is no
    number) become three dead letters holding the original month total and the row's reason; a row
    locked by another transaction goes into a later job and is written; the other 296 are done."""
    nc = await nats.connect(broker.url)
    js = nc.jetstream()
    org.store.lock("Meter_Month__c", "M-0042:1-0:1.8.0:2027-01:actual")
    project = project_from(tmp_path, config(org), LOAD, TRACK)
    hub = await started_hub(project, broker.url)
    try:
        bad = {7: {"total": None}, 120: {"site_id": ""}, 250: {"readings": "many"}}
        for i in range(300):
            await js.publish("meter.month.completed", total(i, **bad.get(i, {})))
        reconciliation = await StreamReader.open(js, "ops.reconciliation")
        first = json.loads((await reconciliation.wait_for(1, timeout=30))[0].data)
        assert first["rows"] == 300 and first["dead_lettered"] == 3 and first["retried"] == 1
        org.store.lock("Meter_Month__c", "M-0042:1-0:1.8.0:2027-01:actual", held=False)
        second = json.loads((await reconciliation.wait_for(2, timeout=30))[1].data)
        assert second["rows"] == 1 and second["failed"] == 0
        dlq = await StreamReader.open(js, "dlq.sf-months-bulk")
        records = await dlq.wait_for(3)
        reasons = {json.loads(m.data)["meter_id"]: m.headers["Hub-Dlq-Error"] for m in records}
        assert "REQUIRED_FIELD_MISSING" in reasons["M-0007"] and "fields: Total__c" in reasons["M-0007"]
        assert "REQUIRED_FIELD_MISSING" in reasons["M-0120"] and "fields: Site_Id__c" in reasons["M-0120"]
        assert "INVALID_TYPE_ON_FIELD_IN_RECORD" in reasons["M-0250"] and "Readings__c" in reasons["M-0250"]
        assert all(m.headers["Hub-Dlq-Subject"] == "meter.month.completed" for m in records)
        assert all(m.headers["Hub-Dlq-Stream"] == "METER" for m in records)
        assert org.count("Meter_Month__c") == 297
        await wait_until(lambda: settled(js, "SALESFORCE", "sf-bulk-jobs"))
    finally:
        await hub.stop()
        await nc.close()


async def test_rows_a_job_never_processed_go_into_a_later_job(broker, tmp_path):
    """A job aborted in Salesforce half-way: its unprocessed rows go back and a later job writes them."""
    async with SalesforceOrg(bulk_pace=200, bulk_internal_batch=1000) as org:  # 1,000-row batches, 200 rows/s
        connect(org)
        nc = await nats.connect(broker.url)
        js = nc.jetstream()
        one_batch = LOAD.replace("size: 1000, within: 1s", "size: 1200, within: 2s")
        project = project_from(tmp_path, config(org), one_batch, TRACK)
        await js.add_stream(name="METER", subjects=["meter.>"])
        for i in range(1200):  # all there before the hub starts: one batch of 1200
            await js.publish("meter.month.completed", total(i))
        hub = await started_hub(project, broker.url)
        try:
            jobs = org.jobs.jobs.values()
            await wait_until(lambda: _true(any(j.state == "InProgress" and j.successful for j in jobs)),
                             timeout=60)
            job = next(j for j in org.jobs.jobs.values() if j.state == "InProgress")
            org.jobs.change_state(job.id, {"state": "Aborted"})   # an admin aborts it in Setup
            reconciliation = await StreamReader.open(js, "ops.reconciliation")
            first = json.loads((await reconciliation.wait_for(1, timeout=60))[0].data)
            assert first["state"] == "Aborted" and first["retried"] == 200 and first["dead_lettered"] == 0
            await reconciliation.wait_for(2, timeout=60)
            await wait_until(lambda: _true(org.count("Meter_Month__c") == 1200), timeout=60)
        finally:
            await hub.stop()
            await nc.close()


async def _true(value: bool) -> bool:
    return value
