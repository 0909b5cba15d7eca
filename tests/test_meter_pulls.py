"""The monthly vendor pull (flows/meter-vendor-pulls.yaml) against the real vendor simulators: each
vendor's paging and auth end to end (the fifth, a Green Button ESPI Data Custodian, added by config and
one transform), a hub stopped mid-pagination that resumes with exact counts, a 429's Retry-After
honoured, an OAuth2 token that expires mid-pull refreshed once, and a watermark older than the
platforms' 3-month retention pulled from the edge with the gap raised."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
import pytest_asyncio
import yaml

from engine.adapter import CallContext, Services
from adapters.http import HttpAdapter, HttpEndpointConfig
from engine.dead_letter import summary
from engine.errors import RoutingError, TargetRejected
from engine.kv import bucket
from engine.messages import Envelope
from engine.paged_pull import BUCKET, checkpoint_key, run_now
from engine.schedule import FIRED_AT, SCHEDULED_FOR, publish_ticks
from sandbox.meters import (ManualClock, Vendor1Platform, Vendor2Platform, Vendor3Platform, Vendor4Platform,
                            Vendor5Platform)
from sandbox.meters.reference_pull import pull as reference_pull
from schemas.meter import MeterReading
from tests.helpers import StreamReader, project_from, started_hub, wait_until
from transforms import meter_pulls

ROOT = Path(__file__).resolve().parents[1]
FLOW = "meter-vendor-pulls"
UTC = timezone.utc
NOW = datetime(2025, 4, 2, 1, 0, tzinfo=UTC)  # the monthly tick: 2 April, 03:00 Brussels
RETENTION = timedelta(days=88)  # the flow's `retention`, under the platforms' 3 months (2 Jan 01:00 here)
ALERTS = f"ops.alert.{FLOW}"
START = "2025-03-01T00:00:00Z"
METERS = 20
V5_METERS = 4  # 96 readings a day each: a month of 4 ESPI meters is ~12K readings
SECRETS = {"METER_VENDOR1_API_KEY": "v1-sandbox-api-key", "METER_VENDOR2_CLIENT_SECRET": "v2-sandbox-client-secret",
           "METER_VENDOR3_PASSWORD": "v3-sandbox-password", "METER_VENDOR4_SECRET": "v4-sandbox-signing-secret",
           "METER_VENDOR5_CLIENT_SECRET": "v5 sandbox:s3cr=t+/é"}
# the vendors as the shipped flow declares them (format and zone per vendor): config, not code
ENTRIES = {e["vendor"]: e for e in yaml.safe_load((ROOT / "flows" / f"{FLOW}.yaml").read_text())["source"]["each"]}
JSON_VENDORS = ["vendor1", "vendor2", "vendor3", "vendor4"]

CONFIG = """
nats: {urls: []}
streams:
  - {name: METER, subjects: ["meter.>"], max_age: 1d}
  - {name: OPS, subjects: ["ops.>"], max_age: 1d}
endpoints:
  meter_vendor1:
    adapter: http
    base_url: ${METER_VENDOR1_URL}
    method: GET
    path: /api/v1/readings
    auth: {api_key: {header: X-Api-Key, value: {env: METER_VENDOR1_API_KEY}}}
    max_concurrency: 2
    timeout: 10s
  meter_vendor2:
    adapter: http
    base_url: ${METER_VENDOR2_URL}
    method: GET
    path: /v2/readings
    auth: {oauth2: {token_url: "${METER_VENDOR2_URL}/oauth2/token", client_id: plu-hub,
                    client_secret: {env: METER_VENDOR2_CLIENT_SECRET}}}
    max_concurrency: 2
    timeout: 10s
  meter_vendor3:
    adapter: http
    base_url: ${METER_VENDOR3_URL}
    method: GET
    path: /api/readings
    auth: {basic: {username: plu-hub, password: {env: METER_VENDOR3_PASSWORD}}}
    max_concurrency: 2
    timeout: 10s
  meter_vendor4:
    adapter: http
    base_url: ${METER_VENDOR4_URL}
    method: GET
    path: /v4/readings
    auth: {hmac_vendor4: {key_id: plu-hub, secret: {env: METER_VENDOR4_SECRET}}}
    max_concurrency: 2
    timeout: 10s
  meter_vendor5:
    adapter: http
    base_url: ${METER_VENDOR5_URL}
    method: GET
    path: /DataCustodian/espi/1_1/resource/Batch/Subscription/5
    headers: {Accept: application/atom+xml}
    auth: {oauth2: {token_url: "${METER_VENDOR5_URL}/oauth/token", client_id: plu-hub,
                    client_auth: client_secret_basic, client_secret: {env: METER_VENDOR5_CLIENT_SECRET}}}
    max_concurrency: 2
    timeout: 10s
