"""The country ERP flows of flows/ as shipped, against the five running SOAP simulators and a real
nats-server per test: tariff switches end to end with the delayed completion, faults landing where
they belong, a restart while switches are pending, account links, and the deadline alert."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from engine.embedded_nats import EmbeddedNats
from engine.messages import event_headers
from engine.runtime import Hub
from engine.validation import Project, flow_files, load_project
from engine.waiting import pending_records
from sandbox.erp import COUNTRIES, ErpSimulator
from tests.helpers import StreamReader, wait_until

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "erp-flows-de-pw"
DELAY = 0.5
SOAP_COUNTRIES = [c.upper() for c in COUNTRIES]
SWITCH_FLOWS = ["contract-switch-request", "contract-switch-track", "contract-switch-notify"]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def sims():
    started = {c.upper(): await ErpSimulator(c, switch_delay=DELAY, password=PASSWORD).start() for c in COUNTRIES}
    yield started
    for sim in started.values():
        await sim.stop()


@pytest.fixture(autouse=True)
def erp_env(sims, monkeypatch):
    for country, sim in sims.items():
        monkeypatch.setenv(f"ERP_{country}_URL", sim.address)
        sim.reset_faults()
        sim.switch_delay = DELAY
    monkeypatch.setenv("ERP_DE_PASSWORD", PASSWORD)
    monkeypatch.setenv("CRM_BRIDGE_TOKEN", "test-token")
    yield
    for sim in sims.values():
        sim.reset_faults()


@pytest.fixture
def js(broker_js):
    return broker_js


def shipped(tmp: Path, names: list[str], replace: dict[str, str] | None = None) -> Project:
    """The real config and the named flows of flows/ (optionally with text replaced, for short deadlines)."""
    (tmp / "flows").mkdir(exist_ok=True)
    for path in flow_files(ROOT / "flows"):
        if path.stem in names:
            text = path.read_text()
            for old, new in (replace or {}).items():
                text = text.replace(old, new)
            (tmp / "flows" / path.name).write_text(text)
    return load_project(ROOT / "config" / "sandbox.yaml", flow_files(tmp / "flows"))


async def hub_for(project: Project, broker: EmbeddedNats) -> Hub:
    hub = Hub(project, servers=[broker.url])
    await hub.start()
    return hub


def contract(country: str, n: int, tariff: str = "GREEN-12", **extra: Any) -> dict[str, Any]:
    postcode = {"DE": "10115", "FR": "75001", "IT": "20121", "PT": "1100-148", "UK": "EH1 1YZ", "BE": "4000"}[country]
    return {"contract_id": f"K-{country}-{n}", "version": 1, "account_id": f"A-{country}-{n}", "country": country,
            "tariff_code": tariff, "signed_on": "2026-12-01", "key_customer": True,
            "sites": [{"site_id": f"S-{country}-{n}", "postcode": postcode, "city": "Somewhere",
                       "meter_ids": [f"M-{country}-{n}"]}], **extra}


async def sign(js: Any, body: dict[str, Any]) -> None:
    await js.publish("crm.contract.signed", json.dumps(body).encode(),
                     headers=event_headers("/crm/salesforce", "crm.contract.signed",
                                           correlation_id=f"corr-{body['contract_id']}"))


async def test_a_signed_contract_is_switched_in_each_country_and_the_crm_and_managers_hear_of_it(
        tmp_path: Path, broker, js, sims):
    """A contract in each SOAP country reaches its ERP in that ERP's dialect, is followed until the ERP
    completes it, and comes back as erp.contract.switched with the ERP's reference and the CRM's
    correlation id; notify.requested names the customer and the key account manager of the region.
    Belgium's contract is left to its email flow; no switch is checked twice at once."""
    hub = await hub_for(shipped(tmp_path, SWITCH_FLOWS), broker)
    switched = await StreamReader.open(js, "erp.contract.switched")
    notices = await StreamReader.open(js, "notify.requested")
    try:
        for n, country in enumerate([*SOAP_COUNTRIES, "BE"]):
            await sign(js, contract(country, n))
        await switched.wait_for(5, timeout=30)
        await notices.wait_for(5, timeout=10)
    finally:
        await hub.stop()
    by_country = {json.loads(m.data)["country"]: m for m in switched.messages}
    assert sorted(by_country) == sorted(SOAP_COUNTRIES)
    for country, msg in by_country.items():
        body = json.loads(msg.data)
        sim = sims[country]
        assert body["status"] == "COMPLETED" and body["erp_ref"] in sim.switches
        assert sim.switches[body["erp_ref"]].contract == body["contract_id"]
        assert msg.headers["ce-correlationid"] == f"corr-{body['contract_id']}"
        assert sim.max_parallel_status <= 1
    regions = {n["country"]: sorted(r.get("region", r["role"]) for r in n["recipients"]) for n in notices.payloads()}
    assert regions["DE"] == ["DE-BE", "customer"] and regions["UK"] == ["UK-SCT", "customer"]
    assert await pending_records(js) == []


