"""The four smart-meter vendor simulators (sandbox/meters) over real loopback HTTP, read with the
vendor transforms through sandbox/meters/reference_pull.py; vendor 3's webhook sender against a real sink."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from sandbox.http_sink import HttpSink
from sandbox.meters import (PLATFORMS, ManualClock, Vendor1Platform, Vendor2Platform, Vendor3Platform, Vendor4Platform,
                            WebhookSender)
from sandbox.meters.reference_pull import bearer, first_request, pull, v4_headers
from schemas.meter import MeterReading
from transforms import meter_vendors as mv

UTC = timezone.utc
NOW = datetime(2025, 4, 2, 9, 30, tzinfo=UTC)
METERS = 9  # meters 1 and 6 are gas, meter 7 a business site


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def platform(cls: type, **options: Any) -> Any:
    return await cls(METERS, clock=ManualClock(NOW), **options).start()


def started(cls: type) -> Any:
    """A fixture: a fresh platform of `cls` per test, on a free port, its clock at NOW."""
    async def fixture() -> AsyncIterator[Any]:
        async with await platform(cls) as sim:
            yield sim
    return pytest_asyncio.fixture(fixture)


v2, v3, v4 = started(Vendor2Platform), started(Vendor3Platform), started(Vendor4Platform)


def march(sim: Any) -> tuple[datetime, datetime]:
    """March 2025 in the vendor's own time zone: its days start at local midnight."""
    return datetime(2025, 3, 1, tzinfo=sim.tz), datetime(2025, 4, 1, tzinfo=sim.tz)


def key(reading: dict[str, Any]) -> tuple[str, str, str]:
    return reading["meter_id"], reading["register"], reading["read_at"]


async def get(http: aiohttp.ClientSession, url: str, headers: dict[str, str], params: Any = None) -> tuple[int, Any]:
    async with http.get(url, params=params, headers=headers) as answer:
        return answer.status, await answer.json()


# --- pull end to end -----------------------------------------------------------------------------

@pytest.mark.parametrize("vendor", list(PLATFORMS))
async def test_a_monthly_pull_pages_through_every_reading_once(http: aiohttp.ClientSession, vendor: str) -> None:
    """A month pulled page by page yields every meter's every day once, valid for today's MeterReading model."""
    async with await platform(PLATFORMS[vendor]) as sim:
        readings = await pull(http, sim, *march(sim), size=4)
        expected = sim.source.count(*march(sim))
    per_meter = 31 * 96 - 4 if vendor == "vendor5" else 31  # vendor 5: quarter hours; 30 March lost one hour
    assert len(readings) == expected == METERS * per_meter
    assert len({key(r) for r in readings}) == expected
    assert {r["source"] for r in readings} == {f"{vendor}/pull"}
    assert {r["unit"] for r in readings} == {"kWh", "m3"}
    for reading in readings:
        MeterReading.model_validate(reading)
    assert sim.requests["readings"] == sim.responses[("readings", 200)] > 1


async def test_every_vendor_answers_the_same_quantities_in_its_own_format(http: aiohttp.ClientSession) -> None:
    """Each platform's readings, converted, equal the generator's values: units and scalers round-trip exactly."""
    for cls in PLATFORMS.values():
        async with await platform(cls) as sim:
            pulled = {key(r)[0] + r["read_at"]: r["value"] for r in await pull(http, sim, *march(sim), size=100)}
            truth = {r.meter.meter_id + mv.utc_text(r.end): r.value for r in sim.source.readings(*march(sim))}
        assert pulled == truth, cls.vendor


async def test_vendor1_refuses_missing_and_wrong_api_keys(http: aiohttp.ClientSession) -> None:
    """Vendor 1 answers 401 without X-Api-Key and 403 with a wrong one, in its error shape."""
    async with await platform(Vendor1Platform) as v1:
        url, _, params = first_request(v1, *march(v1))
        for headers, status, code in (({}, 401, "UNAUTHORIZED"), ({"X-Api-Key": "nope"}, 403, "FORBIDDEN")):
            answer, body = await get(http, url, headers, params)
            assert (answer, body["error"]["code"]) == (status, code)


