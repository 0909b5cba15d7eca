"""`runner.py demo`: the hub end to end on this machine, in about ten seconds.

Starts the sandbox systems and the hub (embedded nats-server, the flows of flows/), plays the part of
the CRM bridge and a meter platform, then checks what a user would: every valid contract reached the
ERP side once, Belgium's went nowhere, broken messages sit in the DLQ with their reason, every
reading reached the CRM exactly once despite the CRM answering 503 at first. Exit 0 only if all hold.
Later issues add their systems here.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import nats

from engine import logs
from engine.messages import CE_CORRELATION, event_headers
from engine.runtime import Hub
from engine.validation import flow_files, load_project
from sandbox.http_sink import HttpSink

COUNTRIES = ["DE", "FR", "IT", "PT", "UK", "BE"]
READINGS = 20
DEADLINE = 30.0


def contract(i: int, country: str) -> dict[str, Any]:
    return {
        "contract_id": f"C-{country}-{1000 + i}", "version": 1, "account_id": f"A-{country}-{500 + i}",
        "country": country, "tariff_code": "GREEN-FIX-24", "signed_on": "2026-11-20", "key_customer": True,
        "sites": [{"site_id": f"S-{country}-{i}", "postcode": "10115", "city": "Liège" if country == "BE" else "Berlin",
                   "meter_ids": [f"M-{country}-{i}-1"]}],
    }


def reading(i: int) -> dict[str, Any]:
    at = datetime(2026, 11, 1, tzinfo=timezone.utc) + timedelta(hours=i)
    return {"meter_id": f"M-DE-{i % 5}-1", "site_id": f"S-DE-{i % 5}", "register": "1.8.0",
            "read_at": at.isoformat(), "value": 1200.5 + i, "unit": "kWh", "quality": "actual",
            "source": "vendor1/pull"}


class Collector:
    """Reads a subject from its stream (not core NATS: a stream holds each message once)."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.changed = asyncio.Event()

    async def cb(self, msg: Any) -> None:
        self.messages.append(msg)
        self.changed.set()


