"""The Power Sales simulator (sandbox/powersales.py) over real HTTP: its poor wire format and its faults."""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone

import aiohttp
import pytest
import pytest_asyncio

from sandbox.powersales import PowerSalesSimulator

QUOTE = {"HH_CNT": "2", "CONS_KWH_YR": "3500", "PLZ": "10115", "CTRY": "DE", "GAS_YN": "N"}
OFFER = {"KUNNR": "KC123456", "VAR_ID": "A", "TERM_MM": "24", "GREEN_SHR": "50", "DISC_PCT": "2,5",
         "CONS_KWH_YR": "120000", "CTRY": "DE"}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def sim():
    started = await PowerSalesSimulator(latency=0.05, capacity=4, hang_seconds=5).start()
    yield started
    await started.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def http(sim):
    sim.reset()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session
    sim.reset()


async def post(http: aiohttp.ClientSession, url: str, form: dict[str, str], **kw) -> tuple[int, str, bytes]:
    async with http.post(url, data=form, **kw) as resp:
        return resp.status, resp.content_type, await resp.read()


def parse(raw: bytes) -> ET.Element:
    root = ET.fromstring(raw)  # honours the ISO-8859-1 declaration
    assert root.tag == "PS_RESPONSE"
    return root


def tariffs(root: ET.Element) -> dict[str, tuple[str, str, str]]:
    return {t.findtext("TRF_CD"): (t.findtext("BASE_MON"), t.findtext("WORK_CT_KWH"), t.findtext("EST_YR"))
            for t in root.iter("TARIF")}


