"""The nightly invoice and payment batches of flows/ against the five ERP simulators: every row of
every country once, watermarks between runs, and a runner SIGKILLed mid-batch that resumes with
exact reconciliation counts."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from decimal import Decimal
from pathlib import Path

import pytest
import pytest_asyncio

from engine.paged_pull import BUCKET, checkpoint_key
from engine.schedule import publish_ticks
from sandbox.erp import COUNTRIES, ErpSimulator
from tests.helpers import StreamReader, wait_until
from tests.test_erp_flows import hub_for, shipped

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "erp-batch-de-pw"
INVOICES = "erp-invoices-nightly"
PAYMENTS = "erp-payments-nightly"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def sims():
    started = {c.upper(): await ErpSimulator(c, password=PASSWORD).start() for c in COUNTRIES}
    yield started
    for sim in started.values():
        await sim.stop()


@pytest.fixture(autouse=True)
def erp_env(sims, monkeypatch):
    for country, sim in sims.items():
        monkeypatch.setenv(f"ERP_{country}_URL", sim.address)
        sim.reset_faults()
    monkeypatch.setenv("ERP_DE_PASSWORD", PASSWORD)
    monkeypatch.setenv("CRM_BRIDGE_TOKEN", "test-token")


@pytest.fixture
def js(broker_js):
    return broker_js


def flow_of(project, name):
    return next(lf.flow for lf in project.flows if lf.flow.name == name)


async def test_a_batch_run_publishes_every_changed_row_of_every_country_once_with_a_record_per_country(
        tmp_path: Path, broker, js, sims):
    """One trigger pulls invoices and payments from all five ERPs, whatever their paging style; each
    row is published once in canonical form (UK pence as pounds) and each country gets a
    reconciliation record whose counts match what the ERP holds."""
    for n in range(7):
        sims["UK"].add_invoice("CRM-UK-1", Decimal("12.34") + n, currency="GBP")
        sims["PT"].add_payment("CRM-PT-1", Decimal("50.00") + n)
    project = shipped(tmp_path, [INVOICES, PAYMENTS], {"page_size: 100": "page_size: 3"})
    hub = await hub_for(project, broker)
    invoices = await StreamReader.open(js, "erp.invoice.updated")
    payments = await StreamReader.open(js, "erp.payment.updated")
    records = await StreamReader.open(js, "ops.reconciliation")
    try:
        for name in (INVOICES, PAYMENTS):
            await publish_ticks(js, flow_of(project, name), "test", manual=True)
        await records.wait_for(10, timeout=60)
    finally:
        await hub.stop()
    expected_invoices = {(c, i.number) for c, sim in sims.items() for i in sim.invoices}
    expected_payments = {(c, p.number) for c, sim in sims.items() for p in sim.payments}
    assert sorted((b["country"], b["invoice_id"]) for b in invoices.payloads()) == sorted(expected_invoices)
    assert sorted((b["country"], b["payment_id"]) for b in payments.payloads()) == sorted(expected_payments)
    uk = {b["invoice_id"]: b for b in invoices.payloads() if b["country"] == "UK"}
    last = sims["UK"].invoices[-1]
    assert Decimal(uk[last.number]["amount"]) == last.amount and uk[last.number]["currency"] == "GBP"
    for rec in records.payloads():
        sim = sims[rec["country"]]
        rows = sim.invoices if rec["flow"] == INVOICES else sim.payments
        assert rec["items"] == rec["published"] == len(rows), rec
        assert rec["matched"] in (True, None) and rec["duplicates"] == 0 and not rec["resumed"]
        assert rec["pages"] >= 2 or len(rows) <= 3


async def test_the_next_run_starts_at_the_watermark_and_takes_only_what_changed(tmp_path: Path, broker, js, sims):
    """A second run finds nothing new; after the ERP changes two invoices, the third run takes just those."""
    project = shipped(tmp_path, [INVOICES])
    flow = flow_of(project, INVOICES)
    hub = await hub_for(project, broker)
    records = await StreamReader.open(js, "ops.reconciliation")
    try:
        await publish_ticks(js, flow, "t", manual=True, payloads=[{"country": "FR"}])
        [first] = await records.wait_for(1)
        await publish_ticks(js, flow, "t", manual=True, payloads=[{"country": "FR"}])
        second = (await records.wait_for(2))[1]
        sims["FR"].add_invoice("CRM-FR-9", "10.00")
        sims["FR"].add_invoice("CRM-FR-9", "20.00")
        await publish_ticks(js, flow, "t", manual=True, payloads=[{"country": "FR"}])
        third = (await records.wait_for(3))[2]
    finally:
        await hub.stop()
    first, second, third = (json.loads(m.data) for m in (first, second, third))
    assert first["items"] == len(sims["FR"].invoices) - 2
    assert second["items"] == 0 and second["since"] == first["until"]
    assert third["items"] == 2 and third["since"] == first["until"]


async def test_a_runner_killed_mid_batch_resumes_at_the_next_page_with_exact_counts(tmp_path: Path, broker, js, sims):
    """SIGKILL while the IT batch is half through: a new runner resumes from the checkpoint; every
    invoice is stored once, and the reconciliation record counts each exactly once and matches the
    ERP's own total."""
    sim = sims["IT"]
    for n in range(95):
        sim.add_invoice(f"CRM-IT-{n % 7}", Decimal("100.00") + n)
    total = len(sim.invoices)
    project = shipped(tmp_path, [INVOICES], {"page_size: 100": "page_size: 10", "ack_wait: 60s": "ack_wait: 2s"})
    flow = flow_of(project, INVOICES)
    sim.set_latency(0.15)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "runner.py"), "run", "--nats", broker.url, "--log-level", "warning",
        "--config", str(ROOT / "config" / "sandbox.yaml"), "--flows", str(tmp_path / "flows"),
        stderr=open(tmp_path / "runner.log", "w"), env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        kv = None

        async def pages_done() -> int:
            nonlocal kv
            try:
                kv = kv or await js.key_value(BUCKET)
                entry = await kv.get(checkpoint_key(INVOICES, "invoices:IT"))
            except Exception:
                return 0
            return (json.loads(entry.value).get("run") or {}).get("pages", 0)

        async def started() -> bool:
            try:
                await js.consumer_info("HUB_SCHEDULE", INVOICES)
                return True
            except Exception:
                return False

        await wait_until(started, timeout=30)
        await publish_ticks(js, flow, "t", manual=True, payloads=[{"country": "IT"}])

        async def midway() -> bool:
            return await pages_done() >= 4

        await wait_until(midway, timeout=30)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    killed_after = await pages_done()
    assert 4 <= killed_after < 10
    hub = await hub_for(project, broker)
    records = await StreamReader.open(js, "ops.reconciliation")
    invoices = await StreamReader.open(js, "erp.invoice.updated")
    try:
        [record] = await records.wait_for(1, timeout=30)
        await invoices.wait_for(total)
    finally:
        sim.set_latency(0)
        await hub.stop()
    rec = json.loads(record.data)
    print(f"\n[batch crash] {total} invoices in 10-row pages, killed after page {killed_after}, resumed: "
          f"{rec['items']} items, {rec['published']} stored, {rec['duplicates']} repeats dropped, "
          f"ERP total {rec['erp_total']}")
    assert rec["resumed"] and rec["matched"] is True
    assert rec["items"] == rec["erp_total"] == total and rec["pages"] == 10
    assert rec["published"] + rec["duplicates"] == total
    ids = [b["invoice_id"] for b in invoices.payloads()]
    assert len(ids) == len(set(ids)) == total