dlq: {stream: DLQ, max_age: 1d}
"""


def flow_text(**replace: str) -> str:
    text = (ROOT / "flows" / f"{FLOW}.yaml").read_text()
    for old, new in {'start: "2025-01-01T00:00:00Z"': f'start: "{START}"', **replace}.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


@pytest.fixture
def js(broker_js):
    return broker_js  # the test's own server (conftest `broker`): the shipped flow's real durable


@pytest_asyncio.fixture
async def sims(monkeypatch):
    clock = ManualClock(NOW)
    platforms = {"vendor1": Vendor1Platform(METERS, clock=clock), "vendor3": Vendor3Platform(METERS, clock=clock),
                 "vendor4": Vendor4Platform(METERS, clock=clock)}
    v2: Vendor2Platform | None = None

    def token_clock() -> float:  # jumps past every token's expiry once `expire_at` readings requests came
        at = v2.expire_at if v2 is not None else None
        return 1_000_000.0 if at is not None and v2.requests["readings"] >= at else 0.0

    v2 = Vendor2Platform(METERS, clock=clock, token_clock=token_clock)
    v2.expire_at = None
    platforms["vendor2"] = v2
    platforms["vendor5"] = Vendor5Platform(V5_METERS, clock=clock)
    for name, sim in platforms.items():
        await sim.start()
        monkeypatch.setenv(f"METER_{name.upper()}_URL", sim.url)
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    yield platforms
    for sim in platforms.values():
        await sim.stop()


def key(reading: dict[str, Any]) -> tuple[str, str, str]:
    return reading["meter_id"], reading["register"], reading["read_at"]


async def expected(sim: Any, vendor: str) -> list[tuple[str, str, str]]:
    """What the plainest correct pull of the run's window answers (sandbox/meters/reference_pull.py)."""
    start, end = meter_pulls.window({**ENTRIES[vendor], "since": START})
    async with aiohttp.ClientSession() as http:
        return sorted(key(r) for r in await reference_pull(http, sim, start, end, size=200))


async def run_pull(tmp_path: Path, broker: Any, js: Any, vendors: list[str], *, alerts: list | None = None,
                   **replace: str):
    """One manual tick per vendor, labelled with the simulated NOW (the run's "now" for `retention`);
    the alerts the flow raised meanwhile are appended to `alerts` when given."""
    project = project_from(tmp_path, CONFIG, flow_text(**replace))
    flow = next(lf.flow for lf in project.flows if lf.flow.name == FLOW)
    hub = await started_hub(project, broker.url)
    readings = await StreamReader.open(js, "meter.reading.collected")
    records = await StreamReader.open(js, "ops.reconciliation")
    raised = await StreamReader.open(js, ALERTS)
    try:
        await publish_ticks(js, flow, NOW.isoformat(), manual=True, payloads=[ENTRIES[v] for v in vendors])
        await records.wait_for(len(vendors), timeout=30)
    finally:
        await hub.stop()
    if alerts is not None:  # published before the records: the stream knows how many there are
        info = await js.stream_info("OPS", subjects_filter=ALERTS)
        await raised.wait_for((info.state.subjects or {}).get(ALERTS, 0))
        alerts.extend(raised.payloads())
    return readings, {r["vendor"]: r for r in records.payloads()}


