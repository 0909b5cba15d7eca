"""The demo's Salesforce section (sandbox/demo_salesforce.py) runs green against the shipped config and
flows, the emulator and the ERP simulators."""

from __future__ import annotations

import time
from pathlib import Path

import nats

from engine.runtime import Hub
from engine.validation import load_project
from sandbox import demo_erp
from sandbox.demo_salesforce import section_salesforce, start_salesforce

ROOT = Path(__file__).resolve().parents[1]
FLOWS = ["contract-switch-request", "account-upsert", "meter-month-totals"]


async def test_the_salesforce_demo_section_passes_every_check(broker, tmp_path, capsys):
    """Every check the section makes passes, and it prints what it shows."""
    org = await start_salesforce()
    erps = await demo_erp.start_erps()
    flows = sorted((ROOT / "flows").glob("salesforce-*.yaml")) + [ROOT / "flows" / f"{n}.yaml" for n in FLOWS]
    hub = Hub(load_project(ROOT / "config" / "sandbox.yaml", flows), servers=[broker.url])
    checks: list[tuple[bool, str]] = []
    await hub.start()
    nc = await nats.connect(broker.url)
    try:
        await section_salesforce(nc.jetstream(), nc, hub, org, lambda ok, text: checks.append((ok, text)),
                                 time.monotonic() + 120)
    finally:
        await nc.close()
        await hub.stop()
        await demo_erp.stop_erps(erps)
        await org.stop()
    out = capsys.readouterr().out
    assert len(checks) == 6 and all(ok for ok, _ in checks), checks
    assert "dead letter: " in out and "interval.detail M-SF-DETAIL 2027-01: 31 intervals" in out