async def test_vendor2_expired_token_is_401_and_a_new_token_works(http: aiohttp.ClientSession) -> None:
    """A vendor-2 token past its lifetime gets 401 invalid_token; a fresh client-credentials token works again."""
    ticks = [0.0]
    async with await platform(Vendor2Platform, token_lifetime=60, token_clock=lambda: ticks[0]) as sim:
        url = f"{sim.url}/v2/readings?from=202503010000&to=202503020000"
        old = await bearer(http, sim)
        assert (await get(http, url, old))[0] == 200
        ticks[0] = 60.0
        async with http.get(url, headers=old) as answer:
            assert answer.status == 401
            assert 'error="invalid_token"' in answer.headers["WWW-Authenticate"]
            assert (await answer.json())["status"] == 401  # an RFC 7807 problem
        assert (await get(http, url, await bearer(http, sim)))[0] == 200
        sim.expire_tokens()
        assert (await get(http, url, old))[0] == 401
        assert sim.tokens_issued == 2 and sim.requests["token"] == 2


async def test_vendor2_token_endpoint_takes_basic_auth_and_refuses_a_wrong_secret(
        http: aiohttp.ClientSession, v2: Vendor2Platform) -> None:
    """The token endpoint accepts client credentials as HTTP basic auth and answers invalid_client otherwise."""
    form = {"grant_type": "client_credentials"}
    for secret, status, detail in ((v2.client_secret, 200, 3600), ("wrong", 401, "invalid_client")):
        basic = {"Authorization": aiohttp.encode_basic_auth(v2.client_id, secret)}
        async with http.post(f"{v2.url}/oauth2/token", data=form, headers=basic) as answer:
            body = await answer.json()
        assert (answer.status, body.get("expires_in") or body.get("error")) == (status, detail)


async def test_vendor2_cursor_resumes_in_a_new_session_without_gaps(http: aiohttp.ClientSession,
                                                                    v2: Vendor2Platform) -> None:
    """A saved next URL still works after a crash (new client, new token): pages before and after join exactly."""
    first = mv.vendor2_page((await get(http, f"{v2.url}/v2/readings?from=202503010000&to=202504010000&limit=2",
                                       await bearer(http, v2)))[1])
    rest: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as after_crash:
        url, headers = first["next"], await bearer(after_crash, v2)
        while url:
            page = mv.vendor2_page((await get(after_crash, url, headers))[1])
            rest, url = rest + page["items"], page["next"]
    everything = first["items"] + rest
    assert len(everything) == len({key(r) for r in everything}) == v2.source.count(*march(v2))


async def test_vendor2_days_across_the_spring_change_are_23_hours(http: aiohttp.ClientSession, v2: Vendor2Platform) -> None:
    """Vendor 2's Rome day of 30 March 2025 arrives as a 23-hour interval."""
    readings = await pull(http, v2, datetime(2025, 3, 29, 23, tzinfo=UTC), datetime(2025, 3, 30, 22, tzinfo=UTC), 10)
    assert {(r["interval_start"], r["read_at"]) for r in readings} == {("2025-03-29T23:00:00Z", "2025-03-30T22:00:00Z")}


async def test_vendor2_hourly_readings_through_the_october_change_are_25_distinct_hours(
        http: aiohttp.ClientSession) -> None:
    """Hourly vendor-2 readings carry DST flags in the repeated hour, so 26 October converts to 25 contiguous hours."""
    clock = ManualClock(datetime(2025, 11, 1, tzinfo=UTC))
    async with Vendor2Platform(1, interval=timedelta(hours=1), clock=clock) as sim:
        readings = await pull(http, sim, datetime(2025, 10, 25, 22, tzinfo=UTC), datetime(2025, 10, 26, 23, tzinfo=UTC), 1)
    starts = [datetime.fromisoformat(r["interval_start"]) for r in readings]
    assert len(starts) == 25 and all(b - a == timedelta(hours=1) for a, b in zip(starts, starts[1:]))


async def test_vendor3_needs_basic_auth(http: aiohttp.ClientSession, v3: Vendor3Platform) -> None:
    """Vendor 3 answers 401 with a Basic challenge to a wrong password."""
    url, _, params = first_request(v3, *march(v3))
    async with http.get(url, params=params, headers={"Authorization": aiohttp.encode_basic_auth("plu-hub", "x")}) as answer:
        assert answer.status == 401 and answer.headers["WWW-Authenticate"].startswith("Basic")
        assert (await answer.json())["errorCode"] == 4010


