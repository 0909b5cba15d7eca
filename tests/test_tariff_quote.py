"""The shipped tariff-quote flow (flows/tariff-quote.yaml) on the session's nats-server against the real Power
Sales simulator: cached, fresh, stale and unavailable answers, Power Sales slow, failing, down and back, and
a burst of lookups under the endpoint's concurrency cap."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

import nats
import pytest
import pytest_asyncio

from sandbox.powersales import PowerSalesSimulator
from tests.helpers import project_from, started_hub, wait_until

ROOT = Path(__file__).resolve().parents[1]
LOOKUP = {"households": 2, "consumption": 3500, "postcode": "10115", "country": "DE", "gas": False}


def shipped_flow(name: str, replace: dict[str, str]) -> str:
    """A flow file of flows/ with names made unique for one test (each replaced text must still be there)."""
    text = (ROOT / "flows" / f"{name}.yaml").read_text()
    for old, new in replace.items():
        assert old in text, f"flows/{name}.yaml no longer contains {old!r}"
        text = text.replace(old, new)
    return text


def endpoint_block(name: str, url: str, reset: str = "10s") -> str:
    """The powersales endpoint of config/sandbox.yaml, pointed at the simulator."""
    return f"""
      {name}:
        adapter: powersales
        description: Power Sales tariff engine (sandbox/powersales.py in the demo and tests).
        base_url: {url}
        timeout: 2s
        max_concurrency: 4
        circuit_breaker: {{failures: 5, window: 30s, reset: {reset}}}
    """


@pytest.mark.parametrize("country, given, canonical", [
    ("UK", "sw1a1aa", "SW1A 1AA"), ("gb", " EC1A  1BB ", "EC1A 1BB"), ("UK", "m11ae", "M1 1AE"),
    ("PT", "1000001", "1000-001"), ("pt", "1000 - 001", "1000-001"), ("DE", "10 115", "10115"), ("BE", "1000", "1000"),
])
def test_postcodes_are_spelt_the_way_power_sales_spells_them(country, given, canonical):
    """Upper-case and each country's own spacing, so spellings of one address share one cache key."""
    from transforms.powersales import quote_request

    normal = quote_request({**LOOKUP, "country": country, "postcode": given})
    assert normal["request"]["postcode"] == canonical and canonical.replace(" ", "_") in normal["cache_key"]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def sim():
    started = await PowerSalesSimulator(latency=0.02, capacity=4, hang_seconds=5).start()
    yield started
    await started.stop()


@pytest.fixture
async def nc(nats_url: str):
    conn = await nats.connect(nats_url)
    yield conn
    await conn.close()


class Website:
    """The website's side of tariff.quote, against a hub running the shipped flow for one test."""

    def __init__(self, nc: Any, subject: str, hub: Any, endpoint: str) -> None:
        self.nc, self.subject, self.hub, self.endpoint = nc, subject, hub, endpoint
        self.took = 0.0

    async def ask(self, **change: Any) -> dict[str, Any]:
        t0 = time.monotonic()
        reply = await self.nc.request(self.subject, json.dumps({**LOOKUP, **change}).encode(), timeout=5)
        self.took = time.monotonic() - t0
        return json.loads(reply.data)

    @property
    def breaker(self) -> Any:
        return self.hub.endpoint_breakers[self.endpoint]


@pytest_asyncio.fixture(loop_scope="session")
async def site(tmp_path: Path, nats_url: str, nc, sim, unique: str, request):
    sim.reset()
    reset = getattr(request, "param", "10s")
    endpoint = f"ps_{unique}"
    project = project_from(tmp_path, "endpoints:" + endpoint_block(endpoint, sim.url, reset), shipped_flow(
        "tariff-quote", {"name: tariff-quote": f"name: tariff-quote-{unique}",
                         "{request: tariff.quote}": f"{{request: {unique}.tariff.quote}}",
                         "endpoint: powersales": f"endpoint: {endpoint}"}))
    hub = await started_hub(project, nats_url)
    try:
        yield Website(nc, f"{unique}.tariff.quote", hub, endpoint)
    finally:
        sim.reset_faults()
        await sim.come_back()
        await hub.stop()