async def test_each_vendor_is_pulled_end_to_end_every_reading_once(tmp_path, broker, js, sims):
    """One tick per vendor pages through the four JSON platforms in their own paging and auth; every reading
    of the month lands once on meter.reading.collected as a valid MeterReading, and each vendor's
    reconciliation record counts exactly the platform's readings (matching its own total where it gives one)."""
    alerts: list = []
    readings, records = await run_pull(tmp_path, broker, js, JSON_VENDORS, alerts=alerts,
                                       **{"page_size: 500": "page_size: 150"})
    sims = {v: sims[v] for v in JSON_VENDORS}
    want = {vendor: await expected(sim, vendor) for vendor, sim in sims.items()}
    await readings.wait_for(sum(map(len, want.values())))
    got: dict[str, list] = {v: [] for v in sims}
    for body in readings.payloads():
        MeterReading.model_validate(body)
        assert body["source"].endswith("/pull")
        got[body["source"].split("/")[0]].append(key(body))
    for vendor, sim in sims.items():
        rec = records[vendor]
        assert sorted(got[vendor]) == want[vendor] and len(want[vendor]) >= METERS * 29, vendor
        assert rec["items"] == rec["published"] == len(want[vendor]) and rec["duplicates"] == 0, rec
        assert rec["pages"] >= 3 and not rec["resumed"], rec
        assert rec["matched"] is (True if vendor in ("vendor1", "vendor3") else None), rec
        assert rec["until"] == max(k[2] for k in want[vendor])  # the next run's since
        assert sim.max_concurrent <= 2
    assert sims["vendor2"].tokens_issued == 1 + 1  # the hub's one token, and the reference pull's
    assert alerts == [] and not any("gap" in r for r in records.values())  # inside the window: no retention alert


