"""The meter rules (transforms/meter_rules.py and the four flows that run them): one reading per
(meter, register, time) across push and pull, month totals, the next month's forecast, and
key-customer detection once per business site; first as pure functions, then on a crafted history
through a real hub, with the CRM's site directory on a real HTTP server."""

from __future__ import annotations

import asyncio
import json
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from engine.messages import event_headers
from sandbox.http_sink import HttpSink
from schemas.meter import MeterReading
from tests.helpers import StreamReader, project_from, settled, started_hub, wait_until
from transforms import meter_rules as rules

ROOT = Path(__file__).resolve().parents[1]
UTC = timezone.utc
FLOWS = ("meter-reading-dedupe", "meter-month-totals", "meter-reading-forecast", "meter-keycustomer-detect")


# the vendors' zones as flows/meter-vendor-pulls.yaml declares them; readings carry theirs (schemas/meter.py `zone`)
ZONES = {"vendor1": ZoneInfo("Europe/Berlin"), "vendor2": ZoneInfo("Europe/Rome"),
         "vendor3": ZoneInfo("Europe/London"), "vendor4": ZoneInfo("Europe/Lisbon")}


def day(meter: str, site: str, start: datetime, kwh: float, source: str = "vendor1/pull",
        quality: str = "actual", hours: int = 24) -> dict[str, Any]:
    end = start + timedelta(hours=hours)
    reading = {"meter_id": meter, "site_id": site, "register": "1-0:1.8.0", "interval_start": rules.utc_text(start),
               "read_at": rules.utc_text(end), "value": kwh, "unit": "kWh", "quality": quality, "source": source}
    if (tz := ZONES.get(source.split("/")[0])) is not None:
        reading["zone"] = tz.key
    return reading


def month_days(meter: str, site: str, year: int, month: int, kwh: float,
               source: str = "vendor1/pull") -> list[dict[str, Any]]:
    """One reading per local day of the vendor's zone (midnight to midnight: 23 or 25 hours on DST days)."""
    tz = ZONES[source.split("/")[0]]
    first = date(year, month, 1)
    days = ((first + timedelta(days=32)).replace(day=1) - first).days
    out = []
    for d in range(days):
        start = datetime.combine(first + timedelta(days=d), time(0), tz).astimezone(UTC)
        end = datetime.combine(first + timedelta(days=d + 1), time(0), tz).astimezone(UTC)
        out.append(day(meter, site, start, kwh, source, hours=round((end - start).total_seconds() / 3600)))
    return out


def apply(func: Any, messages: list[dict[str, Any]], state: Any = None) -> tuple[Any, list[Any]]:
    out = []
    for message in messages:
        result = func({"state": state, "message": message})
        state = result["state"]
        if result["payload"] is not None:
            out.append(result["payload"])
    return state, out


# --- pure: one reading per (meter, register, read_at) ------------------------------------------

def test_a_pulled_copy_of_a_pushed_reading_is_dropped_but_a_better_one_goes_on() -> None:
    """Push first, the monthly pull weeks later: the pull's copy is dropped; an actual after an estimate
    and a repeat from the same path (a crash repeat or a correction) go on; another meter is its own."""
    start = datetime(2025, 3, 1, tzinfo=UTC)
    pushed = day("M1", "S1", start, 10.0, "vendor3/push", "estimated")
    state, out = apply(rules.first_sighting, [
        pushed, {**pushed, "source": "vendor3/pull"},                       # dropped: no better
        {**pushed, "source": "vendor3/pull", "quality": "actual", "value": 10.4},   # better: goes on
        {**pushed, "source": "vendor3/push", "quality": "estimated"},       # dropped: worse than the actual now kept
        {**pushed, "source": "vendor3/pull", "quality": "actual", "value": 10.4}])  # same path again: goes on
    assert [(r["source"], r["quality"]) for r in out] == [
        ("vendor3/push", "estimated"), ("vendor3/pull", "actual"), ("vendor3/pull", "actual")]
    assert state == {"seen": {pushed["read_at"]: ["vendor3/pull", "actual"]}}


def test_the_seen_record_keeps_only_the_last_100_days() -> None:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    state, out = apply(rules.first_sighting, [day("M1", "S1", start + timedelta(days=d), 1.0) for d in range(150)])
    assert len(out) == 150 and len(state["seen"]) == 101
    assert min(state["seen"]) == rules.utc_text(start + timedelta(days=150 - 100))


