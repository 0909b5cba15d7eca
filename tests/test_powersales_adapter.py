"""The `powersales` adapter against the real Power Sales simulator (and a recording HTTP server for the
exact wire): form fields out, clean JSON back, every failure on the one taxonomy."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone

import pytest
import pytest_asyncio
from aiohttp import web

from engine.adapter import CallContext, Services
from adapters.powersales import PowerSalesAdapter, PowerSalesConfig, comma, iso_utc, number
from engine.errors import (BusinessError, RoutingError, TargetRejected, TargetServerError, TargetTimeout,
                           TargetUnavailable, Throttled, UnparseablePayload, ValidationFailed)
from sandbox.powersales import PowerSalesSimulator

QUOTE = {"households": 2, "consumption_kwh": 3500, "postcode": "10115", "country": "DE", "gas": False}
OFFER = {"customer_id": "KC123456", "variant_id": "A", "term_months": 24, "green_share": 50, "discount_pct": 2.5,
         "consumption_kwh": 120000, "country": "DE"}
ENDPOINT_BLOCK = {  # the block config/sandbox.yaml gets, as YAML gives it to the model
    "adapter": "powersales", "description": "Power Sales tariff engine (sandbox/powersales.py in the demo and tests).",
    "base_url": "http://127.0.0.1:18110", "timeout": "2s", "max_concurrency": 4,
    "circuit_breaker": {"failures": 5, "window": "30s", "reset": "10s"},
}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def sim():
    started = await PowerSalesSimulator(latency=0.02, capacity=4, hang_seconds=5).start()
    yield started
    await started.stop()


class Recorder:
    """A real HTTP server that records each form POST and answers what the test sets."""

    def __init__(self) -> None:
        self.forms: list[dict[str, str]] = []
        self.content_types: list[str] = []
        self.status, self.body, self.ctype = 200, b"", "text/xml"

    async def handle(self, request: web.Request) -> web.Response:
        self.content_types.append(request.content_type)
        self.forms.append({k: str(v) for k, v in (await request.post()).items()})
        return web.Response(status=self.status, body=self.body, content_type=self.ctype)

    def answer(self, xml: str, status: int = 200, ctype: str = "text/xml") -> None:
        self.status, self.ctype = status, ctype
        self.body = xml.encode("latin-1")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def recorder():
    rec = Recorder()
    app = web.Application()
    app.router.add_post("/PSWeb/servlet/{name}", rec.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield rec
    await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="session")
async def make():
    started: list[PowerSalesAdapter] = []

    async def build(base_url: str, **extra) -> PowerSalesAdapter:
        config = PowerSalesConfig.model_validate({**ENDPOINT_BLOCK, "base_url": base_url, **extra})
        adapter = PowerSalesAdapter("powersales", config, Services())
        await adapter.start()
        started.append(adapter)
        return adapter

    yield build
    for adapter in started:
        await adapter.close()


@pytest.fixture(autouse=True)
def _clean(sim):
    sim.reset()
    yield
    sim.reset()


def ctx(timeout: float = 2.0) -> CallContext:
    return CallContext({"ce-id": "m-1"}, "m-1", "corr-1", timeout)


def test_the_config_block_is_accepted_and_unknown_keys_are_refused():
    """The endpoint block of config/sandbox.yaml validates as given; a misspelt key is an error."""
    config = PowerSalesConfig.model_validate(ENDPOINT_BLOCK)
    assert (config.timeout, config.max_concurrency, config.circuit_breaker.reset) == (2.0, 4, 10.0)
    with pytest.raises(ValueError, match="tiemout"):
        PowerSalesConfig.model_validate({**ENDPOINT_BLOCK, "tiemout": "2s"})


async def test_quote_goes_out_as_power_sales_form_fields(recorder, make):
    """A clean JSON quote request is posted form-encoded with HH_CNT, CONS_KWH_YR, PLZ, CTRY and GAS_YN=J/N."""
    recorder.answer('<?xml version="1.0" encoding="ISO-8859-1"?><PS_RESPONSE><RC>102</RC><RC_TXT>x</RC_TXT>'
                    '</PS_RESPONSE>')
    adapter = await make(recorder.url)
    for payload in ({**QUOTE, "gas": True}, {**QUOTE, "consumption_kwh": None, "postcode": "SW1A 1AA", "country": "UK"}):
        with pytest.raises(BusinessError):
            await adapter.call("quote", payload, ctx())
    assert recorder.content_types == ["application/x-www-form-urlencoded"] * 2
    assert recorder.forms == [
        {"HH_CNT": "2", "CONS_KWH_YR": "3500", "PLZ": "10115", "CTRY": "DE", "GAS_YN": "J"},
        {"HH_CNT": "2", "CONS_KWH_YR": "", "PLZ": "SW1A 1AA", "CTRY": "UK", "GAS_YN": "N"},
    ]
    with pytest.raises(BusinessError):
        await adapter.call("offer", {**OFFER, "discount_pct": 8, "postcode": "10115"}, ctx())
    assert recorder.forms[-1] == {"KUNNR": "KC123456", "VAR_ID": "A", "TERM_MM": "24", "GREEN_SHR": "50",
                                  "DISC_PCT": "8", "CONS_KWH_YR": "120000", "CTRY": "DE", "PLZ": "10115"}


async def test_a_quote_comes_back_as_json_with_numbers_and_iso_utc_times(sim, make):
    """RC 0: tariffs with float prices, Latin-1 names decoded, VALID_UNTIL as ISO UTC, the consumption used."""
    adapter = await make(sim.url)
    answer = await adapter.call("quote", {**QUOTE, "gas": True, "consumption_kwh": 4500}, ctx())
    assert answer["quote_id"].startswith("PSQ") and answer["currency"] == "EUR" and answer["consumption_kwh"] == 4500
    until = datetime.fromisoformat(answer["valid_until"].replace("Z", "+00:00"))
    assert answer["valid_until"].endswith("Z") and timedelta(minutes=14) < until - datetime.now(timezone.utc)
    by_code = {t["code"]: t for t in answer["tariffs"]}
    assert set(by_code) == {"GREEN-12", "FLEX-24", "FIX-36", "NIGHT-12", "GAS-12", "DUO-24"}
    green = by_code["GREEN-12"]
    assert green["name"] == "Ökostrom 12" and green["energy"] == "electricity" and green["green_pct"] == 100
    assert isinstance(green["base_per_month"], float) and isinstance(green["estimate_per_year"], float)
    assert green["estimate_per_year"] == pytest.approx(green["base_per_month"] * 12 + green["work_ct_per_kwh"] * 45,
                                                       abs=1)  # from unrounded rates
    assert (by_code["GAS-12"]["energy"], by_code["DUO-24"]["energy"]) == ("gas", "electricity+gas")


async def test_an_offer_sends_decimal_commas_and_reads_the_offer_back(sim, make):
    """A 2.5 % discount goes out as DISC_PCT=2,5; the offer comes back with the variant echoed and float prices."""
    adapter = await make(sim.url)
    offer = await adapter.call("offer", OFFER, ctx())
    assert offer["offer_id"].startswith("PSO") and offer["valid_until"].endswith("Z")
    assert {k: offer[k] for k in ("customer_id", "variant_id", "term_months", "green_share", "discount_pct")} == \
        {"customer_id": "KC123456", "variant_id": "A", "term_months": 24, "green_share": 50, "discount_pct": 2.5}
    assert offer["currency"] == "EUR" and offer["estimate_per_year"] > offer["base_per_month"] * 12


@pytest.mark.parametrize("operation, change, code", [
    ("quote", {"postcode": "99999"}, 101), ("quote", {"country": "XX"}, 102), ("quote", {"postcode": "10 115"}, 103),
    ("offer", {"customer_id": "KC900001"}, 201), ("offer", {"term_months": 18}, 202),
    ("offer", {"discount_pct": 8.5}, 202),
])
async def test_business_return_codes_are_permanent_business_errors(sim, make, operation, change, code):
    """RC 101/102/103/201/202 in a 200 body raise BusinessError with Power Sales' code and text."""
    adapter = await make(sim.url)
    with pytest.raises(BusinessError) as caught:
        await adapter.call(operation, {**(QUOTE if operation == "quote" else OFFER), **change}, ctx())
    err = caught.value
    assert err.code == code and err.text and not err.transient and f"RC {code}: {err.text}" in str(err)