async def test_the_first_lookup_asks_power_sales_and_the_same_lookup_is_then_served_from_the_cache(site, sim):
    """A first lookup is quoted by Power Sales (cached: false); the same lookup spelt differently is answered
    from the cache with the same quote and no Power Sales request (cached: true)."""
    first = await site.ask()
    assert (first["stale"], first["cached"], first["cached_at"]) == (False, False, None)
    assert first["postcode"] == "10115" and first["consumption_kwh"] == 3500 and first["currency"] == "EUR"
    green = next(t for t in first["tariffs"] if t["code"] == "GREEN-12")
    assert green["estimate_per_month"] == round(green["estimate_per_year"] / 12, 2)
    again = await site.ask(postcode=" 10115 ", country="de", gas="no", households="2")
    assert again["cached"] is True and again["stale"] is False and again["quote_id"] == first["quote_id"]
    assert again["tariffs"] == first["tariffs"] and again["cached_at"]
    assert sim.requests["quote"] == 1
    uk = [await site.ask(postcode=p, country=c) for p, c in (("sw1a1aa", "UK"), ("SW1A 1AA", "gb"))]
    pt = [await site.ask(postcode=p, country="PT") for p in ("1000001", "1000 001")]
    assert [q["postcode"] for q in uk + pt] == ["SW1A 1AA", "SW1A 1AA", "1000-001", "1000-001"]
    assert [q["cached"] for q in uk + pt] == [False, True, False, True] and sim.requests["quote"] == 3


async def test_a_confirmation_re_quotes_fresh_and_refreshes_the_cache(site, sim):
    """confirm: true asks Power Sales even with a fresh quote cached and sees today's prices; later lookups
    get the confirmed quote from the cache."""
    cached = await site.ask()
    sim.set_price_factor("1.10")  # a price list change since the first quote
    confirmed = await site.ask(confirm=True)
    assert confirmed["confirmed"] is True and confirmed["cached"] is False and confirmed["stale"] is False
    assert confirmed["quote_id"] != cached["quote_id"] and sim.requests["quote"] == 2
    price = lambda q: q["tariffs"][0]["estimate_per_year"]  # noqa: E731
    assert price(confirmed) > price(cached)
    later = await site.ask()
    assert later["cached"] is True and later["quote_id"] == confirmed["quote_id"] and sim.requests["quote"] == 2


async def test_power_sales_slow_answers_the_last_quote_marked_stale_at_the_deadline(site, sim):
    """With Power Sales taking 3 s, a lookup that must ask it answers the cached quote with stale: true
    right after the 2 s deadline."""
    known = await site.ask()
    sim.set_latency(3)
    stale = await site.ask(confirm=True)
    assert stale["stale"] is True and stale["confirmed"] is False and stale["quote_id"] == known["quote_id"]
    assert 1.9 < site.took < 2.9 and stale["cached_at"]  # at the deadline, not at the 3 s answer


@pytest.mark.parametrize("fault", ["system_error", "http_500"])
async def test_power_sales_failing_answers_the_last_quote_marked_stale(site, sim, fault):
    """RC 900 in a 200 body or an HTML 500 page: the last quote with stale: true, quickly."""
    known = await site.ask()
    sim.fail_next(1, fault)
    stale = await site.ask(confirm=True)
    assert stale["stale"] is True and stale["quote_id"] == known["quote_id"] and site.took < 1.8  # before the deadline


@pytest.mark.parametrize("site", ["1s"], indirect=True)
async def test_with_the_breaker_open_lookups_are_stale_without_calling_and_fresh_once_it_closes(site, sim):
    """Five failures open the endpoint's circuit: then lookups get the last quote (or a CircuitOpen error when
    none is cached) without a Power Sales request; after the reset a probe succeeds and quotes are fresh."""
    known = await site.ask()
    sim.fail_next(5, "http_500")
    for _ in range(5):
        assert (await site.ask(confirm=True))["stale"] is True
    assert site.breaker.state == "open"
    asked = sim.requests["quote"]
    stale = await site.ask(confirm=True)
    assert stale["stale"] is True and stale["quote_id"] == known["quote_id"] and site.took < 1.8
    error = (await site.ask(postcode="80331"))["error"]
    assert error["class"] == "CircuitOpen" and error["transient"] is True and site.took < 1.8
    assert sim.requests["quote"] == asked

    async def half_open() -> bool:
        return site.breaker.state == "half_open"

    await wait_until(half_open, timeout=5)
    fresh = await site.ask(confirm=True)
    assert fresh["stale"] is False and fresh["quote_id"] != known["quote_id"] and site.breaker.state == "closed"