# --- pure: month totals and the forecast -------------------------------------------------------

def test_a_month_completes_when_its_days_are_covered_in_any_order_and_once() -> None:
    """Berlin days of March 2025 (one of 23 hours) in shuffled order: the last one closes the month and
    answers its total; the same reading again answers the same total; a register read does not count."""
    readings = month_days("M1", "S1", 2025, 3, 10.0)
    assert readings[29]["interval_start"] == "2025-03-29T23:00:00Z" and readings[29]["read_at"] == "2025-03-30T22:00:00Z"
    order = readings[5:] + readings[:5]
    state, out = apply(rules.month_progress, order[:-1] + [{**order[0], "interval_start": None}])
    assert out == []
    state, out = apply(rules.month_progress, [order[-1], order[-1]], state)
    assert len(out) == 2 and out[0] == out[1]
    assert out[0] | {"first_start": None} == {
        "meter_id": "M1", "site_id": "S1", "register": "1-0:1.8.0", "unit": "kWh", "month": "2025-03",
        "total": 310.0, "readings": 31, "first_start": None, "last_end": "2025-03-31T22:00:00Z", "latest": True,
        "zone": "Europe/Berlin", "month_start": "2025-02-28T23:00:00Z", "month_end": "2025-03-31T22:00:00Z",
        "revision": 1, "corrected": False}


def test_a_better_copy_replaces_the_first_in_the_months_total() -> None:
    readings = month_days("M1", "S1", 2025, 4, 10.0)
    corrected = {**readings[0], "value": 40.0, "quality": "actual"}
    _, out = apply(rules.month_progress, [*readings[:1], corrected, *readings[1:]])
    assert [m["total"] for m in out] == [330.0]


def test_the_forecast_is_the_same_use_per_day_over_the_next_months_days() -> None:
    _, [total] = apply(rules.month_progress, month_days("M1", "S1", 2025, 1, 31.0))   # 961 kWh in 31 days
    forecast = rules.forecast(total)
    MeterReading.model_validate(forecast)
    assert forecast == {"meter_id": "M1", "site_id": "S1", "register": "1-0:1.8.0",
                        "interval_start": "2025-01-31T23:00:00Z", "read_at": "2025-02-28T23:00:00Z",
                        "value": round(961 * 28 / 31, 3), "unit": "kWh", "quality": "forecast",
                        "source": "hub/forecast"}


def test_a_month_completed_after_a_newer_one_began_is_not_the_latest() -> None:
    february, march = month_days("M1", "S1", 2025, 2, 5.0), month_days("M1", "S1", 2025, 3, 5.0)
    _, out = apply(rules.month_progress, [*february[:-1], *march, february[-1]])
    assert [(m["month"], m["latest"]) for m in out] == [("2025-03", True), ("2025-02", False)]


# --- pure: key customers ------------------------------------------------------------------------

def total(meter: str, site: str, month: str, kwh: float, register: str = "1-0:1.8.0") -> dict[str, Any]:
    return {"meter_id": meter, "site_id": site, "register": register, "unit": "kWh", "month": month,
            "total": kwh, "readings": 30, "first_start": "", "last_end": "", "latest": True}


@pytest.mark.parametrize(("months", "expected"), [
    ({"2025-01": 5001, "2025-02": 6000, "2025-05": 7000}, ["2025-01", "2025-02", "2025-05"]),
    ({"2025-01": 5001, "2025-06": 6000, "2026-01": 7000}, None),             # 13 months from first to last
    ({"2025-01": 5001, "2025-06": 6000, "2025-12": 7000}, ["2025-01", "2025-06", "2025-12"]),
    ({"2025-01": 5000, "2025-02": 6000, "2025-03": 7000}, None),             # more than 5,000, not 5,000
])
def test_three_months_above_5000_kwh_within_a_year(months: dict[str, float], expected: list[str] | None) -> None:
    assert rules.heavy_run(months) == expected