async def test_system_error_and_http_500_are_transient_server_errors(sim, make):
    """RC 900 inside a 200 and an HTML 500 page both raise TargetServerError (transient)."""
    adapter = await make(sim.url)
    sim.fail_next(1, "system_error")
    sim.fail_next(1, "http_500")
    with pytest.raises(TargetServerError, match="RC 900: Systemfehler"):
        await adapter.call("quote", QUOTE, ctx())
    with pytest.raises(TargetServerError, match="HTTP 500.*ORA-01555"):
        await adapter.call("offer", OFFER, ctx())
    assert (await adapter.call("quote", QUOTE, ctx()))["tariffs"]


async def test_the_balancers_html_503_is_throttled(sim, make):
    """Over Power Sales' capacity its balancer answers an HTML 503: Throttled, with the page's gist."""
    adapter = await make(sim.url, max_concurrency=None)
    sim.set_capacity(0)
    with pytest.raises(Throttled, match="HTTP 503.*Service Unavailable"):
        await adapter.call("quote", QUOTE, ctx())
    assert sim.refused == 1


async def test_a_hang_ends_in_a_timeout_and_keeps_its_slot_until_power_sales_lets_go(sim, make):
    """A hanging request raises TargetTimeout at the caller's deadline; its slot stays taken (no 503 for the next
    caller) until Power Sales answers it, then calls go through again."""
    adapter = await make(sim.url, max_concurrency=1)
    sim.hang_next(1, seconds=5)
    t0 = time.monotonic()
    with pytest.raises(TargetTimeout, match="no answer within 0.4s"):
        await adapter.call("quote", QUOTE, ctx(0.4))
    assert 0.35 < time.monotonic() - t0 < 3 and adapter.busy == 1 and sim.in_flight == 1
    with pytest.raises(Throttled, match="slots busy"):
        await adapter.call("quote", QUOTE, ctx(0.3))
    assert sim.requests["quote"] == 1 and sim.refused == 0
    sim.reset_faults()  # the hang ends with its 504: the slot is free again
    await sim.wait_for(lambda s: s.in_flight == 0, timeout=3)
    assert (await adapter.call("quote", QUOTE, ctx()))["tariffs"] and adapter.busy == 0


