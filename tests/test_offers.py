"""The shipped key-customer offer flows (flows/offers-*.yaml) on the session's nats-server against the real
Power Sales simulator: complete results, partial ones with Power Sales' reasons, and a variant that never
answers ending in a partial result at the deadline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nats
import pytest_asyncio

from engine.messages import event_headers
from engine.waiting import pending_records
from sandbox.powersales import PowerSalesSimulator
from tests.helpers import StreamReader, project_from, started_hub, wait_until
from tests.test_tariff_quote import endpoint_block, shipped_flow

OFFER_FLOWS = ["offers-request", "offers-variant", "offers-gather", "offers-watch", "offers-expire"]
FAST = {  # the shipped schedules, shortened so a deadline passes within a test
    "offers-variant": {"timeout: 10s": "timeout: 500ms", "retry: [1s, 5s]": "retry: []",
                       "redeliver: [30s, 2m, 10m, 30m]": "redeliver: [2s]", "rate: 2/s": "rate: 50/s"},
    "offers-watch": {"every: [15s, 30s, 1m]": "every: [100ms]", "deadline: 15m": "deadline: 1500ms"},
}
VARIANTS = [{"variant_id": "A", "term_months": 12, "green_share": 100, "discount_pct": 2},
            {"variant_id": "B", "term_months": 24, "green_share": 50, "discount_pct": 5.5},
            {"variant_id": "C", "term_months": 36, "green_share": 0, "discount_pct": 10}]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def sim():
    started = await PowerSalesSimulator(latency=0.02, capacity=4, hang_seconds=5).start()
    yield started
    await started.stop()


class Offers:
    """The CRM's side: publish crm.offer.requested, read powersales.offers.ready, for one test's hub."""

    def __init__(self, u: str, js: Any, hub: Any, ready: StreamReader, answered: StreamReader,
                 variants: StreamReader, alerts: StreamReader) -> None:
        self.u, self.js, self.hub = u, js, hub
        self.ready, self.answered, self.variants, self.alerts = ready, answered, variants, alerts

    async def request(self, n: int, variants: list[dict[str, Any]], customer: str = "KC123456") -> str:
        request_id = f"OR-{self.u}-{n}"
        body = {"request_id": request_id, "customer_id": customer, "country": "DE", "postcode": "10115",
                "consumption": 120000, "variants": variants}
        await self.js.publish(f"{self.u}.crm.offer.requested", json.dumps(body).encode(),
                              headers=event_headers("/crm/salesforce", "crm.offer.requested"))
        return request_id

    async def settled(self, flow: str, count: int) -> bool:
        """Has `flow` finished `count` messages (with outputs or without)?"""
        stats = self.hub.runners[flow].stats
        return stats.acked + stats.filtered >= count


@pytest_asyncio.fixture(loop_scope="session")
async def crm(tmp_path: Path, nats_url: str, sim, unique: str):
    sim.reset()
    u, endpoint = unique, f"ps_{unique}"
    common = {"crm.offer.requested": f"{u}.crm.offer.requested",
              "powersales.offer.variant": f"{u}.powersales.offer.variant",
              "powersales.offer.answered": f"{u}.powersales.offer.answered",
              "powersales.offers.ready": f"{u}.powersales.offers.ready",
              "ops.alert.offers-watch": f"ops.alert.offers-watch-{u}", "name: offers-watch": f"name: offers-watch-{u}",
              "endpoint: powersales": f"endpoint: {endpoint}"}
    flows = []
    for name in OFFER_FLOWS:
        text = shipped_flow(name, FAST.get(name, {}))
        for old, new in common.items():
            text = text.replace(old, new)
        flows.append(text)
    config = f"""
    streams:
      - {{name: CRM_{u}, subjects: ["{u}.crm.>"]}}
      - {{name: PS_{u}, subjects: ["{u}.powersales.>"]}}
      - {{name: OPS_{u}, subjects: ["ops.alert.offers-watch-{u}"]}}
    endpoints:""" + endpoint_block(endpoint, sim.url)
    hub = await started_hub(project_from(tmp_path, config, *flows), nats_url)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    readers = [await StreamReader.open(js, s) for s in (f"{u}.powersales.offers.ready",
                                                        f"{u}.powersales.offer.answered",
                                                        f"{u}.powersales.offer.variant", f"ops.alert.offers-watch-{u}")]
    try:
        yield Offers(u, js, hub, *readers)
    finally:
        sim.reset_faults()
        await hub.stop()
        await nc.close()


async def test_every_variant_answered_gives_one_complete_result_in_the_requests_order(crm, sim):
    """Three allowed variants: one powersales.offers.ready with three offers (A, B, C), nothing failed, asked
    of Power Sales at most two at a time, and the watch's pending record gone without a deadline alert."""
    request_id = await crm.request(1, VARIANTS)
    [msg] = await crm.ready.wait_for(1)
    ready = json.loads(msg.data)
    assert ready["request_id"] == request_id and ready["status"] == "complete" and ready["failed"] == []
    assert [o["variant_id"] for o in ready["offers"]] == ["A", "B", "C"] and ready["expected"] == 3
    assert [o["term_months"] for o in ready["offers"]] == [12, 24, 36]
    assert all(o["offer_id"].startswith("PSO") and o["estimate_per_year"] > 0 for o in ready["offers"])
    assert sim.answered["offer"] == 3 and sim.max_in_flight <= 2
    assert {json.loads(m.data)["variant_key"] for m in crm.variants.messages} == {f"{request_id}:{v}" for v in "ABC"}

    async def watch_done() -> bool:
        return await pending_records(crm.js, f"offers-watch-{crm.u}") == []

    await wait_until(watch_done, timeout=5)
    assert crm.alerts.messages == []