async def test_an_unknown_tariff_comes_back_as_switch_failed_with_the_erps_reason(tmp_path: Path, broker, js, sims):
    """The ERP accepts the request and fails the switch later; the CRM gets erp.contract.switch-failed
    with the ERP's own words, not a DLQ record."""
    hub = await hub_for(shipped(tmp_path, SWITCH_FLOWS), broker)
    failed = await StreamReader.open(js, "erp.contract.switch-failed")
    try:
        await sign(js, contract("FR", 40, tariff="NOPE-99"))
        [msg] = await failed.wait_for(1, timeout=30)
    finally:
        await hub.stop()
    body = json.loads(msg.data)
    assert body["status"] == "FAILED" and body["reason"] == "Code tarif NOPE-99 inconnu"
    assert hub.runners["contract-switch-track"].failures.dead_lettered == 0


@pytest.mark.parametrize("country, fault, contract_id, lands, detail", [
    ("DE", None, "BLOCKED-7", "dlq", "BusinessError: erp_de: TariffSwitchCreate: refused: E ZISU 042: Vertrag BLOCKED-7 "
                                     "ist für Tarifwechsel gesperrt | E ZISU 001: Wechselbeleg wurde nicht angelegt"),
    ("FR", None, "BLOCKED-8", "dlq", "TargetRejected: erp_fr: demanderBascule: SOAP fault soap:Sender > BLOCKED: "),
    ("IT", "client_fault", None, "dlq", "TargetRejected"),
    ("FR", "server_fault", None, "switched", None),
    ("UK", "html_503", None, "switched", None),
])
async def test_each_fault_kind_lands_where_it_belongs(tmp_path: Path, broker, js, sims, country: str,
                                                      fault: str | None, contract_id: str | None,
                                                      lands: str, detail: str | None):
    """A business refusal in a 200 answer and a SOAP client fault are dead-lettered with the ERP's
    reason; a SOAP server fault and an HTML 503 page are retried in process and the switch goes on."""
    hub = await hub_for(shipped(tmp_path, SWITCH_FLOWS), broker)
    dlq = await StreamReader.open(js, "dlq.contract-switch-request")
    switched = await StreamReader.open(js, "erp.contract.switched")
    body = contract(country, 3)
    if contract_id:
        body["contract_id"] = contract_id
    if fault:
        sims[country].fail_next(1, fault)
    try:
        await sign(js, body)
        if lands == "dlq":
            [record] = await dlq.wait_for(1)
            text = f"{record.headers['Hub-Dlq-Error-Class']}: {record.headers['Hub-Dlq-Error']}"
            assert detail in text, text
            assert json.loads(record.data)["contract_id"] == body["contract_id"]  # the original payload
        else:
            [msg] = await switched.wait_for(1, timeout=30)
            assert json.loads(msg.data)["contract_id"] == body["contract_id"]
            assert dlq.messages == []
            submits = sims[country].calls[sims[country].dialect.operation_names["submit"]]
            assert submits >= 1
    finally:
        await hub.stop()


async def test_an_erp_outage_opens_its_circuit_and_the_switch_completes_after_it_comes_back(
        tmp_path: Path, broker, js, sims):
    """While the PT ERP refuses connections its breaker opens, the contract waits in JetStream (no
    DLQ record), and the switch is requested and completed once the ERP is back."""
    sim = sims["PT"]
    hub = await hub_for(shipped(tmp_path, SWITCH_FLOWS), broker)
    switched = await StreamReader.open(js, "erp.contract.switched")
    breaker = hub.endpoint_breakers["erp_pt"]
    try:
        await sim.go_away()
        for n in range(6):
            await sign(js, contract("PT", 10 + n))

        async def circuit_open() -> bool:
            return breaker.state == "open"

        await wait_until(circuit_open, timeout=30)
        await sim.come_back()
        await switched.wait_for(6, timeout=60)
    finally:
        await sim.come_back()
        await hub.stop()
    assert hub.runners["contract-switch-request"].failures.dead_lettered == 0
    assert sorted(json.loads(m.data)["contract_id"] for m in switched.messages) == [f"K-PT-{10 + n}" for n in range(6)]


async def test_switches_pending_across_a_runner_restart_complete_afterwards_never_checked_in_parallel(
        tmp_path: Path, broker, js, sims):
    """Switches still pending when the runner stops are in JetStream and KV, not in the runner: a new
    runner completes each one once, and no switch is ever checked twice at the same time."""
    for sim in sims.values():
        sim.switch_delay = 3600.0
    project = shipped(tmp_path, SWITCH_FLOWS)
    first = await hub_for(project, broker)
    switched = await StreamReader.open(js, "erp.contract.switched")
    try:
        for n, country in enumerate(["DE", "IT", "UK"]):
            await sign(js, contract(country, 20 + n))

        async def three_pending() -> bool:
            return len(await pending_records(js, "contract-switch-track")) == 3

        await wait_until(three_pending, timeout=30)
    finally:
        await first.stop()
    for sim in sims.values():
        sim.switch_delay = 0.0
    second = await hub_for(project, broker)
    try:
        await switched.wait_for(3, timeout=30)
    finally:
        await second.stop()
    assert sorted(json.loads(m.data)["contract_id"] for m in switched.messages) == ["K-DE-20", "K-IT-21", "K-UK-22"]
    assert all(sims[c].max_parallel_status == 1 for c in ("DE", "IT", "UK"))
    assert await pending_records(js) == []