async def test_a_call_with_too_little_time_left_is_not_started(sim, make):
    """Less than min_time_left of the deadline: Throttled at once, and Power Sales never sees the request."""
    adapter = await make(sim.url)
    with pytest.raises(Throttled, match="not started"):
        await adapter.call("quote", QUOTE, ctx(0.1))
    assert sim.requests["quote"] == 0


async def test_connection_refused_is_target_unavailable_and_come_back_answers(sim, make):
    """While Power Sales is gone the call raises TargetUnavailable quickly; after come_back it answers."""
    adapter = await make(sim.url)
    assert await adapter.call("quote", QUOTE, ctx())  # a pooled connection exists
    await sim.go_away()
    try:
        t0 = time.monotonic()
        with pytest.raises(TargetUnavailable):
            await adapter.call("quote", QUOTE, ctx())
        assert time.monotonic() - t0 < 1.8  # refused, not timed out at the 2 s deadline
    finally:
        await sim.come_back()
    assert (await adapter.call("quote", QUOTE, ctx()))["tariffs"]


@pytest.mark.parametrize("payload, field", [
    ({**QUOTE, "consumption": 3500}, "consumption"), ({**QUOTE, "households": 0}, "households"),
    ({k: v for k, v in QUOTE.items() if k != "gas"}, "gas"), ("DE 10115", "payload"),
])
async def test_a_payload_the_adapter_cannot_write_is_refused_before_any_request(sim, make, payload, field):
    """Unknown, missing or out-of-range fields raise ValidationFailed naming the field; nothing is sent."""
    adapter = await make(sim.url)
    with pytest.raises(ValidationFailed, match=field):
        await adapter.call("quote", payload, ctx())
    with pytest.raises(RoutingError, match="quote or offer"):
        await adapter.call("tariffs", QUOTE, ctx())
    assert sim.requests["quote"] == 0