async def test_with_nothing_cached_and_power_sales_down_the_error_reply_comes_before_the_deadline(site, sim):
    """No quote ever cached: refused connections, a 3 s Power Sales or a hang give the structured transient
    error within the 2 s deadline, never a hang; a malformed lookup is a permanent error naming the field."""
    await sim.go_away()
    down = (await site.ask(postcode="20095"))["error"]
    assert down["class"] == "TargetUnavailable" and down["transient"] is True and site.took < 1.8
    await sim.come_back()
    sim.set_latency(3)
    slow = (await site.ask(postcode="20097"))["error"]
    assert slow["class"] == "TargetTimeout" and "no answer within 2s" in slow["message"] and site.took < 2.5
    sim.reset_faults()
    sim.hang_next(1, seconds=5)
    hung = (await site.ask(postcode="20099"))["error"]
    assert hung["class"] == "TargetTimeout" and site.took < 2.5
    wrong = (await site.ask(postcode="SW1A 1AA"))["error"]
    assert wrong == {"class": "ValidationFailed", "transient": False,
                     "message": "postcode: 'SW1A 1AA' is not a DE postcode (e.g. 10115)"}


async def test_when_power_sales_comes_back_answers_are_fresh_again(site, sim):
    """Power Sales gone: the known lookup is stale; after come_back a confirmation and a new lookup are fresh."""
    known = await site.ask()
    await sim.go_away()
    assert (await site.ask(confirm=True))["stale"] is True
    await sim.come_back()
    back = await site.ask(confirm=True)
    assert back["stale"] is False and back["cached"] is False and back["quote_id"] != known["quote_id"]
    new = await site.ask(postcode="01067")
    assert new["stale"] is False and new["cached"] is False


async def test_a_burst_of_200_lookups_keeps_power_sales_within_its_capacity_and_every_lookup_is_answered(site, sim):
    """200 lookups at once (half cached, half over ten new requests): Power Sales never has more than
    its 4 calls in flight and refuses none; the cached ones are answered while Power Sales still holds
    every call (never queued behind them); the lookups of one new request share one call, so once
    Power Sales answers (at 0.3 s) every lookup has a fresh quote."""
    warm = [{"postcode": f"{10115 + i:05d}"} for i in range(10)]
    cold = [{"postcode": f"{20115 + i:05d}"} for i in range(10)]
    await asyncio.gather(*(site.ask(**w) for w in warm))
    sim.reset()
    sim.set_latency(30)  # holds every call until released below
    asks = [("warm", w) for w in warm * 10] + [("cold", c) for c in cold * 10]
    random.Random(7).shuffle(asks)

    async def one(change: dict[str, Any]) -> dict[str, Any]:
        reply = await site.nc.request(site.subject, json.dumps({**LOOKUP, **change}).encode(), timeout=10)
        return json.loads(reply.data)

    lookups = [(kind, asyncio.create_task(one(change))) for kind, change in asks]
    warm_answers = await asyncio.gather(*(t for kind, t in lookups if kind == "warm"))
    assert sim.answered["quote"] == 0 and sim.in_flight <= 4  # Power Sales has answered nothing yet
    assert all(a.get("cached") is True and a["stale"] is False for a in warm_answers)
    sim.reset_faults()  # the held calls answer now, later ones after 0.3 s
    sim.set_latency(0.3)
    cold_answers = await asyncio.gather(*(t for kind, t in lookups if kind == "cold"))
    assert sim.max_in_flight <= 4 and sim.refused == 0
    fresh = [a for a in cold_answers if "error" not in a and not a["stale"]]
    # the ten lookups of one new request share its one Power Sales call: ten calls, every answer fresh
    assert sim.answered["quote"] == 10 and len(fresh) == 100, cold_answers[:3]