async def test_a_switch_past_its_deadline_raises_an_alert_once_and_resolves_it_when_done(
        tmp_path: Path, broker, js, sims):
    """With a 1 s deadline, a switch still pending raises `deadline` on ops.alert.contract-switch-track
    once, shows as overdue in the pending records, and the alert resolves when the switch completes."""
    sims["DE"].switch_delay = 3600.0
    project = shipped(tmp_path, SWITCH_FLOWS, {"deadline: 48h": "deadline: 1s",
                                               "every: [2s, 10s, 1m, 5m, 15m, 1h]": "every: [300ms]"})
    hub = await hub_for(project, broker)
    alerts = await StreamReader.open(js, "ops.alert.contract-switch-track")
    switched = await StreamReader.open(js, "erp.contract.switched")
    try:
        await sign(js, contract("DE", 30))
        [firing] = await alerts.wait_for(1)
        [record] = await pending_records(js, "contract-switch-track")
        assert record["key"] == "K-DE-30:v1" and record["alerted"] and record["checks"] >= 2
        sims["DE"].switch_delay = 0.0
        await switched.wait_for(1)
        await alerts.wait_for(2)
    finally:
        await hub.stop()
    events = alerts.payloads()
    assert [(e["alert"], e["state"]) for e in events] == [("deadline", "firing"), ("deadline", "resolved")]
    assert events[0]["key"] == "K-DE-30:v1"


async def test_account_changes_are_upserted_and_the_erps_key_is_linked_back(tmp_path: Path, broker, js, sims):
    """crm.account.changed reaches each country's ERP; erp.account.linked carries the ERP's own key,
    the same key when the account changes again; Belgium is left to its email flow."""
    hub = await hub_for(shipped(tmp_path, ["account-upsert"]), broker)
    linked = await StreamReader.open(js, "erp.account.linked")
    try:
        for country in [*SOAP_COUNTRIES, "BE", "DE"]:
            account = {"account_id": f"ACC-{country}", "country": country, "name": "Müller & Fils", "kind": "business",
                       "street": "Rue de Liège 1", "postcode": "4000", "city": "Liège", "email": "kam@example.org"}
            await js.publish("crm.account.changed", json.dumps(account).encode(),
                             headers=event_headers("/crm/salesforce", "crm.account.changed"))
        await linked.wait_for(6)
    finally:
        await hub.stop()
    keys: dict[str, list[str]] = {}
    for body in linked.payloads():
        keys.setdefault(body["country"], []).append(body["erp_account_key"])
    assert sorted(keys) == sorted(SOAP_COUNTRIES)
    assert len(keys["DE"]) == 2 and keys["DE"][0] == keys["DE"][1]
    for country, (key, *_) in keys.items():
        assert sims[country].accounts[f"ACC-{country}"]["key"] == key


async def test_switches_pending_when_the_runner_is_sigkilled_complete_under_a_new_runner(
        tmp_path: Path, broker, js, sims):
    """A runner killed outright while switches are pending loses none: a new runner checks each one
    until the ERP completes it, and no switch is ever checked twice at the same time."""
    import asyncio
    import os
    import signal
    import sys

    for sim in sims.values():
        sim.switch_delay = 3600.0
        sim.reset_counters()
    project = shipped(tmp_path, SWITCH_FLOWS, {"limits: {concurrency: 8}": "limits: {concurrency: 8}\nack_wait: 2s",
                                               "every: [2s, 10s, 1m, 5m, 15m, 1h]": "every: [500ms, 1s]"})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "runner.py"), "run", "--nats", broker.url, "--log-level", "warning",
        "--config", str(ROOT / "config" / "sandbox.yaml"), "--flows", str(tmp_path / "flows"),
        stderr=open(tmp_path / "runner.log", "w"), env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        async def flows_up() -> bool:
            try:
                await js.consumer_info("CRM", "contract-switch-request")
                return True
            except Exception:
                return False

        await wait_until(flows_up, timeout=30)
        for n, country in enumerate(["FR", "PT", "UK"]):
            await sign(js, contract(country, 50 + n))

        async def three_checked() -> bool:
            records = await pending_records(js, "contract-switch-track")
            return len(records) == 3 and all(r["checks"] >= 2 for r in records)

        await wait_until(three_checked, timeout=30)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    for sim in sims.values():
        sim.switch_delay = 0.0
    hub = await hub_for(project, broker)
    switched = await StreamReader.open(js, "erp.contract.switched")
    try:
        await switched.wait_for(3, timeout=30)
    finally:
        await hub.stop()
    assert sorted(json.loads(m.data)["contract_id"] for m in switched.messages) == ["K-FR-50", "K-PT-51", "K-UK-52"]
    assert all(sims[c].max_parallel_status == 1 for c in ("FR", "PT", "UK"))
    assert await pending_records(js) == []
