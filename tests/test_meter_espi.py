"""Green Button ESPI feeds (transforms/meter_espi.py) and vendor 5's Data Custodian (sandbox/meters/vendor5.py):
feeds shaped as Data Custodians publish them, what is refused rather than guessed, property tests over
generated and damaged feeds, and the simulator's strictness (HTTP Basic only, Atom only, RFC 3339)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote_plus

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox.meters import ManualClock, Vendor5Platform
from sandbox.meters.vendor5 import FEED_PATH
from schemas.meter import MeterReading
from transforms.meter_espi import ESPI, espi_page, espi_request
from transforms.meter_pulls import Window, pull_format

UTC = timezone.utc
BASE = "https://dc.example/DataCustodian/espi/1_1/resource"
T0 = 1740783600  # 2025-02-28T23:00:00Z, midnight in Paris


def entry(path: str, resource: str, *, up: str | None = None, related: tuple[str, ...] = ()) -> str:
    links = f'<link rel="self" href="{BASE}{path}"/>' + (f'<link rel="up" href="{BASE}{up}"/>' if up else "")
    links += "".join(f'<link rel="related" href="{BASE}{r}"/>' for r in related)
    return f'<entry><id>urn:uuid:{abs(hash(path))}</id>{links}<title>x</title><content type="xml">{resource}</content></entry>'


def reading_type(rt: str, uom: int = 72, p10: int = 0, flow: int | None = 1, length: int | None = 900,
                 default_quality: int | None = None) -> str:
    fields = f"<uom>{uom}</uom><powerOfTenMultiplier>{p10}</powerOfTenMultiplier>"
    fields += "" if flow is None else f"<flowDirection>{flow}</flowDirection>"
    fields += "" if length is None else f"<intervalLength>{length}</intervalLength>"
    fields += "" if default_quality is None else f"<defaultQuality>{default_quality}</defaultQuality>"
    return entry(f"/ReadingType/{rt}", f'<ReadingType xmlns="http://naesb.org/espi">{fields}</ReadingType>',
                 up="/ReadingType")


def meter(up: str, mr: str, rt: str, kind: int = 0) -> str:
    return (entry(f"/UsagePoint/{up}", f'<UsagePoint xmlns="http://naesb.org/espi"><ServiceCategory><kind>{kind}'
                  "</kind></ServiceCategory></UsagePoint>", up="/UsagePoint")
            + entry(f"/UsagePoint/{up}/MeterReading/{mr}", '<MeterReading xmlns="http://naesb.org/espi"/>',
                    up=f"/UsagePoint/{up}/MeterReading", related=(f"/ReadingType/{rt}",)))


def block(up: str, mr: str, start: int, values: list[int], *, periods: bool = True,
          qualities: dict[int, int] | None = None, n: int = 1) -> str:
    rows = []
    for i, v in enumerate(values):
        q = f"<ReadingQuality><quality>{qualities[i]}</quality></ReadingQuality>" if qualities and i in qualities else ""
        tp = f"<timePeriod><duration>900</duration><start>{start + 900 * i}</start></timePeriod>" if periods else ""
        rows.append(f"<IntervalReading>{q}{tp}<value>{v}</value></IntervalReading>")
    body = (f'<IntervalBlock xmlns="http://naesb.org/espi"><interval><duration>{900 * len(values)}</duration>'
            f"<start>{start}</start></interval>{''.join(rows)}</IntervalBlock>")
    return entry(f"/UsagePoint/{up}/MeterReading/{mr}/IntervalBlock/{n}", body,
                 up=f"/UsagePoint/{up}/MeterReading/{mr}/IntervalBlock")


def feed(*entries: str, next_link: str | None = None) -> str:
    nxt = f'<link rel="next" href="{next_link}"/>' if next_link else ""
    return (f'<feed xmlns="http://www.w3.org/2005/Atom"><id>urn:uuid:1</id><title>t</title>'
            f'<updated>2025-04-02T01:00:00Z</updated><link rel="self" href="{BASE}/Batch/Subscription/5"/>{nxt}'
            f"{''.join(entries)}</feed>")


def test_an_electricity_and_a_gas_meter_become_canonical_readings():
    """Wh with timePeriods and m³ x 10^-3 without them (following each other at intervalLength), the
    ReadingQuality of a reading over the ReadingType's defaultQuality, UTC epoch times."""
    page = espi_page(feed(
        reading_type("E", default_quality=14), reading_type("G", uom=42, p10=-3, flow=None),
        meter("UP-1", "MR-1", "E"), block("UP-1", "MR-1", T0, [270, 210], qualities={1: 8}),
        meter("UP-2", "MR-2", "G", kind=1), block("UP-2", "MR-2", T0, [1500, 1250], periods=False),
        next_link=f"{BASE}/Batch/Subscription/5?start-index=9"))
    assert page["next"] == f"{BASE}/Batch/Subscription/5?start-index=9"
    first, second, gas1, gas2 = page["items"]
    assert first == {"meter_id": "MR-1", "site_id": "UP-1", "register": "1-0:1.8.0",
                     "interval_start": "2025-02-28T23:00:00Z", "read_at": "2025-02-28T23:15:00Z",
                     "value": 0.27, "unit": "kWh", "quality": "actual", "source": "vendor5/pull"}
    assert second["quality"] == "estimated" and second["value"] == 0.21
    assert (gas1["register"], gas1["unit"], gas1["value"]) == ("7-0:3.0.0", "m3", 1.5)
    assert (gas2["interval_start"], gas2["read_at"]) == ("2025-02-28T23:15:00Z", "2025-02-28T23:30:00Z")
    for item in page["items"]:
        MeterReading.model_validate(item)