def test_a_sites_meters_add_up_and_the_candidate_is_raised_once() -> None:
    """Two meters of 3,000 kWh each make a 6,000 kWh month; the third such month raises the candidate;
    later months and the other meter's totals raise nothing; the raising total again answers it again."""
    totals = [total(m, "S1", month, 3000.0) for month in ("2025-01", "2025-02", "2025-03", "2025-04") for m in ("A", "B")]
    totals.insert(0, total("A", "S1", "2025-01", 9000.0, register="1-0:2.8.0"))     # export: not counted
    state, out = apply(rules.site_months, totals)
    assert out == [{"site_id": "S1", "months": {"2025-01": 6000.0, "2025-02": 6000.0, "2025-03": 6000.0},
                    "threshold_kwh": 5000.0, "meters": ["A", "B"], "detected_by": "B|2025-03"}]
    _, again = apply(rules.site_months, [total("B", "S1", "2025-03", 3000.0), total("A", "S1", "2025-05", 1.0)], state)
    assert again == out


# --- the flows on a crafted history, through a real hub ----------------------------------------

CONFIG = """
    streams:
      - {name: METER, subjects: ["meter.>"], max_age: 1d}
      - {name: CRM, subjects: ["crm.>"], max_age: 1d}
      - {name: OPS, subjects: ["ops.>"], max_age: 1d}
    endpoints:
      crm_sites:
        adapter: http
        base_url: ${CRM_BRIDGE_URL}
        method: GET
        path: /sites/{site_id}
        timeout: 5s
    dlq: {stream: DLQ, max_age: 1d}
    """