async def test_a_refused_variant_gives_a_partial_result_with_power_sales_reason(crm, sim):
    """A 24-month variant over its discount cap is refused with RC 202: the result has the other two offers and
    failed [{B, Power Sales' reason, 202}]; the same request sent again asks Power Sales nothing more."""
    variants = [VARIANTS[0], {**VARIANTS[1], "discount_pct": 9}, VARIANTS[2]]
    request_id = await crm.request(2, variants)
    [msg] = await crm.ready.wait_for(1)
    ready = json.loads(msg.data)
    assert ready["request_id"] == request_id and ready["status"] == "partial" and [o["variant_id"] for o in ready["offers"]] == ["A", "C"]
    assert ready["failed"] == [{"variant_id": "B", "code": 202,
                                "reason": "Variante nicht zulässig: Rabatt 9 % > 8 % bei 24 Monaten"}]
    await crm.request(2, variants)  # the CRM sends it again (a new message id)
    await wait_until(lambda: crm.settled("offers-request", 2), timeout=5)
    assert len(crm.variants.messages) == 3 and len(crm.ready.messages) == 1 and sim.requests["offer"] == 3


async def test_an_unknown_key_customer_refuses_every_variant_and_the_result_says_so(crm, sim):
    """RC 201 for each variant: a partial result without offers, every variant failed with the reason."""
    await crm.request(3, VARIANTS[:2], customer="KC900001")
    ready = json.loads((await crm.ready.wait_for(1))[0].data)
    assert ready["status"] == "partial" and ready["offers"] == []
    assert [(f["variant_id"], f["code"]) for f in ready["failed"]] == [("A", 201), ("B", 201)]
    assert ready["failed"][0]["reason"] == "Großkunde KC900001 nicht gefunden"


async def test_a_variant_that_never_answers_ends_in_a_partial_result_at_the_deadline(crm, sim):
    """Power Sales hangs on one variant: at the deadline the result has the two offers and the third as "no
    answer in time" (the deadline alert fires and resolves); its late answer after a retry changes nothing."""
    sim.hang_next(1, seconds=1)
    await crm.request(4, VARIANTS)
    [msg] = await crm.ready.wait_for(1, timeout=10)
    ready = json.loads(msg.data)
    assert ready["status"] == "partial" and len(ready["offers"]) == 2
    [missing] = ready["failed"]
    assert missing == {"variant_id": missing["variant_id"], "reason": "no answer in time", "code": None}
    assert missing["variant_id"] in ("A", "B") and missing["variant_id"] not in [o["variant_id"] for o in ready["offers"]]
    alerts = [json.loads(m.data) for m in await crm.alerts.wait_for(2)]
    assert [(a["alert"], a["state"], a["key"]) for a in alerts] == [("deadline", "firing", ready["request_id"]),
                                                                    ("deadline", "resolved", ready["request_id"])]
    await crm.answered.wait_for(3, timeout=10)  # the hung variant, redelivered, is answered late
    await wait_until(lambda: crm.settled("offers-gather", 3), timeout=5)
    assert len(crm.ready.messages) == 1 and sim.answered["offer"] == 3


def test_the_gathering_record_emits_one_result_whoever_finishes_it():
    """Pure apply logic: the last answer finishes the record and only its repeat re-emits the result; a deadline
    after that, a late answer or a duplicate emits nothing; a deadline first marks the missing variant."""
    from transforms.powersales import gather_offer, offer_request, offers_expired

    request = {"request_id": "R1", "customer_id": "KC123456", "country": "DE", "consumption": 1000,
               "variants": VARIANTS[:2]}
    started = offer_request({"state": None, "message": request})
    assert [v["variant_key"] for v in started["payload"]] == ["R1:A", "R1:B"]
    answer = {vid: {"request_id": "R1", "variant_id": vid, "variant_key": f"R1:{vid}",
                    "offer": {"variant_id": vid}} for vid in "AB"}
    one = gather_offer({"state": started["state"], "message": answer["A"]})
    assert one["payload"] is None and gather_offer({"state": one["state"], "message": answer["A"]})["payload"] is None
    done = gather_offer({"state": one["state"], "message": answer["B"]})
    assert done["payload"]["status"] == "complete" and done["state"]["finished_by"] == "R1:B"
    assert gather_offer({"state": done["state"], "message": answer["B"]})["payload"] == done["payload"]
    assert gather_offer({"state": done["state"], "message": answer["A"]})["payload"] is None
    assert offers_expired({"state": done["state"], "message": {}})["payload"] is None
    assert offer_request({"state": done["state"], "message": request})["payload"] is None
    expired = offers_expired({"state": one["state"], "message": {}})
    assert expired["payload"]["failed"] == [{"variant_id": "B", "reason": "no answer in time", "code": None}]
    assert gather_offer({"state": expired["state"], "message": answer["B"]})["payload"] is None
    assert offers_expired({"state": expired["state"], "message": {}})["payload"] == expired["payload"]