async def wait_until(predicate: Callable[[], bool], events: list[asyncio.Event], deadline: float) -> bool:
    while not predicate():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        waiters = [asyncio.create_task(e.wait()) for e in events]
        done, pending = await asyncio.wait(waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
        for e in events:
            e.clear()
    return True


async def run_demo(root: Path, keep_data: bool = False) -> int:
    data_dir = root / ".hub" / "demo-nats" if keep_data else Path(tempfile.mkdtemp(prefix="hub-demo-"))
    log_path = root / ".hub" / "demo.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = log_path.open("w")
    logs.configure("info", "json", stream=log_file)
    started = time.monotonic()
    crm = await HttpSink().start()
    crm.fail_next(2, status=503, retry_after="0")  # the CRM bridge is busy at first
    os.environ["CRM_BRIDGE_URL"] = crm.url
    os.environ.setdefault("CRM_BRIDGE_TOKEN", "demo-token")
    project = load_project(root / "config" / "sandbox.yaml", flow_files(root / "flows"))
    hub = Hub(project, data_dir=data_dir)
    print(f"PLU hub demo: {len(project.flows)} flows, logs in {log_path}")
    checks: list[tuple[bool, str]] = []
    try:
        await hub.start()
        print(f"  embedded nats-server at {hub.servers[0]} (JetStream store {data_dir})")
        print(f"  sandbox CRM bridge (HTTP) at {crm.url}")
        nc = await nats.connect(hub.servers[0], name="demo-crm-bridge")
        js = nc.jetstream()
        switch, dlq = Collector(), Collector()
        await js.subscribe("erp.contract.switch-requested", cb=switch.cb, ordered_consumer=True)
        await js.subscribe("dlq.>", cb=dlq.cb, ordered_consumer=True)

        sent_ids: dict[str, str] = {}
        for i, country in enumerate(COUNTRIES):
            body = contract(i, country)
            h = event_headers("/crm/salesforce", "crm.contract.signed", correlation_id=f"corr-{body['contract_id']}")
            sent_ids[body["contract_id"]] = h[CE_CORRELATION]
            await js.publish("crm.contract.signed", json.dumps(body).encode(), headers=h)
        bad = contract(99, "DE") | {"country": "XX"}
        await js.publish("crm.contract.signed", json.dumps(bad).encode(),
                         headers=event_headers("/crm/salesforce", "crm.contract.signed"))
        await js.publish("crm.contract.signed", b"<contract>not json</contract>",
                         headers=event_headers("/crm/salesforce", "crm.contract.signed"))
        for i in range(READINGS):
            await js.publish("meter.reading.received", json.dumps(reading(i)).encode(),
                             headers=event_headers("/meter/vendor1", "meter.reading.received"))
        print(f"  sent: {len(COUNTRIES)} contracts (1 for Belgium), 2 broken contracts, {READINGS} readings")

        def readings_done() -> bool:
            return len({r.body.get("external_id") for r in crm.received if isinstance(r.body, dict)}) >= READINGS \
                and crm.count >= READINGS + 2

        deadline = time.monotonic() + DEADLINE
        ok_switch = await wait_until(lambda: len(switch.messages) >= 5, [switch.changed], deadline)
        ok_dlq = await wait_until(lambda: len(dlq.messages) >= 2, [dlq.changed], deadline)
        try:
            await crm.wait_for(READINGS + 2, timeout=max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            pass
        # a duplicate would arrive after the first copies: give the flows a moment of quiet to show it
        await asyncio.sleep(0.5)

        # --- contract flow ---
        got = [json.loads(m.data) for m in switch.messages]
        countries = sorted(g["country"] for g in got)
        checks.append((ok_switch and countries == sorted(COUNTRIES[:-1]),
                       f"5 switch requests on erp.contract.switch-requested, one per non-Belgian country ({', '.join(countries)})"))
        corr_ok = all(m.headers.get(CE_CORRELATION) == sent_ids[json.loads(m.data)["contract_id"]] for m in switch.messages)
        checks.append((corr_ok and all(m.headers.get("ce-specversion") == "1.0" for m in switch.messages),
                       "each carries CloudEvents headers and the CRM's correlation id"))
        checks.append((not any(g["country"] == "BE" for g in got), "Belgium's contract was filtered out (its ERP is email-only)"))
        reasons = sorted((m.headers.get("Hub-Dlq-Error-Class"), m.headers.get("Hub-Dlq-Error", "")[:70]) for m in dlq.messages)
        checks.append((ok_dlq and [r[0] for r in reasons] == ["UnparseablePayload", "ValidationFailed"],
                       "the 2 broken contracts are in the DLQ with their reason"))
        # --- readings flow ---
        ids = [r.body.get("external_id") for r in crm.received if isinstance(r.body, dict)]
        accepted = ids[2:]  # the first two answers were the injected 503s
        checks.append((len(accepted) == READINGS and len(set(accepted)) == READINGS,
                       f"{READINGS} readings posted to the CRM bridge exactly once, after 2 x 503 were retried"))
        auth = {r.headers.get("Authorization") for r in crm.received}
        checks.append((auth == {"Bearer " + os.environ["CRM_BRIDGE_TOKEN"]}, "the CRM token came from the environment, not YAML"))

        print()
        print(f"  {'flow':<26} {'received':>8} {'done':>6} {'filtered':>8} {'failed':>7} {'published':>9}")
        for name, runner in hub.runners.items():
            s = runner.stats
            print(f"  {name:<26} {s.received:>8} {s.acked:>6} {s.filtered:>8} {s.failed:>7} {s.published:>9}")
        print()
        for cls, text in reasons:
            print(f"  DLQ  {cls}: {text}")
        await nc.close()
    finally:
        await hub.stop()
        await crm.stop()
        log_file.close()
        if not keep_data:
            shutil.rmtree(data_dir, ignore_errors=True)
    print()
    for ok, text in checks:
        print(f"  {'PASS' if ok else 'FAIL'}  {text}")
    passed = bool(checks) and all(ok for ok, _ in checks)
    print(f"\n{'demo passed' if passed else 'demo FAILED'} in {time.monotonic() - started:.1f}s")
    return 0 if passed else 1