async def test_push_and_pull_collapse_and_the_rules_fire_on_a_crafted_history(
        tmp_path: Path, broker: Any, broker_js: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three months of daily readings for a business site (two meters, 100 kWh a day each) and a
    household site that uses as much, with vendor 3's pushes of March and the monthly pull of March
    bringing the same readings: each reading reaches meter.reading.received once, every completed
    month's total is published, March's totals forecast April, and only the
    business site becomes a key-customer candidate, once (the household's CRM answer stops it)."""
    js = broker_js
    crm = await HttpSink().start()
    crm.serve("/sites", {"BIZ-1": {"site_id": "BIZ-1", "account_id": "ACC-7", "kind": "business"},
                         "HOME-1": {"site_id": "HOME-1", "account_id": "ACC-8", "kind": "household"}})
    monkeypatch.setenv("CRM_BRIDGE_URL", crm.url)
    flows = [(ROOT / "flows" / f"{name}.yaml").read_text() for name in FLOWS]
    hub = await started_hub(project_from(tmp_path, CONFIG, *flows), broker.url)
    received, totals, forecasts, candidates = [await StreamReader.open(js, s) for s in (
        "meter.reading.received", "meter.month.completed", "meter.reading.forecast", "crm.keycustomer.candidate")]
    history = [r for meter, site in (("B1", "BIZ-1"), ("B2", "BIZ-1"), ("H1", "HOME-1"))
               for month in (1, 2, 3) for r in month_days(meter, site, 2025, month, 100.0 if site == "BIZ-1" else 200.0,
                                                          source="vendor3/push")]
    pulled = [{**r, "source": "vendor3/pull"} for r in history if r["read_at"] >= "2025-03"]
    try:
        for i, reading in enumerate(history + pulled):
            await js.publish("meter.reading.collected", json.dumps(reading).encode(),
                             headers=event_headers("/test", "meter.reading.collected", msg_id=f"r{i}"))
        unique = len(history)
        await received.wait_for(unique)
        await totals.wait_for(9)
        await forecasts.wait_for(3)
        [candidate] = await candidates.wait_for(1)
        await wait_until(lambda: settled(js, "METER", *FLOWS))
    finally:
        await hub.stop()
        await crm.stop()
    assert len(received.messages) == unique and {json.loads(m.data)["source"] for m in received.messages} == {"vendor3/push"}
    months = sorted((t["meter_id"], t["month"], t["total"]) for t in totals.payloads())
    assert months == [(m, f"2025-0{n}", kwh * days) for m, kwh in (("B1", 100.0), ("B2", 100.0), ("H1", 200.0))
                      for n, days in ((1, 31), (2, 28), (3, 31))]
    per_day = {"B1": 100.0, "B2": 100.0, "H1": 200.0}
    april = sorted((f["meter_id"], f["value"]) for f in forecasts.payloads() if f["read_at"] == "2025-04-30T23:00:00Z")
    assert april == [(m, kwh * 30) for m, kwh in per_day.items()]  # March's use per day, over April's 30 days
    for f in forecasts.payloads():  # a month completed while it was the newest forecasts the next one
        MeterReading.model_validate(f)
        london = ZONES["vendor3"]  # local days: March in London is 31 days of 743 hours, not 30 x 24 h
        days = (datetime.fromisoformat(f["read_at"]).astimezone(london).date()
                - datetime.fromisoformat(f["interval_start"]).astimezone(london).date()).days
        assert f["quality"] == "forecast" and f["value"] == per_day[f["meter_id"]] * days
    body = json.loads(candidate.data)
    assert body.pop("detected_by") in ("B1|2025-03", "B2|2025-03")  # whichever meter's March total came second
    assert body == {"site_id": "BIZ-1", "months": {"2025-01": 6200.0, "2025-02": 5600.0, "2025-03": 6200.0},
                    "threshold_kwh": 5000.0, "meters": ["B1", "B2"], "account_id": "ACC-7", "site_kind": "business"}
    assert len(candidates.messages) == 1
    assert sorted({r.path for r in crm.received}) == ["/sites/BIZ-1", "/sites/HOME-1"]


async def test_two_runners_counting_one_meters_readings_at_once_lose_none(
        tmp_path: Path, broker: Any, broker_js: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two runners share meter-month-totals while 20 meters' Novembers (600 readings) arrive at once: each
    meter's readings are applied together per runner and the runners' writes to one record collide;
    every month total is still exact and published once."""
    js = broker_js
    monkeypatch.setenv("CRM_BRIDGE_URL", "http://127.0.0.1:9")  # in the config, not called by this flow
    flow = (ROOT / "flows" / "meter-month-totals.yaml").read_text()
    assert "limits: {concurrency: 64}" in flow
    flow = flow.replace("limits: {concurrency: 64}", "limits: {concurrency: 16, max_in_flight: 16, batch: 16}")  # both runners get work
    project = project_from(tmp_path, CONFIG, flow)
    hubs = [await started_hub(project, broker.url) for _ in range(2)]
    totals = await StreamReader.open(js, "meter.month.completed")
    readings = [r for m in range(20) for r in month_days(f"M{m}", f"S{m}", 2026, 11, 1.0 + m)]
    try:
        acks = [await js.publish_async("meter.reading.received", json.dumps(r).encode(),
                                       headers=event_headers("/test", "meter.reading.received", msg_id=f"n{i}"))
                for i, r in enumerate(readings)]
        await asyncio.gather(*acks)
        await totals.wait_for(20)
        await wait_until(lambda: settled(js, "METER", "meter-month-totals"))
    finally:
        for hub in hubs:
            await hub.stop()
    got = sorted((t["meter_id"], t["total"], t["readings"]) for t in totals.payloads())
    assert got == sorted((f"M{m}", round(30 * (1.0 + m), 3), 30) for m in range(20))
    assert all(h.runners["meter-month-totals"].stats.acked > 0 for h in hubs)  # both runners took part


def test_a_register_read_and_an_interval_ending_at_the_same_time_are_two_readings() -> None:
    """A radar reader's index at midnight and the day's interval ending at midnight both go on."""
    interval = day("M1", "S1", datetime(2025, 3, 1, tzinfo=UTC), 10.0)
    index = {**interval, "interval_start": None, "value": 4711.0, "source": "manual"}
    _, out = apply(rules.first_sighting, [interval, index, {**index, "source": "vendor1/pull"}])
    assert [r["source"] for r in out] == ["vendor1/pull", "manual"]


# --- the seen records stay small: one per meter register and UTC day or month ---------------------

def quarter_hours(meter: str, start: datetime, count: int, source: str = "vendor3/push",
                  quality: str = "actual") -> list[dict[str, Any]]:
    return [{"meter_id": meter, "site_id": "S1", "register": "1-0:1.8.0",
             "interval_start": rules.utc_text(start + timedelta(minutes=15 * i)),
             "read_at": rules.utc_text(start + timedelta(minutes=15 * (i + 1))), "value": 0.25, "unit": "kWh",
             "quality": quality, "source": source, "zone": "Europe/London"} for i in range(count)]


def test_a_reading_is_kept_in_its_utc_day_or_month_whatever_its_spelling() -> None:
    """Quarter-hours by the UTC day of their end (the one ending at midnight in the day it ends), daily
    readings and register reads by their UTC month, an offset spelling of an instant like its `Z`."""
    q = quarter_hours("M1", datetime(2025, 3, 29, 23, 45, tzinfo=UTC), 1)[0]
    assert rules.seen_slot(q)["seen_slot"] == "2025-03-30"
    assert rules.slot_of({**q, "read_at": "2025-03-30T01:00:00+01:00", "interval_start": "2025-03-30T00:45:00+01:00"}) == "2025-03-30"
    assert rules.slot_of({**q, "read_at": "2025-03-29T23:59:00-01:00", "interval_start": "2025-03-29T23:44:00-01:00"}) == "2025-03-30"
    assert rules.slot_of(day("M1", "S1", datetime(2025, 3, 30, 23, tzinfo=UTC), 1.0, hours=23)) == "2025-03"
    assert rules.slot_of(day("M1", "S1", datetime(2024, 2, 28, 23, tzinfo=UTC), 1.0)) == "2024-02"  # ends 29 Feb
    assert rules.slot_of({**q, "interval_start": None}) == "2025-03"
    forwarded = rules.first_sighting({"state": None, "message": rules.seen_slot(q)})["payload"]
    assert "seen_slot" not in forwarded and forwarded == q  # what goes on is the reading as it came


def test_an_old_per_register_record_splits_into_the_slots_a_later_copy_meets() -> None:
    """An old record (one per meter register) of quarter-hours goes to day records, one of daily readings
    to month records, a register read to its month; a lone interval to both its day and month; an old
    offset spelling is moved as its UTC instant. Every entry is where its copy's slot looks for it."""
    quarter = quarter_hours("M1", datetime(2025, 3, 31, 23, tzinfo=UTC), 8)
    daily = month_days("M1", "S1", 2025, 3, 1.0) + [{**day("M1", "S1", datetime(2025, 3, 1, tzinfo=UTC), 9.0),
                                                    "interval_start": None, "source": "manual"}]
    for readings, expected in ((quarter, {"2025-03-31": 3, "2025-04-01": 5}), (daily, {"2025-03": 32})):
        old, _ = apply(rules.first_sighting, readings)
        slots = rules.split_seen(old)
        assert {slot: len(r["seen"]) for slot, r in slots.items()} == expected
        for reading in readings:  # the slot record a later copy reads has the reading's entry
            at = rules.utc_text(rules.parse_iso(reading["read_at"])) + ("" if reading["interval_start"] else " read")
            assert slots[rules.slot_of(reading)]["seen"][at] == old["seen"][at]
    lone = {"seen": {"2025-03-02T00:00:00+01:00": ["vendor3/push", "estimated"]}}
    entry = {"2025-03-01T23:00:00Z": ["vendor3/push", "estimated"]}
    assert rules.split_seen(lone) == {"2025-03-01": {"seen": entry}, "2025-03": {"seen": entry}}
    kept = {"seen": {"2025-03-01T23:00:00Z": ["vendor3/pull", "actual"]}}
    assert rules.merge_seen(kept, {"seen": entry}) == kept                       # the better entry stays
    assert rules.merge_seen({"seen": entry}, kept) == kept
    assert rules.merge_seen(None, {"seen": entry}) == {"seen": entry}


DEDUPE_CONFIG = """
    streams:
      - {name: METER, subjects: ["meter.>"], max_age: 1d}
    dlq: {stream: DLQ, max_age: 1d}
    """


async def _collected(js: Any, readings: list[dict[str, Any]], tag: str) -> None:
    acks = [await js.publish_async("meter.reading.collected", json.dumps(r).encode(),
                                   headers=event_headers("/test", "meter.reading.collected", msg_id=f"{tag}{i}"))
            for i, r in enumerate(readings)]
    await asyncio.gather(*acks)


async def _seen_records(js: Any) -> dict[str, dict[str, Any]]:
    kv = await js.key_value("hub_state_meter_seen")
    return {key: json.loads((await kv.get(key)).value) for key in await kv.keys()}


async def test_a_15_minute_meters_seen_records_hold_a_day_each_and_copies_still_collapse(
        tmp_path: Path, broker: Any, broker_js: Any) -> None:
    """Three days of a 15-minute meter's pushes, then the pull bringing day one again weeks later: the
    pull's copies are dropped, its one better copy goes on, and no KV record holds more than a day's 96
    readings (one record per meter register held all 288, and at 100 days 9,600, rewritten per reading)."""
    js = broker_js
    hub = await started_hub(project_from(tmp_path, DEDUPE_CONFIG, (ROOT / "flows" / "meter-reading-dedupe.yaml").read_text()),
                            broker.url)
    received = await StreamReader.open(js, "meter.reading.received")
    meter = f"Q{tmp_path.name[-6:]}"
    pushed = quarter_hours(meter, datetime(2025, 3, 29, 23, 45, tzinfo=UTC), 3 * 96, quality="estimated")  # 3 UTC days
    pulled = [{**r, "source": "vendor3/pull"} for r in pushed[:96]]
    pulled[5]["quality"] = "actual"
    try:
        await _collected(js, pushed, "p")
        await received.wait_for(len(pushed))
        await _collected(js, pulled, "u")
        await received.wait_for(len(pushed) + 1)
        await wait_until(lambda: settled(js, "METER", "meter-reading-dedupe"))
        records = {k: v for k, v in (await _seen_records(js)).items() if k.startswith(meter)}
    finally:
        await hub.stop()
    assert len(received.messages) == len(pushed) + 1
    assert json.loads(received.messages[-1].data) == {**pulled[5], "interval_start": pulled[5]["interval_start"]}
    assert sorted(len(r["seen"]) for r in records.values()) == [96, 96, 96]
    assert max(len(json.dumps(r)) for r in records.values()) < 6000


async def test_after_the_upgrade_and_the_migration_a_pull_still_drops_copies_of_earlier_pushes(
        tmp_path: Path, broker: Any, broker_js: Any) -> None:
    """Records the previous version kept per meter register (a 15-minute and a daily meter) are moved by
    tools/migrate_meter_seen.py into their day and month records (merged with one the new flow already
    wrote) and deleted; then the monthly pull's copies of readings pushed before the upgrade are dropped
    and only its better copies go on. Running the migration again moves nothing."""
    from engine.keyed_state import safe_key
    from tools.migrate_meter_seen import migrate

    js = broker_js
    quarter = quarter_hours("OLDQ", datetime(2025, 3, 30, 0, tzinfo=UTC), 2 * 96, quality="estimated")
    daily = [{**r, "quality": "estimated"} for r in month_days("OLDD", "S2", 2025, 3, 10.0, source="vendor3/push")]
    hub = await started_hub(project_from(tmp_path, DEDUPE_CONFIG, (ROOT / "flows" / "meter-reading-dedupe.yaml").read_text()),
                            broker.url)
    received = await StreamReader.open(js, "meter.reading.received")
    try:
        await _collected(js, [{**daily[3], "quality": "actual", "source": "vendor3/pull"}], "new")  # after the upgrade
        await received.wait_for(1)
        kv = await js.key_value("hub_state_meter_seen")
        for meter, readings in (("OLDQ", quarter), ("OLDD", daily)):   # as the previous version left them
            old_state, _ = apply(rules.first_sighting, readings)
            await kv.put(safe_key(f"{meter}.1-0:1.8.0"), json.dumps(old_state).encode())
        tally = await migrate(kv, progress=lambda _: None)
        assert (tally.old, tally.moved, tally.left) == (2, 2, 0)
        assert (await migrate(kv, progress=lambda _: None)).old == 0
        pulled = [{**r, "source": "vendor3/pull"} for r in quarter + daily if r is not daily[3]]
        pulled[7]["quality"] = "actual"
        await _collected(js, pulled, "pull")
        await received.wait_for(2)
        await wait_until(lambda: settled(js, "METER", "meter-reading-dedupe"))
        records = await _seen_records(js)
    finally:
        await hub.stop()
    got = [(r["meter_id"], r["read_at"], r["quality"]) for r in received.payloads()]
    assert got == [("OLDD", daily[3]["read_at"], "actual"), ("OLDQ", quarter[7]["read_at"], "actual")]
    assert sorted(k for k in records if k.startswith(("OLDQ", "OLDD"))) == [
        "OLDD=2e.1-0=3a.1=2e.8=2e.0=2e.2025-03",
        "OLDQ=2e.1-0=3a.1=2e.8=2e.0=2e.2025-03-30", "OLDQ=2e.1-0=3a.1=2e.8=2e.0=2e.2025-03-31",
        "OLDQ=2e.1-0=3a.1=2e.8=2e.0=2e.2025-04-01"]