async def test_a_hub_stopped_mid_pagination_resumes_at_the_next_page_with_exact_counts(tmp_path, broker, js, sims):
    """The hub stops while vendor 4's continuation tokens are half way; the next hub resumes from the
    checkpoint with the same window, every reading is stored once, and the record counts each once."""
    sim = sims["vendor4"]
    sim.latency = 0.1
    project = project_from(tmp_path, CONFIG, flow_text(**{"page_size: 500": "page_size: 50", "ack_wait: 120s":
                                                          "ack_wait: 2s"}))
    flow = next(lf.flow for lf in project.flows if lf.flow.name == FLOW)
    hub = await started_hub(project, broker.url)
    kv = None

    async def pages_done() -> int:
        nonlocal kv
        try:
            kv = kv or await js.key_value(BUCKET)
            entry = await kv.get(checkpoint_key(FLOW, "readings:vendor4"))
        except Exception:
            return 0
        return (json.loads(entry.value).get("run") or {}).get("pages", 0)

    async def midway() -> bool:
        return await pages_done() >= 3

    try:
        await publish_ticks(js, flow, NOW.isoformat(), manual=True, payloads=[ENTRIES["vendor4"]])
        await wait_until(midway, timeout=15)
    finally:
        await hub.stop(timeout=0.01)
    stopped_after = await pages_done()
    sim.latency = 0.0
    want = await expected(sim, "vendor4")
    pages = -(-len(want) // 50)
    assert 3 <= stopped_after < pages
    hub = await started_hub(project, broker.url)
    readings = await StreamReader.open(js, "meter.reading.collected")
    records = await StreamReader.open(js, "ops.reconciliation")
    try:
        [record] = await records.wait_for(1, timeout=15)
        await readings.wait_for(len(want))
    finally:
        await hub.stop()
    rec = json.loads(record.data)
    assert rec["resumed"] and rec["items"] == len(want) and rec["pages"] == pages, rec
    assert rec["published"] + rec["duplicates"] == len(want)
    assert sorted(key(b) for b in readings.payloads()) == want  # each once: repeats were dropped


async def test_a_429_with_retry_after_is_waited_out_then_the_pull_goes_on(tmp_path, broker, js, sims):
    """Vendor 1 answers one page 429 with Retry-After: 1; the flow's 50 ms retry waits the full second
    the vendor asked for, and the run still takes every reading once."""
    sim = sims["vendor1"]
    sim.fail_next(1, 429, retry_after=1, endpoint="readings")
    started = time.monotonic()
    readings, records = await run_pull(tmp_path, broker, js, ["vendor1"], **{
        "retry: [1s, 5s, 30s]": "retry: [50ms, 50ms]", "page_size: 500": "page_size: 200"})
    elapsed = time.monotonic() - started
    want = await expected(sim, "vendor1")
    await readings.wait_for(len(want))
    assert sim.responses[("readings", 429)] == 1
    assert elapsed >= 1.0
    assert records["vendor1"]["items"] == len(want) and records["vendor1"]["matched"] is True
    assert sorted(key(b) for b in readings.payloads()) == want


async def test_an_oauth2_token_expiring_mid_pull_is_refreshed_once(tmp_path, broker, js, sims):
    """Vendor 2's token expires after the second page: the third call gets 401, the adapter fetches one
    new token and repeats that call, and the run completes with every reading once."""
    sim = sims["vendor2"]
    sim.expire_at = 3  # the 3rd readings request finds the token expired
    readings, records = await run_pull(tmp_path, broker, js, ["vendor2"], **{"page_size: 500": "page_size: 150"})
    assert sim.tokens_issued == 2 and sim.responses[("readings", 401)] == 1
    sim.expire_at = None
    want = await expected(sim, "vendor2")
    await readings.wait_for(len(want))
    assert records["vendor2"]["items"] == len(want) and records["vendor2"]["pages"] >= 4
    assert sorted(key(b) for b in readings.payloads()) == want


async def test_a_watermark_older_than_the_retention_pulls_from_the_edge_and_raises_the_gap_once(
        tmp_path, broker, js, sims):
    """Vendor 1's watermark is 1 January (Berlin), but on 2 April the platform keeps only 2 January on:
    instead of a 400 OUT_OF_RETENTION dead-lettering the tick, the run starts at the flow's edge
    (NOW - 88d), raises one `retention` alert naming the lost span, takes every reading from the edge
    to the month's end once, and its reconciliation record shows the gap. Its new watermark (end of
    January) is already behind the May run's edge, so `retention_risk` warns that a catch-up is due."""
    sim = sims["vendor1"]
    watermark = "2024-12-31T23:00:00Z"  # 1 Jan 00:00 Berlin: the last run took December
    kv = await bucket(js, BUCKET)
    await kv.put(checkpoint_key(FLOW, "readings:vendor1"),
                 json.dumps({"checkpoint": "readings:vendor1", "watermark": watermark}).encode())
    alerts: list = []
    readings, records = await run_pull(tmp_path, broker, js, ["vendor1"], alerts=alerts,
                                       **{"page_size: 500": "page_size: 200"})
    edge = (NOW - RETENTION).isoformat()
    start, end = meter_pulls.window({**ENTRIES["vendor1"], "since": edge})
    async with aiohttp.ClientSession() as http:
        want = sorted(key(r) for r in await reference_pull(http, sim, start, end, size=200))
    await readings.wait_for(len(want))
    assert sorted(key(b) for b in readings.payloads()) == want and len(want) >= METERS * 27
    assert sim.responses[("readings", 400)] == 0  # never asked for what the platform no longer keeps
    rec = records["vendor1"]
    assert rec["since"] == edge and rec["gap"] == {"from": watermark, "until": edge}, rec
    assert rec["items"] == len(want) and rec["matched"] is True and rec["until"] == max(k[2] for k in want)
    [gap] = [a for a in alerts if a["alert"] == "retention"]
    assert gap["state"] == "firing" and gap["checkpoint"] == "readings:vendor1"
    assert (gap["since"], gap["edge"]) == (watermark, edge)
    assert gap["lost_hours"] == 74.0 and gap["lost_days"] == 3.08  # 31 Dec 23:00Z .. 4 Jan 01:00Z
    [risk] = [a for a in alerts if a["alert"] == "retention_risk"]
    nxt = datetime(2025, 5, 2, 1, 0, tzinfo=UTC)  # the next slot: 2 May, 03:00 Brussels
    assert (risk["watermark"], risk["next_run"], risk["edge"]) == (rec["until"], nxt.isoformat(),
                                                                   (nxt - RETENTION).isoformat())
    assert len(alerts) == 2, alerts


async def test_a_cursor_that_never_ends_stops_at_max_pages_with_its_pages_kept(tmp_path, broker, js, sims):
    """With max_pages 2 and more pages to come, the run takes and checkpoints two pages, then goes to
    the DLQ saying why; the items of those pages stay published once."""
    project = project_from(tmp_path, CONFIG, flow_text(**{"page_size: 500": "page_size: 50\n      max_pages: 2"}))
    flow = next(lf.flow for lf in project.flows if lf.flow.name == FLOW)
    hub = await started_hub(project, broker.url)
    readings = await StreamReader.open(js, "meter.reading.collected")
    dead = await StreamReader.open(js, f"dlq.{FLOW}")
    try:
        await publish_ticks(js, flow, NOW.isoformat(), manual=True, payloads=[ENTRIES["vendor1"]])
        [record] = await dead.wait_for(1)
        await readings.wait_for(100)
    finally:
        await hub.stop()
    assert "max_pages" in summary(record.headers)["error"]
    entry = await (await js.key_value(BUCKET)).get(checkpoint_key(FLOW, "readings:vendor1"))
    assert json.loads(entry.value)["run"]["pages"] == 2 and len(readings.messages) == 100
    assert sims["vendor1"].requests["readings"] == 2  # no page asked for beyond the limit


def test_the_runs_now_is_the_ticks_slot_time_when_it_has_one():
    """A scheduled slot label or `manual:<ISO>` (runner.py trigger) is the run's now, or the time a
    slot was fired when that is later (a catch-up); anything else, the wall clock."""
    def env(label: str | None, fired: str | None = None) -> Envelope:
        headers = {} if label is None else {SCHEDULED_FOR: label}
        return Envelope({}, headers | ({FIRED_AT: fired} if fired else {}), "hub.schedule.x", "id", "id")

    assert run_now(env(NOW.isoformat())) == NOW
    catch_up = NOW + timedelta(days=18)  # the runners were down from the 2nd to the 20th
    assert run_now(env(NOW.isoformat(), catch_up.isoformat())) == catch_up
    assert run_now(env("manual:2025-04-02T03:00:00+02:00")) == NOW
    before = datetime.now(UTC)
    for label in (None, "t", "2025-04-02T01:00:00"):  # no label, not a time, a time without offset
        assert before <= run_now(env(label)) <= datetime.now(UTC)


async def test_the_fifth_vendor_green_button_espi_is_pulled_by_the_same_flow(tmp_path, broker, js, sims):
    """Vendor 5 joins by config alone (an endpoint, an `each` entry, the meter_espi format): its token
    endpoint takes only HTTP Basic client authentication, its Atom feed of 15-minute IntervalBlocks is
    read in full (a Paris day of 96 readings, 92 on 30 March), gas scaled by its multiplier; every
    reading lands once and the record counts them."""
    sim = sims["vendor5"]
    readings, records = await run_pull(tmp_path, broker, js, ["vendor5"])
    want = await expected(sim, "vendor5")
    start, end = meter_pulls.window({**ENTRIES["vendor5"], "since": START})  # to 1 April 00:00 Paris
    assert len(want) == V5_METERS * (end - start) // timedelta(minutes=15)
    await readings.wait_for(len(want))
    bodies = readings.payloads()
    for body in bodies:
        MeterReading.model_validate(body)
    assert sorted(key(b) for b in bodies) == want
    paris = ZoneInfo("Europe/Paris")
    per_day = Counter(datetime.fromisoformat(b["interval_start"]).astimezone(paris).date().day for b in bodies
                      if b["meter_id"] == "FR5-MTR-000000")
    assert per_day[30] == 92 and per_day[29] == per_day[31] == 96  # 30 March 2025: clocks go forward
    assert {b["source"] for b in bodies} == {"vendor5/pull"} and {b["unit"] for b in bodies} == {"kWh", "m3"}
    rec = records["vendor5"]
    assert rec["items"] == rec["published"] == len(want) and rec["matched"] is None and rec["pages"] >= V5_METERS
    assert sim.tokens_issued == 2 and sim.refused_clients == []  # the hub's token and the reference pull's


async def test_a_basic_only_token_endpoint_refuses_the_secret_in_the_body(sims, monkeypatch):
    """client_secret_post against vendor 5 is refused 401 invalid_client (TargetRejected, never a pull);
    client_secret_basic, with the secret's `:`, `+`, `=`, `/`, space and `é` form-urlencoded, is accepted."""
    monkeypatch.setenv("METER_VENDOR5_CLIENT_SECRET", SECRETS["METER_VENDOR5_CLIENT_SECRET"])
    sim = sims["vendor5"]
    oauth = {"token_url": f"{sim.url}/oauth/token", "client_id": "plu-hub",
             "client_secret": {"env": "METER_VENDOR5_CLIENT_SECRET"}}
    query = {"published-min": "2025-03-30T22:00:00Z", "published-max": "2025-03-31T22:00:00Z", "max-results": 3}
    path = "/DataCustodian/espi/1_1/resource/Batch/Subscription/5"
    post = await adapter("v5", base_url=sim.url, path=path, headers={"Accept": "application/atom+xml"},
                         auth={"oauth2": {**oauth, "client_auth": "client_secret_post"}})
    basic = await adapter("v5", base_url=sim.url, path=path, headers={"Accept": "application/atom+xml"},
                          auth={"oauth2": oauth})  # client_secret_basic is the default (RFC 6749 §2.3.1)
    try:
        with pytest.raises(TargetRejected) as err:
            await post.call(None, query, ctx())
        assert err.value.status == 401 and "invalid_client" in str(err.value) and "HTTP Basic" in str(err.value)
        answer = await basic.call(None, query, ctx())
        assert isinstance(answer, str) and "Relevé de consommation" in answer and answer.lstrip().startswith("<feed")
    finally:
        await post.close()
        await basic.close()


# --- the adapter's auth and `_url` rules, without a hub -------------------------------------


async def adapter(name: str, **config: Any) -> HttpAdapter:
    a = HttpAdapter(name, HttpEndpointConfig(adapter="http", method="GET", **config), Services())
    await a.start()
    return a


def ctx() -> CallContext:
    return CallContext({}, "msg-1", "corr-1", 5.0)


async def test_a_next_url_on_another_origin_is_refused_before_any_credential_leaves(sims):
    """`_url` must be on the endpoint's own scheme, host and port: a link elsewhere is a RoutingError."""
    sim = sims["vendor3"]
    a = await adapter("v3", base_url=sim.url, path="/api/readings",
                      auth={"basic": {"username": "plu-hub", "password": {"env": "METER_VENDOR3_PASSWORD"}}})
    try:
        with pytest.raises(RoutingError):
            await a.call(None, {"_url": "http://evil.example/steal"}, ctx())
        answer = await a.call(None, {"_url": f"{sim.url}/api/readings?since={int(NOW.timestamp()) - 86400 * 3}",
                                     "until": int(NOW.timestamp()), "limit": 5}, ctx())
        assert answer["limit"] == 5 and len(answer["readings"]) == 5
    finally:
        await a.close()


async def test_wrong_oauth2_client_secret_is_a_permanent_rejection(sims, monkeypatch):
    """The token endpoint refusing the client is TargetRejected (401), not retried as transient."""
    monkeypatch.setenv("METER_VENDOR2_CLIENT_SECRET", "wrong")
    sim = sims["vendor2"]
    a = await adapter("v2", base_url=sim.url, path="/v2/readings",
                      auth={"oauth2": {"token_url": f"{sim.url}/oauth2/token", "client_id": "plu-hub",
                                       "client_secret": {"env": "METER_VENDOR2_CLIENT_SECRET"}}})
    try:
        with pytest.raises(TargetRejected) as err:
            await a.call(None, {"from": "202503300000", "to": "202504010000"}, ctx())
        assert err.value.status == 401 and "oauth2 token" in str(err.value)
    finally:
        await a.close()


# --- vendors by config ------------------------------------------------------------------------------

def test_validate_checks_every_vendor_entry_with_file_and_line(tmp_path, monkeypatch):
    """A format that does not exist and a zone that is not IANA are errors at the entry's line, before a run."""
    from engine.errors import ConfigError

    for n in range(1, 6):  # the endpoints' URLs, which no simulator set for this test alone
        monkeypatch.setenv(f"METER_VENDOR{n}_URL", f"http://127.0.0.1:9/{n}")

    bad = flow_text(**{"format: meter_espi.ESPI, zone: Europe/Paris": "format: meter_espi.GREEN, zone: Paris"})
    with pytest.raises(ConfigError) as err:
        project_from(tmp_path, CONFIG, bad)
    issues = [i for i in err.value.issues if "source.each[4]" in i]
    assert len(issues) == 2 and all(":18: source.each[4]." in i for i in issues), err.value.issues
    assert "transforms.meter_espi has ESPI" in issues[0] and "unknown time zone 'Paris'" in issues[1]


def test_a_tick_without_its_entrys_format_says_how_to_trigger_it():
    """A hand-made tick naming only the vendor is refused with the command that carries the entry along."""
    with pytest.raises(ValueError, match="--only vendor=<name>"):
        meter_pulls.request({"vendor": "vendor1", "since": START, "cursor": None, "page_size": 10})
    body = meter_pulls.request({**ENTRIES["vendor3"], "since": START, "cursor": None, "page_size": 10})
    assert body == {"since": 1740787200, "until": 1743462000, "offset": 0, "limit": 10}  # 1 April, London