def test_reverse_flow_is_the_export_register_and_the_vendor_name_is_the_configured_one():
    page = espi_page(feed(reading_type("X", flow=19, p10=3), meter("UP", "MR", "X"), block("UP", "MR", T0, [2])),
                     "acme")
    [item] = page["items"]
    assert (item["register"], item["value"], item["source"]) == ("1-0:2.8.0", 2.0, "acme/pull")  # 2 x 10^3 Wh


@pytest.mark.parametrize("text, why", [
    ('<?xml version="1.0"?><!DOCTYPE feed [<!ENTITY x "y">]><feed xmlns="http://www.w3.org/2005/Atom"/>', "DTD"),
    ("<rss/>", "not an Atom feed"),
    ("not xml at all", "well-formed"),
    (feed(meter("UP", "MR", "E"), block("UP", "MR", T0, [1])), "not in this page"),
    (feed(reading_type("E", uom=169), meter("UP", "MR", "E"), block("UP", "MR", T0, [1])), "uom 169"),
    (feed(reading_type("E"), meter("UP", "MR", "E"), block("UP", "MR", T0, [1], qualities={0: 99})), "quality"),
    (feed(reading_type("E"), meter("UP", "MR", "E"), block("UP", "MR", T0, [-5])), ">= 0"),
    (feed(reading_type("E", flow=3), meter("UP", "MR", "E"), block("UP", "MR", T0, [1])), "flowDirection"),
    (feed(reading_type("E", length=None), meter("UP", "MR", "E"), block("UP", "MR", T0, [1], periods=False)),
     "intervalLength"),
    (feed(reading_type("E"), meter("UP", "MR", "E"), block("UP", "MR", 10**15, [1])), "out of range"),
])
def test_a_feed_that_cannot_be_read_unambiguously_is_refused_naming_why(text, why):
    with pytest.raises(ValueError, match=why):
        espi_page(text)


def test_the_request_asks_for_about_page_size_readings_then_follows_next_links():
    start, end = datetime(2025, 2, 28, 23, tzinfo=UTC), datetime(2025, 3, 31, 22, tzinfo=UTC)
    w = Window(start, end, None, 500, None, 500)  # type: ignore[arg-type]
    assert espi_request(w) == {"published-min": "2025-02-28T23:00:00Z", "published-max": "2025-03-31T22:00:00Z",
                               "max-results": 6}
    assert espi_request(Window(start, end, None, 500, "http://x/next", 500)) == {"_url": "http://x/next"}  # type: ignore[arg-type]
    assert pull_format("meter_espi.ESPI") is ESPI


# --- properties -----------------------------------------------------------------------------------

QUALITIES = {0: "actual", 14: "actual", 17: "actual", 18: "actual", 19: "actual", 12: "forecast", 7: "estimated",
             8: "estimated", 9: "estimated", 10: "estimated", 11: "estimated", 13: "estimated", 15: "estimated",
             16: "estimated"}