async def test_quote_prices_are_deterministic_from_the_inputs_with_a_fresh_quote_id(sim, http):
    """The same inputs give the same tariffs and prices, each quote with its own id and a future valid-until."""
    status, ctype, raw = await post(http, sim.quote_url, QUOTE)
    assert (status, ctype) == (200, "text/xml") and raw.startswith(b'<?xml version="1.0" encoding="ISO-8859-1"?>')
    first, second = parse(raw), parse((await post(http, sim.quote_url, QUOTE))[2])
    assert first.findtext("RC") == "0" and first.findtext("CUR") == "EUR"
    assert tariffs(first) == tariffs(second) and set(tariffs(first)) == {"GREEN-12", "FLEX-24", "FIX-36"}
    assert first.findtext("QUOTE_ID") != second.findtext("QUOTE_ID")
    until = datetime.strptime(first.findtext("VALID_UNTIL"), "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)
    assert timedelta(minutes=14) < until - datetime.now(timezone.utc) <= timedelta(minutes=15)
    base, work, _ = tariffs(first)["GREEN-12"]
    assert "," in base and "," in work  # decimal commas
    assert next(t.findtext("TRF_NM") for t in first.iter("TARIF")) == "Ökostrom 12"  # Latin-1 on the wire
    other = parse((await post(http, sim.quote_url, {**QUOTE, "PLZ": "80331"}))[2])
    assert tariffs(other) != tariffs(first)  # the region moves prices


async def test_gas_and_high_consumption_add_tariffs_and_households_estimate_consumption(sim, http):
    """GAS_YN=J adds gas and the bundle, 4000 kWh unlocks the night tariff, a blank consumption comes from HH_CNT."""
    both = parse((await post(http, sim.quote_url, {**QUOTE, "GAS_YN": "J", "CONS_KWH_YR": "4500"}))[2])
    assert set(tariffs(both)) == {"GREEN-12", "FLEX-24", "FIX-36", "NIGHT-12", "GAS-12", "DUO-24"}
    estimated = parse((await post(http, sim.quote_url, {**QUOTE, "CONS_KWH_YR": "", "HH_CNT": "3"}))[2])
    assert estimated.findtext("CONS_KWH_YR") == "4000"
    uk = parse((await post(http, sim.quote_url, {**QUOTE, "CTRY": "UK", "PLZ": "SW1A 1AA"}))[2])
    assert uk.findtext("RC") == "0" and uk.findtext("CUR") == "GBP"


@pytest.mark.parametrize("change, rc", [
    ({"PLZ": "99999"}, "101"), ({"CTRY": "XX"}, "102"), ({"PLZ": "10 115"}, "103"), ({"HH_CNT": ""}, "103"),
    ({"HH_CNT": "2.5"}, "103"), ({"GAS_YN": "Y"}, "103"), ({"CTRY": "UK", "PLZ": "sw1a 1aa"}, "103"),
])
async def test_quote_business_errors_are_return_codes_inside_a_200(sim, http, change, rc):
    """An unknown postcode, country or a malformed field answers HTTP 200 with RC/RC_TXT and no tariffs."""
    status, _, raw = await post(http, sim.quote_url, {**QUOTE, **change})
    root = parse(raw)
    assert status == 200 and root.findtext("RC") == rc and root.findtext("RC_TXT") and not tariffs(root)


async def test_key_customer_offer_answers_one_offer_for_the_variant(sim, http):
    """A valid variant gives one offer echoing the variant, priced below the list price for the discount."""
    root = parse((await post(http, sim.offer_url, OFFER))[2])
    offer = root.find("OFFER")
    assert root.findtext("RC") == "0" and offer is not None and offer.findtext("OFFER_ID").startswith("PSO")
    assert [offer.findtext(k) for k in ("KUNNR", "VAR_ID", "TERM_MM", "GREEN_SHR", "DISC_PCT")] == \
        ["KC123456", "A", "24", "50", "2,50"]
    cheaper = parse((await post(http, sim.offer_url, {**OFFER, "DISC_PCT": "8"}))[2]).find("OFFER")
    price = lambda o: float(o.findtext("WORK_CT_KWH").replace(",", "."))  # noqa: E731
    assert price(cheaper) < price(offer)


@pytest.mark.parametrize("change, rc", [
    ({"KUNNR": "KC900001"}, "201"), ({"DISC_PCT": "8,5"}, "202"), ({"TERM_MM": "18"}, "202"),
    ({"KUNNR": "12345"}, "103"), ({"GREEN_SHR": "101"}, "103"), ({"DISC_PCT": "viel"}, "103"),
])
async def test_key_customer_offer_refusals_are_return_codes(sim, http, change, rc):
    """An unknown key customer, a variant over the term's discount cap or a bad field answer an RC, no offer."""
    root = parse((await post(http, sim.offer_url, {**OFFER, **change}))[2])
    assert root.findtext("RC") == rc and root.find("OFFER") is None


async def test_a_price_change_shows_in_fresh_quotes(sim, http):
    """After `set_price_factor` the same request is quoted at the new prices (cached answers would be stale)."""
    before = tariffs(parse((await post(http, sim.quote_url, QUOTE))[2]))
    sim.set_price_factor("1.10")
    after = tariffs(parse((await post(http, sim.quote_url, QUOTE))[2]))
    assert after != before and after.keys() == before.keys()


async def test_latency_is_set_at_run_time_per_operation(sim, http):
    """A latency set for offers slows offers only; quotes keep the constructor's latency."""
    sim.set_latency(1.0, "offer")
    t0 = time.monotonic()
    await post(http, sim.offer_url, OFFER)
    offer_took = time.monotonic() - t0
    t0 = time.monotonic()
    await post(http, sim.quote_url, QUOTE)
    assert offer_took >= 1.0 and time.monotonic() - t0 < 0.8


async def test_requests_beyond_capacity_get_the_balancers_html_503(sim, http):
    """With capacity 2, five concurrent requests give two answers and three HTML 503s; the counters show it."""
    sim.set_capacity(2)
    sim.set_latency(0.5)
    results = await asyncio.gather(*(post(http, sim.quote_url, QUOTE) for _ in range(5)))
    assert sorted((s, c) for s, c, _ in results) == [(200, "text/xml")] * 2 + [(503, "text/html")] * 3
    assert (sim.requests["quote"], sim.answered["quote"], sim.refused) == (5, 2, 3)
    assert sim.max_in_flight >= 3  # the cap was exceeded (refused requests count while they are in flight)


async def test_a_hanging_request_holds_its_slot_until_the_deadline_then_answers_504(sim, http):
    """`hang_next` makes the next request silent: an impatient caller times out, the slot frees with a 504 later."""
    sim.hang_next(1, seconds=0.5)
    with pytest.raises(asyncio.TimeoutError):
        await post(http, sim.quote_url, QUOTE, timeout=aiohttp.ClientTimeout(total=0.15))
    assert sim.in_flight == 1  # still hanging on the server side
    status, _, raw = await post(http, sim.quote_url, QUOTE)
    assert status == 200 and parse(raw).findtext("RC") == "0"  # the next one is served normally
    await sim.wait_for(lambda s: s.in_flight == 0, timeout=3)
    sim.hang_next(1, seconds=0.2)
    t0 = time.monotonic()
    status, ctype, raw = await post(http, sim.quote_url, QUOTE)
    assert (status, ctype) == (504, "text/html") and b"Gateway Time-out" in raw and time.monotonic() - t0 >= 0.2


async def test_reset_faults_releases_hanging_requests_at_once(sim, http):
    """A request hanging for the full deadline answers its 504 as soon as the faults are reset."""
    sim.hang_next(1)  # hang_seconds=5
    pending = asyncio.ensure_future(post(http, sim.quote_url, QUOTE))
    await sim.wait_for(lambda s: s.in_flight == 1, timeout=3)
    t0 = time.monotonic()
    sim.reset_faults()
    status, _, _ = await pending
    assert status == 504 and time.monotonic() - t0 < 1


async def test_injected_system_error_and_http_500(sim, http):
    """`fail_next` answers RC 900 in a 200 body or an HTML 500 once each, then Power Sales is healthy again."""
    sim.fail_next(1, "system_error")
    sim.fail_next(1, "http_500")
    status, _, raw = await post(http, sim.quote_url, QUOTE)
    assert status == 200 and parse(raw).findtext("RC") == "900"
    status, ctype, _ = await post(http, sim.offer_url, OFFER)
    assert (status, ctype) == (500, "text/html")
    status, _, raw = await post(http, sim.quote_url, QUOTE)
    assert status == 200 and parse(raw).findtext("RC") == "0"
    with pytest.raises(ValueError):
        sim.fail_next(1, "meteor")


async def test_go_away_refuses_connections_and_come_back_serves_on_the_same_port(sim, http):
    """While gone, callers get connection refused; after come_back the same URL answers again."""
    port = sim.port
    await sim.go_away()
    with pytest.raises(aiohttp.ClientConnectorError):
        await post(http, sim.quote_url, QUOTE)
    await sim.come_back()
    status, _, _ = await post(http, sim.quote_url, QUOTE)
    assert status == 200 and sim.port == port


async def test_only_form_posts_are_understood(sim, http):
    """A JSON body is a plain-text 400 and a GET is a 405: the API is form POST or nothing."""
    async with http.post(sim.quote_url, json=QUOTE) as resp:
        assert resp.status == 400 and "x-www-form-urlencoded" in await resp.text()
    async with http.get(sim.quote_url) as resp:
        assert resp.status == 405
    assert sim.answered["quote"] == 0 and sim.requests["quote"] == 1  # the 405 never reaches the servlet
