"""`runner.py demo`: the hub end to end on this machine, in about twenty seconds.

Starts the sandbox systems (five SOAP country ERPs, a CRM bridge) and the hub (embedded nats-server,
the flows of flows/), plays the part of the CRM and a meter platform, then checks what a user would:
every valid contract reached its country's ERP once and its switch completed later, Belgium's went
to none of them, broken messages sit in the DLQ with their reason, accounts got linked, the nightly
invoice batch reconciled, every reading reached the CRM exactly once despite the CRM answering 503
and then going down. Exit 0 only if all hold. Later issues add their systems here.

The whole scenario runs as of one instant: `clock` (`runner.py demo --at 2027-03-28T01:30:00Z`, else the
system clock) is the hub's clock (schedules, waits, pulls, alerts, dead letters), the meter platforms'
and the dlq CLI's, and every date a section makes up comes from it. Each wait has its own budget
(WAIT_BUDGET s): a slow machine slows one wait, it does not eat the next one's time.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable

import nats

from engine import logs
from engine.clock import SYSTEM, Clock
from engine.messages import CE_CORRELATION, event_headers
from engine.runtime import Hub
from engine.validation import flow_files, load_project
from sandbox import (demo_cluster, demo_erp, demo_erp_answers, demo_faults, demo_mail, demo_meters, demo_more,
                     demo_ops, demo_salesforce)
from sandbox.http_sink import HttpSink

COUNTRIES = ["DE", "FR", "IT", "PT", "UK", "BE"]
POSTCODES = {"DE": "10115", "FR": "75001", "IT": "20121", "PT": "1100-148", "UK": "EH1 1YZ", "BE": "4000"}
CITIES = {"DE": "Berlin", "FR": "Paris", "IT": "Milano", "PT": "Lisboa", "UK": "Edinburgh", "BE": "Liège"}
FAILING = "C-IT-1002"      # its tariff is not in the Italian ERP's catalogue: the switch fails later
READINGS = 20
WAIT_BUDGET = 90.0   # each wait's own time (monotonic seconds): a slow wait does not fail the next check


def contract(i: int, country: str, today: str) -> dict[str, Any]:
    return {
        "contract_id": f"C-{country}-{1000 + i}", "version": 1, "account_id": f"A-{country}-{500 + i}",
        "country": country, "tariff_code": "SOLAR-99" if country == "IT" else "GREEN-12", "signed_on": today,
        "key_customer": True,
        "sites": [{"site_id": f"S-{country}-{i}", "postcode": POSTCODES[country], "city": CITIES[country],
                   "meter_ids": [f"M-{country}-{i}-1"]}],
    }


def reading(i: int, since: datetime) -> dict[str, Any]:
    at = since + timedelta(hours=i)
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


def within(budget: float = WAIT_BUDGET) -> float:
    """A fresh deadline for one wait (time.monotonic)."""
    return time.monotonic() + budget


async def run_demo(root: Path, keep_data: bool = False, clock: Clock = SYSTEM) -> int:
    data_dir = root / ".hub" / "demo-nats" if keep_data else Path(tempfile.mkdtemp(prefix="hub-demo-"))
    log_path = root / ".hub" / "demo.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = log_path.open("w")
    logs.configure("info", "json", stream=log_file)
    started = time.monotonic()
    crm = await HttpSink().start()
    erps = await demo_erp.start_erps()
    outside = await demo_more.Outside(clock).start()
    salesforce = await demo_salesforce.start_salesforce()  # before load_project: it sets SALESFORCE_* (issue 16)
    os.environ["CRM_BRIDGE_URL"] = crm.url
    crm.serve("/sites", demo_meters.site_directory(outside))  # the CRM's sites: which are businesses
    os.environ.setdefault("CRM_BRIDGE_TOKEN", "demo-token")
    project = load_project(root / "config" / "sandbox.yaml", flow_files(root / "flows"))
    hub = Hub(project, data_dir=data_dir, clock=clock)
    print(f"PLU hub demo: {len(project.flows)} flows, logs in {log_path}")
    print(f"  as of {clock.now().isoformat(timespec='seconds')}"
          f"{'' if clock is SYSTEM else ' (runner.py demo --at: the hub, the platforms and the CLI run on it)'}")
    checks: list[tuple[bool, str]] = []

    def check(ok: bool, text: str) -> None:
        checks.append((ok, text))
        print(f"    {'PASS' if ok else 'FAIL'}  {text}")

    try:
        await hub.start()
        for scheduler in hub.schedulers.values():  # a slot inside the demo's minute must not add a run:
            await scheduler.stop()                 # the sections trigger the scheduled flows themselves
        print(f"  embedded nats-server at {hub.servers[0]} (JetStream store {data_dir})")
        print(f"  schedules paused ({', '.join(hub.schedulers)}): the demo triggers those runs as ops would")
        print(f"  sandbox CRM bridge (HTTP) at {crm.url}")
        print(f"  sandbox ERPs (SOAP): {', '.join(f'{c} {s.url}' for c, s in erps.items())}")
        print(outside.describe())
        nc = await nats.connect(hub.servers[0], name="demo-crm-bridge")
        js = nc.jetstream()
        switch, dlq, switched, failed, notices, linked, records, pdfs, readings = (Collector() for _ in range(9))
        totals, forecasts, candidates = Collector(), Collector(), Collector()
        for subject, collector in (("erp.contract.switch-requested", switch), ("dlq.>", dlq),
                                   ("erp.contract.switched", switched), ("erp.contract.switch-failed", failed),
                                   ("notify.requested", notices), ("erp.account.linked", linked),
                                   ("ops.reconciliation", records), ("invoice.pdf.available", pdfs),
                                   ("meter.reading.received", readings), ("meter.month.completed", totals),
                                   ("meter.reading.forecast", forecasts), ("crm.keycustomer.candidate", candidates)):
            await js.subscribe(subject, cb=collector.cb, ordered_consumer=True)

        print("\n  1. The CRM signs contracts in six countries, and sends two broken ones")
        sent_ids: dict[str, str] = {}
        today = clock.now().date().isoformat()  # the CRM's date: signed today
        read_since = clock.now().replace(minute=0, second=0, microsecond=0) - timedelta(days=3)  # section 8's
        for i, country in enumerate(COUNTRIES):
            body = contract(i, country, today)
            h = event_headers("/crm/salesforce", "crm.contract.signed", correlation_id=f"corr-{body['contract_id']}")
            sent_ids[body["contract_id"]] = h[CE_CORRELATION]
            await js.publish("crm.contract.signed", json.dumps(body).encode(), headers=h)
        bad = contract(99, "DE", today) | {"country": "XX"}
        await js.publish("crm.contract.signed", json.dumps(bad).encode(),
                         headers=event_headers("/crm/salesforce", "crm.contract.signed"))
        await js.publish("crm.contract.signed", b"<contract>not json</contract>",
                         headers=event_headers("/crm/salesforce", "crm.contract.signed"))
        ok_switch = await wait_until(lambda: len(switch.messages) >= 6, [switch.changed], within())
        ours = lambda: [m for m in dlq.messages if m.subject == "dlq.contract-switch-request"]  # noqa: E731
        ok_dlq = await wait_until(lambda: len(ours()) >= 2, [dlq.changed], within())
        got = [json.loads(m.data) for m in switch.messages]
        countries = sorted(g["country"] for g in got)
        check(ok_switch and countries == sorted(COUNTRIES),
              f"6 switches requested from their ERPs, on erp.contract.switch-requested ({', '.join(countries)})")
        check(all(m.headers.get(CE_CORRELATION) == sent_ids[json.loads(m.data)["contract_id"]]
                  and m.headers.get("ce-specversion") == "1.0" for m in switch.messages),
              "each carries CloudEvents headers and the CRM's correlation id")
        check(any(g["country"] == "BE" and g["erp_ref"].startswith("CSW-") for g in got),
              "Belgium's went by email as a flat file; its token is the reference until the ERP answers")
        reasons = sorted((m.headers.get("Hub-Dlq-Error-Class", ""), m.headers.get("Hub-Dlq-Error", "")) for m in ours())
        check(ok_dlq and [r[0] for r in reasons] == ["UnparseablePayload", "ValidationFailed"],
              "the 2 broken contracts are in the DLQ with their reason:")
        for cls, text in reasons:
            print(f"          {cls}: {text[:90]}")

        print("\n  2. Ops repair the contract that failed its schema, from the DLQ, with the CLI")
        from dlq.cli import run as dlq_cli
        from runner import build_parser

        def cli(*words: str) -> Any:
            return build_parser().parse_args(["dlq", *words, "--nats", hub.servers[0],
                                              "--config", str(root / "config" / "sandbox.yaml"),
                                              "--flows", str(root / "flows")])

        bad_seq = next(m.metadata.sequence.stream for m in ours()
                       if m.headers.get("Hub-Dlq-Error-Class") == "ValidationFailed")
        print("       $ runner.py dlq list --flow contract-switch-request")
        await dlq_cli(cli("list", "--flow", "contract-switch-request"), clock)
        print(f"       $ runner.py dlq edit {bad_seq} --set country=DE")
        code = await dlq_cli(cli("edit", str(bad_seq), "--set", "country=DE"), clock)
        fixed = await wait_until(lambda: len(switch.messages) >= 7, [switch.changed], within())
        check(code == 0 and fixed and json.loads(switch.messages[-1].data)["contract_id"] == "C-DE-1099",
              "the fixed contract was validated, replayed, and reached the ERP side")

        expected = [f"C-{c}-{1000 + i}" for i, c in enumerate(COUNTRIES) if f"C-{c}-{1000 + i}" != FAILING]
        await demo_erp.section_switches(js, switched, failed, notices, erps, [*expected, "C-DE-1099"], FAILING,
                                        check, wait_until, WAIT_BUDGET)
        await demo_more.section_belgium(switched, hub, outside, check)
        await demo_mail.section_mail(nc, js, outside, check, WAIT_BUDGET)
        await demo_erp.section_accounts(js, linked, erps, check, wait_until, WAIT_BUDGET)
        await demo_erp.section_nightly(js, hub, records, erps, check, wait_until, WAIT_BUDGET)
        await demo_more.section_pdfs(pdfs, sum(len(e.invoices) for e in erps.values()), outside, hub.servers[0],
                                     check, wait_until, WAIT_BUDGET)

        print("\n  8. A meter platform sends readings; the CRM bridge answers 503 twice at first")
        crm.fail_next(2, status=503, retry_after="0")
        for i in range(READINGS):
            await js.publish("meter.reading.received", json.dumps(reading(i, read_since)).encode(),
                             headers=event_headers("/meter/vendor1", "meter.reading.received", msg_id=f"r{i}"))
        try:
            await crm.wait_for_effects(READINGS, timeout=WAIT_BUDGET)
        except TimeoutError:
            pass
        check(len(crm.applied) == READINGS and set(crm.applied.values()) == {1},
              f"{READINGS} readings posted to the CRM bridge once each; the 503s were retried in-process")
        auth = {r.headers.get("Authorization") for r in crm.received}
        check(auth == {"Bearer " + os.environ["CRM_BRIDGE_TOKEN"]}, "the CRM token came from the environment, not YAML")

        print("\n  9. The CRM bridge goes down while 30 more readings arrive, then comes back")
        breaker = hub.breakers.breaker("crm_readings", project.endpoints["crm_readings"].circuit_breaker)
        opened = asyncio.Event()
        breaker.on_change(lambda state: opened.set() if state == "open" else None)
        crm.set_status(503)
        for i in range(READINGS, READINGS + 30):
            await js.publish("meter.reading.received", json.dumps(reading(i, read_since)).encode(),
                             headers=event_headers("/meter/vendor1", "meter.reading.received", msg_id=f"r{i}"))
        try:
            await asyncio.wait_for(opened.wait(), WAIT_BUDGET)
            await crm.wait_for(crm.count + 2, timeout=10)  # the outage outlasts a probe or two
        except TimeoutError:
            pass
        failed_calls = crm.count - READINGS - 2
        print(f"       circuit for crm_readings: {breaker.state} after {failed_calls} failed calls; "
              "readings wait in JetStream")
        crm.recover()
        try:
            await crm.wait_for_effects(READINGS + 30, timeout=WAIT_BUDGET)
        except TimeoutError:
            pass
        meter = hub.runners["meter-reading-to-crm"]
        acked_by = within()
        while meter.stats.acked < READINGS + 30 and time.monotonic() < acked_by:
            await asyncio.sleep(0.05)  # the last acks follow the last answers by a moment
        meter_dlq = [m for m in dlq.messages if m.subject == "dlq.meter-reading-to-crm"]
        check(opened.is_set() and not meter_dlq, "the circuit opened and no reading went to the DLQ")
        check(len(crm.applied) == READINGS + 30 and set(crm.applied.values()) == {1},
              f"all {READINGS + 30} readings reached the CRM bridge exactly once after it came back")

        await demo_more.section_powersales(nc, outside, check)
        await demo_meters.section_push(readings, hub, outside, check, wait_until, WAIT_BUDGET, clock)
        await demo_meters.section_monthly_pull(js, records, hub, check, wait_until, WAIT_BUDGET, clock)
        await demo_meters.section_meter_rules(js, readings, records, totals, forecasts, candidates, hub, check,
                                              wait_until, WAIT_BUDGET, clock)
        await demo_erp_answers.section_erp_answers(js, dlq, root, check, wait_until, within())
        await demo_salesforce.section_salesforce(js, nc, hub, salesforce, check, within(), number=15)
        await demo_cluster.section_cluster(check, number=16)
        await demo_faults.section_faults(check, number=17)
        await demo_ops.section_ops(hub, check, dlq.messages, crm, number=18)  # last: the counts of all the above

        print()
        print(f"  {'flow':<26} {'deliveries':>10} {'done':>5} {'filtered':>8} {'duplicate':>9} "
              f"{'waited':>6} {'checks':>6} {'dead-lettered':>13} {'published':>9}")
        for name, runner in hub.runners.items():
            s = runner.stats
            dead = runner.failures.dead_lettered if hasattr(runner, "failures") else 0
            rechecks = runner.waits.waiting if getattr(runner, "waits", None) is not None else 0
            print(f"  {name:<26} {s.received:>10} {s.acked:>5} {s.filtered:>8} {s.skipped:>9} "
                  f"{s.failed - dead:>6} {rechecks:>6} {dead:>13} {s.published:>9}")
        print("  (waited: handed back to JetStream to retry later, e.g. while a circuit was open;\n"
              "   checks: a switch still pending at the ERP, checked again later)")
        await nc.close()
    finally:
        await hub.stop()
        await crm.stop()
        await demo_erp.stop_erps(erps)
        await outside.stop()
        await salesforce.stop()
        log_file.close()
        if not keep_data:
            shutil.rmtree(data_dir, ignore_errors=True)
    passed = bool(checks) and all(ok for ok, _ in checks)
    failed = [text for ok, text in checks if not ok]
    print(f"\n{'demo passed' if passed else 'demo FAILED'}: {len(checks) - len(failed)}/{len(checks)} checks "
          f"in {time.monotonic() - started:.1f}s")
    return 0 if passed else 1