@pytest.mark.parametrize("status, ctype, body, error, text", [
    (200, "text/html", "<html><body>Wartungsarbeiten</body></html>", TargetServerError, "not a Power Sales response"),
    (200, "text/xml", "", TargetServerError, "empty body"),
    (200, "text/xml", "<PS_RESPONSE><RC>0</RC><RC_TXT>OK</RC_TXT></PS_RESPONSE>", UnparseablePayload, "QUOTE_ID"),
    (200, "text/xml", "<PS_RESPONSE><RC>104</RC><RC_TXT>Tarif gesperrt</RC_TXT></PS_RESPONSE>", BusinessError,
     "RC 104: Tarif gesperrt"),
    (200, "text/xml", "<PS_RESPONSE><RC>950</RC><RC_TXT>DB gesperrt</RC_TXT></PS_RESPONSE>", TargetServerError,
     "RC 950"),
    (400, "text/plain", "ERR 400 FORMAT", TargetRejected, "HTTP 400"),
    (504, "text/html", "<h1>504 Gateway Time-out</h1>", TargetServerError, "HTTP 504"),
])
async def test_odd_answers_land_on_the_taxonomy(recorder, make, status, ctype, body, error, text):
    """A gateway page, an empty or field-less body, unknown codes and other statuses each map to one class."""
    recorder.answer(body, status, ctype)
    adapter = await make(recorder.url)
    with pytest.raises(error, match=text):
        await adapter.call("quote", QUOTE, ctx())


async def test_thousands_separators_and_missing_tags_in_tariffs(recorder, make):
    """'1.234,56' reads as 1234.56; an answer without tariffs is an empty list, not an error."""
    recorder.answer('<?xml version="1.0" encoding="ISO-8859-1"?><PS_RESPONSE><RC>0</RC><RC_TXT>OK</RC_TXT>'
                    '<QUOTE_ID>PSQ1</QUOTE_ID><VALID_UNTIL>20300101120000</VALID_UNTIL><CUR>EUR</CUR>'
                    '<CONS_KWH_YR>9000</CONS_KWH_YR><TARIF_LIST><TARIF><TRF_CD>BIG</TRF_CD><TRF_NM>Groß Ä</TRF_NM>'
                    '<SPARTE>E</SPARTE><BASE_MON>9,90</BASE_MON><WORK_CT_KWH>30,00</WORK_CT_KWH>'
                    '<EST_YR>1.234,56</EST_YR><TERM_MM>12</TERM_MM><GREEN_PCT>0</GREEN_PCT></TARIF></TARIF_LIST>'
                    '</PS_RESPONSE>')
    adapter = await make(recorder.url)
    answer = await adapter.call("quote", QUOTE, ctx())
    assert answer["valid_until"] == "2030-01-01T12:00:00Z"
    assert answer["tariffs"] == [{"code": "BIG", "name": "Groß Ä", "energy": "electricity", "base_per_month": 9.9,
                                  "work_ct_per_kwh": 30.0, "estimate_per_year": 1234.56, "term_months": 12,
                                  "green_pct": 0}]


def test_number_formats_both_ways():
    """Decimal commas out and in; ISO UTC from Power Sales' timestamps."""
    assert [comma(v) for v in (2.5, 8, 10, 0)] == ["2,5", "8", "10", "0"]
    assert [number(v) for v in ("11,90", "1.234,56", "7", "0,5")] == [11.9, 1234.56, 7.0, 0.5]
    assert iso_utc("20260131235959") == "2026-01-31T23:59:59Z"
    with pytest.raises(ValueError):
        number("viel")


async def test_concurrent_calls_never_exceed_max_concurrency(sim, make):
    """Twelve calls at once through an adapter capped at 4 meet Power Sales' capacity 4: no 503, all answered."""
    adapter = await make(sim.url)
    sim.set_latency(0.1)
    answers = await asyncio.gather(*(adapter.call("quote", QUOTE, ctx(3)) for _ in range(12)))
    assert len(answers) == 12 and sim.max_in_flight <= 4 and sim.refused == 0