async def test_vendor4_refuses_bad_and_stale_signatures_and_foreign_tokens(http: aiohttp.ClientSession,
                                                                           v4: Vendor4Platform) -> None:
    """Vendor 4 answers 401 to a wrong signature or a timestamp over 5 minutes old, 400 to a token of another window."""
    url = f"{v4.url}/v4/readings"
    params = {"start": "2025-03-01T00:00:00Z", "end": "2025-03-02T00:00:00Z"}
    for headers in (v4_headers(v4, params) | {"X-V4-Signature": "0" * 64}, v4_headers(v4, params, at=time.time() - 301)):
        status, body = await get(http, url, headers, params)
        assert (status, body["errorCode"]) == (401, "E0401")
    params["maxResults"] = "2"
    token = (await get(http, url, v4_headers(v4, params), params))[1]["continuationToken"]
    other = {"start": "2025-03-05T00:00:00Z", "end": "2025-03-06T00:00:00Z", "continuationToken": token}
    status, body = await get(http, url, v4_headers(v4, other), other)
    assert (status, body["errorCode"]) == (400, "E1004")


# --- the 3-month window --------------------------------------------------------------------------

@pytest.mark.parametrize(("vendor", "status", "shape"), [
    ("vendor1", 400, lambda b: b["error"]["code"] == "OUT_OF_RETENTION"),
    ("vendor2", 422, lambda b: b["type"].endswith("/out-of-retention")),
    ("vendor3", 410, lambda b: b["errorCode"] == 4100),
    ("vendor4", 400, lambda b: b["errorCode"] == "E1003"),
])
async def test_a_window_older_than_three_months_gets_the_vendors_own_error(
        http: aiohttp.ClientSession, vendor: str, status: int, shape: Any) -> None:
    """Asking for readings from before now minus 3 months answers the vendor's own error; just inside is fine."""
    async with await platform(PLATFORMS[vendor]) as sim:
        oldest = datetime(2025, 1, 2, 9, 30, tzinfo=UTC)
        assert sim.source.oldest() == oldest
        for start, expected in ((oldest - timedelta(hours=1), status), (oldest + timedelta(hours=1), 200)):
            url, headers, params = first_request(sim, start, start + timedelta(days=3))
            if vendor == "vendor2":
                headers = await bearer(http, sim)
            answer, body = await get(http, url, headers, params)
            assert answer == expected and (expected == 200 or shape(body))


# --- controls ------------------------------------------------------------------------------------

async def test_rate_limit_answers_429_with_retry_after(http: aiohttp.ClientSession) -> None:
    """Past `rate_limit` requests in its window the platform answers 429 with an integer Retry-After."""
    async with await platform(Vendor3Platform, rate_limit=(2, 30)) as sim:
        url, headers, params = first_request(sim, *march(sim))
        statuses = []
        for _ in range(3):
            async with http.get(url, params=params, headers=headers) as answer:
                statuses.append(answer.status)
                retry_after = answer.headers.get("Retry-After")
        assert statuses == [200, 200, 429] and 1 <= int(retry_after) <= 30
        assert sim.responses[("readings", 429)] == 1


async def test_fail_next_injects_statuses_per_endpoint(http: aiohttp.ClientSession, v2: Vendor2Platform) -> None:
    """fail_next(n, status) answers the next n requests with status, on one endpoint when told which."""
    v2.fail_next(1, 503, endpoint="token")
    form = {"grant_type": "client_credentials", "client_id": v2.client_id, "client_secret": v2.client_secret}
    async with http.post(f"{v2.url}/oauth2/token", data=form) as answer:
        assert answer.status == 503
    headers = await bearer(http, v2)
    v2.fail_next(2, 502, retry_after=0)
    url, _, params = first_request(v2, *march(v2))
    statuses = []
    for _ in range(3):
        async with http.get(url, params=params, headers=headers) as answer:
            statuses.append((answer.status, answer.headers.get("Retry-After")))
    assert statuses == [(502, "0"), (502, "0"), (200, None)]
    assert v2.requests == {"token": 2, "readings": 3}


async def test_latency_holds_pages_and_concurrency_is_measured(http: aiohttp.ClientSession) -> None:
    """With latency per page, concurrent requests overlap and max_concurrent records how many did."""
    async with await platform(Vendor1Platform, latency=0.3) as sim:
        url, headers, params = first_request(sim, *march(sim))
        started = time.monotonic()
        answers = await asyncio.gather(*(get(http, url, headers, params | {"page": p, "pageSize": 5}) for p in range(1, 5)))
        assert [status for status, _ in answers] == [200] * 4
        assert time.monotonic() - started >= 0.3
        assert (sim.max_concurrent, sim.requests["readings"], sim.in_flight) == (4, 4, 0)