METER = st.fixed_dictionaries({
    "gas": st.booleans(), "p10": st.integers(-3, 3), "periods": st.booleans(),
    "default": st.one_of(st.none(), st.sampled_from(sorted(QUALITIES))),
    "days": st.lists(st.lists(st.tuples(st.integers(0, 10**6), st.one_of(st.none(), st.sampled_from(sorted(QUALITIES)))),
                              min_size=1, max_size=8), min_size=1, max_size=3)})


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(meters=st.lists(METER, min_size=1, max_size=4))
def test_property_every_generated_reading_comes_back_exactly_once(meters):
    """Whatever mix of electricity and gas, multipliers, qualities and explicit or implied timePeriods a
    feed holds, the parser answers exactly its readings: value x 10^p10 in kWh or m³, in order."""
    entries, want = [], []
    for i, m in enumerate(meters):
        up, mr, rt = f"UP{i}", f"MR{i}", f"RT{i}"
        entries.append(reading_type(rt, uom=42 if m["gas"] else 72, p10=m["p10"], default_quality=m["default"]))
        entries.append(meter(up, mr, rt, kind=1 if m["gas"] else 0))
        start = T0
        for n, day in enumerate(m["days"], 1):
            entries.append(block(up, mr, start, [v for v, _ in day], periods=m["periods"], n=n,
                                 qualities={k: q for k, (_, q) in enumerate(day) if q is not None}))
            for k, (v, q) in enumerate(day):
                scale = 10 ** m["p10"] / (1 if m["gas"] else 1000)
                code = q if q is not None else m["default"]
                want.append((mr, start + 900 * k, round(v * scale, 9), QUALITIES.get(code, "actual")))
            start += 900 * len(day)
    got = [(r["meter_id"], int(datetime.fromisoformat(r["interval_start"].replace("Z", "+00:00")).timestamp()),
            round(r["value"], 9), r["quality"]) for r in espi_page(feed(*entries))["items"]]
    assert got == want


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(cut=st.integers(0, 2000), insert=st.text(max_size=12), drop=st.integers(0, 40))
def test_property_a_damaged_feed_is_read_or_refused_never_a_crash(cut, insert, drop):
    """Bytes cut, inserted or dropped anywhere in a valid feed: readings, or ValueError - never another
    exception that would read as a bug in the hub."""
    text = feed(reading_type("E", default_quality=14), meter("UP", "MR", "E"),
                block("UP", "MR", T0, [1, 2, 3], qualities={1: 8}))
    at = cut % len(text)
    damaged = text[:at] + insert + text[at + drop:]
    try:
        result = espi_page(damaged)
    except ValueError:
        return
    for item in result["items"]:
        MeterReading.model_validate(item)


# --- vendor 5's Data Custodian: strict where the standards are -------------------------------------

NOW = datetime(2025, 4, 2, 1, 0, tzinfo=UTC)
QUERY = {"published-min": "2025-03-30T22:00:00Z", "published-max": "2025-03-31T22:00:00Z", "max-results": "4"}


async def token(http: aiohttp.ClientSession, sim: Vendor5Platform, **how: Any) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{sim.url}/oauth/token", **how) as answer:
        return answer.status, await answer.json()


async def test_vendor5_takes_only_http_basic_client_authentication():
    async with Vendor5Platform(3, clock=ManualClock(NOW)) as sim, aiohttp.ClientSession() as http:
        grant = {"grant_type": "client_credentials"}
        body = await token(http, sim, data={**grant, "client_id": sim.client_id, "client_secret": sim.client_secret})
        raw = await token(http, sim, data=grant, headers={  # not form-urlencoded first: refused
            "Authorization": aiohttp.encode_basic_auth(sim.client_id, sim.client_secret)})
        basic = {"Authorization": aiohttp.encode_basic_auth(quote_plus(sim.client_id), quote_plus(sim.client_secret))}
        both = await token(http, sim, data={**grant, "client_secret": sim.client_secret}, headers=basic)
        good = await token(http, sim, data=grant, headers=basic)
    assert body[0] == raw[0] == both[0] == 401 and body[1]["error"] == "invalid_client"
    assert good[0] == 200 and good[1]["token_type"] == "Bearer" and good[1]["resourceURI"].endswith("/Subscription/5")
    assert len(sim.refused_clients) == 3 and sim.tokens_issued == 1


async def test_vendor5_answers_atom_only_and_refuses_what_espi_does_not_know():
    async with Vendor5Platform(3, clock=ManualClock(NOW)) as sim, aiohttp.ClientSession() as http:
        basic = {"Authorization": aiohttp.encode_basic_auth(quote_plus(sim.client_id), quote_plus(sim.client_secret))}
        _, tok = await token(http, sim, data={"grant_type": "client_credentials"}, headers=basic)
        bearer = {"Authorization": f"Bearer {tok['access_token']}"}

        async def get(query: dict[str, str], accept: str = "application/atom+xml") -> tuple[int, str]:
            async with http.get(f"{sim.url}{FEED_PATH}", params=query, headers={**bearer, "Accept": accept}) as a:
                return a.status, await a.text()

        assert (await get(QUERY, accept="application/json"))[0] == 406
        assert (await get({**QUERY, "from": "x"}))[0] == 400
        assert (await get({**QUERY, "published-min": "2025-03-30"}))[0] == 400  # a date, not an RFC 3339 date-time
        assert (await get({**QUERY, "start-index": "3"}))[0] == 400  # inside a usage point's entries
        status, text = await get(QUERY)
    assert status == 200
    page = espi_page(text)
    assert len(page["items"]) == 96 and page["next"] is not None  # 31 March: one meter fits 4 entries
    assert {r["site_id"] for r in page["items"]} == {"FR5-UP-000000"}