async def test_a_count_that_differs_from_the_erps_total_raises_a_reconciliation_alert(
        tmp_path: Path, broker, js, sims):
    """When rows vanish from the ERP while a batch pages through it, the record says the counts do not
    match and ops.alert.<flow> fires `reconciliation` with both numbers."""
    sim = sims["IT"]
    for n in range(30):
        sim.add_invoice("CRM-IT-R", Decimal("5.00") + n)
    size = len(sim.invoices) // 4 + 1  # four pages, whatever the earlier tests added
    project = shipped(tmp_path, [INVOICES], {"page_size: 100": f"page_size: {size}"})
    hub = await hub_for(project, broker)
    records = await StreamReader.open(js, "ops.reconciliation")
    alerts = await StreamReader.open(js, f"ops.alert.{INVOICES}")
    sim.set_latency(0.3)
    try:
        await publish_ticks(js, flow_of(project, INVOICES), "t", manual=True, payloads=[{"country": "IT"}])

        async def first_page_done() -> bool:
            try:
                entry = await (await js.key_value(BUCKET)).get(checkpoint_key(INVOICES, "invoices:IT"))
            except Exception:
                return False
            return (json.loads(entry.value).get("run") or {}).get("pages", 0) >= 1

        await wait_until(first_page_done, timeout=30)
        total = len(sim.invoices)
        sim.invoices.pop()  # the newest row is gone before the batch reaches it
        [record] = await records.wait_for(1, timeout=30)
        [alert] = await alerts.wait_for(1)
    finally:
        sim.set_latency(0)
        await hub.stop()
    rec, event = json.loads(record.data), json.loads(alert.data)
    assert rec["erp_total"] == total and rec["items"] == total - 1 and rec["matched"] is False
    assert (event["alert"], event["state"], event["erp_total"], event["items"]) == ("reconciliation", "firing",
                                                                                    total, total - 1)