async def test_half_a_million_meters_cost_nothing_up_front(http: aiohttp.ClientSession) -> None:
    """A platform of 500,000 meters starts at once and serves its very last page, computed on demand."""
    async with Vendor3Platform(500_000, clock=ManualClock(NOW)) as sim:
        url, headers, params = first_request(sim, *march(sim))
        total = 500_000 * 31
        _, body = await get(http, url, headers, params | {"offset": total - 3, "limit": 10})
    assert body["total"] == total and [r["device"]["id"] for r in body["readings"]] == ["V3-0499999"] * 3


async def test_pushed_records_equal_pulled_ones(http: aiohttp.ClientSession, v3: Vendor3Platform,
                                                v4: Vendor4Platform) -> None:
    """What vendors 3 and 4 push is the record they serve on pull, so push and pull collapse to one reading."""
    days = (datetime(2025, 3, 10, tzinfo=UTC), datetime(2025, 3, 12, tzinfo=UTC))
    for sim in (v3, v4):
        _, served = await get(http, *first_request(sim, *days))
        assert served["readings"] == sim.records(*days), sim.vendor
    pushed = mv.vendor4_message(v4.records(*days, meters=range(7, 8))[0])
    pulled = next(r for r in await pull(http, v4, *days) if r["meter_id"] == "V4-0000007")
    assert v4.records(*days, meters=range(7, 8))[0]["energy"]["unit"] == "MWh"  # business meter 7
    assert key(pushed) == key(pulled) and (pushed["value"], pushed["source"]) == (pulled["value"], "vendor4/push")


# --- vendor 3's webhook sender -------------------------------------------------------------------

@pytest_asyncio.fixture
async def sink() -> AsyncIterator[HttpSink]:
    async with HttpSink() as server:
        yield server


def signature(timestamp: int | str, raw: bytes, secret: bytes = b"whsec-test") -> str:
    return hmac.new(secret, f"{timestamp}.".encode() + raw, hashlib.sha256).hexdigest()


async def test_webhook_sender_signs_timestamp_dot_body(sink: HttpSink, v3: Vendor3Platform) -> None:
    """The sender's X-Signature is HMAC-SHA256 over "<t>.<raw body>", t being its send time."""
    records = v3.records(datetime(2025, 3, 10, tzinfo=UTC), datetime(2025, 3, 11, tzinfo=UTC), meters=range(3))
    async with WebhookSender(f"{sink.url}/webhooks/vendor3", "whsec-test") as sender:
        delivery = await sender.send(records)
    [request] = await sink.wait_for(1)
    t, mac = (part.split("=", 1)[1] for part in request.headers["X-Signature"].split(","))
    assert mac == signature(t, request.raw) and abs(int(t) - time.time()) < 5 and delivery.status == 200
    assert request.body["readings"] == records and request.headers["X-Webhook-Id"]


async def test_webhook_sender_sends_stale_forged_and_replayed_requests(sink: HttpSink, v3: Vendor3Platform) -> None:
    """The sender can backdate its timestamp, forge its signature, and replay a delivery byte for byte."""
    records = v3.records(datetime(2025, 3, 10, tzinfo=UTC), datetime(2025, 3, 11, tzinfo=UTC), meters=range(1))
    async with WebhookSender(f"{sink.url}/hook", "whsec-test") as sender:
        stale = await sender.send(records, age=600)
        forged = await sender.send(records, bad_signature=True)
        replayed = await sender.replay(stale)
    first, second, third = await sink.wait_for(3)
    assert abs(stale.timestamp - (time.time() - 600)) < 5
    assert first.headers["X-Signature"] == f"t={stale.timestamp},v1={signature(stale.timestamp, first.raw)}"
    assert second.headers["X-Signature"] != f"t={forged.timestamp},v1={signature(forged.timestamp, second.raw)}"
    assert (third.raw, third.headers["X-Signature"], third.headers["X-Webhook-Id"]) == (
        first.raw, first.headers["X-Signature"], first.headers["X-Webhook-Id"])
    assert replayed.status == 200
