"""The country-ERP part of `runner.py demo`: five SOAP ERP simulators, switches completing later,
account links, and the nightly invoice batch run on demand.

Each `section_*` plays the CRM (or ops), waits for what a user would see, and reports checks
through the demo's `check` callback; sandbox/demo.py runs them in order. Each wait gets `budget`
seconds of its own (a slow wait does not shorten the next one).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

from engine.messages import event_headers
from engine.schedule import publish_ticks
from sandbox.erp import COUNTRIES, ErpSimulator
from sandbox.erp.simulator import DEFAULT_PASSWORD

SWITCH_DELAY = 1.0   # the ERPs complete a switch this long after it was asked for (48 h in life)
Check = Callable[[bool, str], None]


async def start_erps() -> dict[str, ErpSimulator]:
    """One simulator per SOAP country; the endpoints in config/sandbox.yaml read their addresses
    from ERP_<C>_URL, so nothing in the YAML changes for the demo."""
    sims = {}
    for c in COUNTRIES:
        sim = await ErpSimulator(c, switch_delay=SWITCH_DELAY).start()
        os.environ[f"ERP_{c.upper()}_URL"] = sim.address
        sims[c.upper()] = sim
    os.environ.setdefault("ERP_DE_PASSWORD", DEFAULT_PASSWORD)
    return sims


async def stop_erps(sims: dict[str, ErpSimulator]) -> None:
    for sim in sims.values():
        await sim.stop()


async def section_switches(js: Any, switched: Any, failed: Any, notices: Any, sims: dict[str, ErpSimulator],
                           expected: list[str], failing: str, check: Check, wait_until: Any, budget: float) -> None:
    print(f"\n  3. The ERPs complete the switches {SWITCH_DELAY:.0f}s later; the hub polls, backing off")
    ok = await wait_until(lambda: len(switched.messages) + len(failed.messages) >= len(expected) + 1,
                          [switched.changed, failed.changed], time.monotonic() + budget)
    done = {json.loads(m.data)["contract_id"]: json.loads(m.data) for m in switched.messages}
    for cid in sorted(done):
        body = done[cid]
        print(f"       {body['country']}  {cid:<10} ERP reference {body['erp_ref']:<14} {body['status']}")
    check(ok and sorted(done) == sorted(expected),
          f"{len(expected)} switches completed on erp.contract.switched, each with its ERP's own reference "
          f"({', '.join(sorted({b['country'] for b in done.values()}))})")
    bad = [json.loads(m.data) for m in failed.messages]
    check(len(bad) == 1 and bad[0]["contract_id"] == failing and bad[0]["reason"],
          "the unknown tariff came back as erp.contract.switch-failed with the ERP's reason:")
    if bad:
        print(f"          {bad[0]['country']}: {bad[0]['reason']}")
    await wait_until(lambda: len(notices.messages) >= len(expected), [notices.changed], time.monotonic() + budget)
    roles = sorted({r.get("region", "") for n in notices.messages for r in json.loads(n.data)["recipients"]} - {""})
    check(len(notices.messages) == len(expected) and bool(roles),
          f"notify.requested for each customer and the key account managers of {', '.join(roles)}")
    check(all(sim.max_parallel_status <= 1 for sim in sims.values()), "no switch was ever checked twice at once")


async def section_accounts(js: Any, linked: Any, sims: dict[str, ErpSimulator], check: Check, wait_until: Any,
                           budget: float) -> None:
    print("\n  5. The CRM changes two accounts; the ERPs' own keys come back for the CRM")
    for country, name in (("DE", "Bäckerei Müller GmbH"), ("FR", "Boulangerie Lefèvre")):
        account = {"account_id": f"ACC-{country}-1", "country": country, "name": name, "kind": "business",
                   "street": "Hauptstraße 1", "postcode": "10115", "city": "Berlin", "email": "kam@example.org"}
        await js.publish("crm.account.changed", json.dumps(account).encode(),
                         headers=event_headers("/crm/salesforce", "crm.account.changed"))
    ok = await wait_until(lambda: len(linked.messages) >= 2, [linked.changed], time.monotonic() + budget)
    for body in (json.loads(m.data) for m in linked.messages):
        print(f"       {body['country']}  {body['account_id']}  ->  ERP key {body['erp_account_key']}")
    check(ok and all(sims[b["country"]].accounts[b["account_id"]]["key"] == b["erp_account_key"]
                     for b in map(lambda m: json.loads(m.data), linked.messages)),
          "erp.account.linked carries each ERP's key for the CRM record")


async def section_nightly(js: Any, hub: Any, records: Any, sims: dict[str, ErpSimulator], check: Check,
                          wait_until: Any, budget: float) -> None:
    print("\n  6. Ops run the nightly invoice batch now (it is scheduled for 01:30 Europe/Brussels)")
    print("       $ runner.py trigger erp-invoices-nightly")
    flow = next(lf.flow for lf in hub.project.flows if lf.flow.name == "erp-invoices-nightly")
    started = time.monotonic()
    await publish_ticks(js, flow, "demo", manual=True)
    ok = await wait_until(lambda: len(records.messages) >= len(sims), [records.changed], time.monotonic() + budget)
    took = time.monotonic() - started
    print(f"       {'country':<8}{'pages':>6}{'invoices':>10}{'ERP total':>10}  matched")
    rows = sorted((json.loads(m.data) for m in records.messages), key=lambda r: r["country"])
    for r in rows:
        total = "-" if r["erp_total"] is None else r["erp_total"]
        print(f"       {r['country']:<8}{r['pages']:>6}{r['items']:>10}{total:>10}  {r['matched']}")
    exact = all(r["items"] == len(sims[r["country"]].invoices) for r in rows)
    check(ok and exact and all(r["matched"] is not False for r in rows),
          f"every invoice of the five ERPs published once, a reconciliation record per country ({took * 1000:.0f} ms)")
