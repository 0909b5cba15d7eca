"""Calendar edges, as pure functions: schedule slots (cron in a time zone, `every`), local months and
the meter rules' month completion and forecasts at month ends, year ends, both DST nights and
29 February. Fixed instants only: nothing here depends on the day the tests run."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.durations import parse_duration
from engine.months import add_months, gap_end, month_bounds, previous_month, wall_instants
from engine.schedule import is_fixed_time, latest_slot, next_slot
from engine.spec import ScheduleSpec
from sandbox.meters import months_back
from transforms import meter_rules as rules

ROOT = Path(__file__).resolve().parents[1]
UTC = timezone.utc
BRUSSELS, LONDON, BERLIN = ZoneInfo("Europe/Brussels"), ZoneInfo("Europe/London"), ZoneInfo("Europe/Berlin")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def slots(cron: str, tz: str, start: str, end: str) -> list[str]:
    """Every slot of `cron` in (start, end], as UTC text."""
    spec, out, moment = ScheduleSpec(cron=cron, timezone=tz), [], at(start)
    while (moment := next_slot(spec, moment)) <= at(end):
        out.append(moment.strftime("%Y-%m-%dT%H:%MZ"))
    return out


# --- schedules -------------------------------------------------------------------------------------

@pytest.mark.parametrize("cron, tz, expected", [
    ("30 2 * * *", "Europe/Brussels", ["2026-10-25T00:30Z", "2026-10-26T01:30Z"]),  # 02:30 CEST, not again at CET
    ("30 1 * * *", "Europe/London", ["2026-10-25T00:30Z", "2026-10-26T01:30Z"]),    # 01:30 BST, not again at GMT
    ("0 2 * * *", "Europe/Brussels", ["2026-10-25T00:00Z", "2026-10-26T01:00Z"]),
])
def test_a_cron_inside_the_repeated_autumn_hour_fires_once(cron: str, tz: str, expected: list[str]) -> None:
    """A nightly job at a time that happens twice when clocks go back runs once, at the first (summer) one."""
    assert slots(cron, tz, "2026-10-24T12:00:00Z", "2026-10-26T12:00:00Z") == expected


def test_a_cron_with_a_wildcard_hour_runs_through_both_copies_of_the_repeated_hour() -> None:
    """`*/30 * * * *` runs every half hour of elapsed time through the autumn night (Vixie cron's rule)."""
    assert slots("*/30 * * * *", "Europe/Brussels", "2026-10-24T23:45:00Z", "2026-10-25T02:00:00Z") == [
        "2026-10-25T00:00Z", "2026-10-25T00:30Z", "2026-10-25T01:00Z", "2026-10-25T01:30Z", "2026-10-25T02:00Z"]


def test_a_cron_in_the_spring_gap_runs_once_when_the_clocks_jump() -> None:
    """02:30 does not exist on the spring night: the job runs at the jump (03:00 CEST = 01:00Z), once;
    a wildcard job has no slots in the missing hour."""
    assert slots("30 2 * * *", "Europe/Brussels", "2027-03-27T12:00:00Z", "2027-03-29T12:00:00Z") == [
        "2027-03-28T01:00Z", "2027-03-29T00:30Z"]
    assert slots("30 1 * * *", "Europe/London", "2027-03-27T12:00:00Z", "2027-03-29T12:00:00Z") == [
        "2027-03-28T01:00Z", "2027-03-29T00:30Z"]
    assert slots("*/30 * * * *", "Europe/Brussels", "2027-03-28T00:00:00Z", "2027-03-28T01:30:00Z") == [
        "2027-03-28T00:30Z", "2027-03-28T01:00Z", "2027-03-28T01:30Z"]


def test_the_latest_slot_inside_the_second_repeated_hour_is_that_nights_run() -> None:
    """A runner starting at 02:10 CET (the second 02:10) knows tonight's 02:30 CEST run already
    happened (a catch-up must not skip back a day, nor run it twice)."""
    spec = ScheduleSpec(cron="30 2 * * *", timezone="Europe/Brussels")
    for now in ("2026-10-25T00:45:00Z", "2026-10-25T01:10:00Z", "2026-10-25T01:45:00Z"):
        assert latest_slot(spec, at(now)) == at("2026-10-25T00:30:00Z"), now


@pytest.mark.parametrize("cron, tz, now, expected", [
    ("0 3 2 * *", "Europe/Brussels", "2026-12-15T00:00:00Z", "2027-01-02T02:00:00Z"),   # the monthly pull, over a year's end
    ("0 0 1 * *", "Europe/Brussels", "2026-12-31T22:59:00Z", "2026-12-31T23:00:00Z"),   # local New Year, still 2026 in UTC
    ("0 0 1 * *", "Europe/London", "2027-03-31T22:00:00Z", "2027-03-31T23:00:00Z"),     # 1 April 00:00 BST
    ("30 1 * * *", "Europe/Brussels", "2027-01-31T23:59:00Z", "2027-02-01T00:30:00Z"),  # the nightly batch at a month's start
    ("0 12 29 2 *", "Europe/Brussels", "2027-03-01T00:00:00Z", "2028-02-29T11:00:00Z"),  # only in leap years
    ("0 12 29 2 *", "Europe/Brussels", "2028-02-29T11:00:00Z", "2032-02-29T11:00:00Z"),
    ("0 0 L * *", "Europe/Brussels", "2028-02-01T00:00:00Z", "2028-02-28T23:00:00Z"),    # the last day: 29 Feb 2028
])
def test_cron_slots_at_month_and_year_ends_and_29_february(cron: str, tz: str, now: str, expected: str) -> None:
    assert next_slot(ScheduleSpec(cron=cron, timezone=tz), at(now)) == at(expected)


def test_every_counts_elapsed_time_through_a_dst_night() -> None:
    """`every: 1d` fires 24 h apart across the spring night, at UTC midnight (it is not a wall-clock time)."""
    spec = ScheduleSpec(every="1d")
    first = next_slot(spec, at("2027-03-27T12:00:00Z"))
    assert first == at("2027-03-28T00:00:00Z") and next_slot(spec, first) - first == timedelta(hours=24)
    assert latest_slot(ScheduleSpec(every="1h"), at("2028-02-29T23:59:59Z")) == at("2028-02-29T23:00:00Z")


CRONS = ["30 2 * * *", "0 3 2 * *", "*/15 * * * *", "0 0 1 * *", "30 1 * * 0", "0 12 29 2 *", "45 2 * 3,10 *"]


@settings(max_examples=300, deadline=None)
@given(cron=st.sampled_from(CRONS), tz=st.sampled_from(["Europe/Brussels", "Europe/London", "America/New_York"]),
       moment=st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2029, 12, 31), timezones=st.just(UTC)))
def test_slots_bracket_every_instant_with_nothing_between(cron: str, tz: str, moment: datetime) -> None:
    """For any instant, the latest slot is at or before it, the next one after it, the next slot after
    the latest is that next one (no slot between), and a fixed-time job's slot shows its own wall time
    (or is the jump over a spring gap)."""
    spec = ScheduleSpec(cron=cron, timezone=tz)
    last, following = latest_slot(spec, moment), next_slot(spec, moment)
    assert last <= moment < following
    assert next_slot(spec, last) == following
    if is_fixed_time(cron):
        minute, hour = (int(f) for f in cron.split()[:2])
        local = following.astimezone(ZoneInfo(tz))
        shown = (local.hour, local.minute) == (hour, minute)
        jumped = not wall_instants(local.replace(hour=hour, minute=minute, tzinfo=None), ZoneInfo(tz))
        assert shown or (jumped and following == gap_end(local.replace(hour=hour, minute=minute, tzinfo=None),
                                                          ZoneInfo(tz)))


def test_the_pull_retention_edge_stays_inside_the_platforms_three_months_at_every_hour() -> None:
    """meter-vendor-pulls' `retention` (elapsed time) never reaches before the platforms' 3 calendar
    months, at any hour of 2026-2029: the shortest span (February to April, less a DST hour) included."""
    flow = yaml.safe_load((ROOT / "flows" / "meter-vendor-pulls.yaml").read_text())
    retention = timedelta(seconds=parse_duration(flow["steps"][0]["pull"]["retention"]))
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    while moment < datetime(2030, 1, 1, tzinfo=UTC):
        assert months_back(moment, 3) <= moment - retention, moment
        moment += timedelta(hours=1)


# --- local months ----------------------------------------------------------------------------------

@pytest.mark.parametrize("month, tz, hours", [
    ("2027-03", BRUSSELS, 743), ("2027-10", BRUSSELS, 745), ("2027-03", LONDON, 743), ("2027-10", LONDON, 745),
    ("2028-02", BRUSSELS, 29 * 24), ("2027-02", BRUSSELS, 28 * 24), ("2026-12", BERLIN, 744)])
def test_a_local_month_is_as_long_as_its_days(month: str, tz: ZoneInfo, hours: int) -> None:
    start, end = month_bounds(month, tz)
    assert (end - start) == timedelta(hours=hours)
    assert start.astimezone(tz).timetuple()[1:5] == (int(month[5:]), 1, 0, 0)


def test_the_previous_month_depends_on_the_zone_at_a_years_end() -> None:
    """At 23:30Z on 31 December it is already January in Berlin (December is over) but not in London."""
    moment = at("2026-12-31T23:30:00Z")
    assert previous_month(moment, BERLIN) == (at("2026-11-30T23:00:00Z"), at("2026-12-31T23:00:00Z"))
    assert previous_month(moment, LONDON) == (at("2026-11-01T00:00:00Z"), at("2026-12-01T00:00:00Z"))
    assert add_months(at("2028-01-31T23:00:00Z"), 1, BERLIN) == at("2028-02-29T23:00:00Z")  # 1 March, 29 days on


# --- month totals: coverage to the local end -------------------------------------------------------

VENDOR_ZONES = {"vendor1": "Europe/Berlin", "vendor3": "Europe/London"}  # as the pulls flow declares them


def interval(start: datetime, minutes: int, value: float = 1.0, source: str = "vendor1/pull",
             quality: str = "actual") -> dict[str, Any]:
    """A reading as the pull or push stamps it, with its vendor's zone (none for a manual reading)."""
    reading = {"meter_id": "M1", "site_id": "S1", "register": "1-0:1.8.0", "interval_start": rules.utc_text(start),
               "read_at": rules.utc_text(start + timedelta(minutes=minutes)), "value": value, "unit": "kWh",
               "quality": quality, "source": source}
    if (zone := VENDOR_ZONES.get(source.split("/")[0])) is not None:
        reading["zone"] = zone
    return reading


def month_intervals(month: str, minutes: int, tz: ZoneInfo = BERLIN, source: str = "vendor1/pull",
                    value: float = 1.0) -> list[dict[str, Any]]:
    start, end = month_bounds(month, tz)
    count = int((end - start) / timedelta(minutes=minutes))
    return [interval(start + timedelta(minutes=minutes * k), minutes, value, source) for k in range(count)]


def local_days(month: str, tz: ZoneInfo = BERLIN, source: str = "vendor1/pull", value: float = 1.0) -> list[dict[str, Any]]:
    first = date(int(month[:4]), int(month[5:]), 1)
    out = []
    for d in range((add_months(month_bounds(month, tz)[0], 1, tz).astimezone(tz).date() - first).days):
        start = datetime.combine(first + timedelta(days=d), time(0), tz).astimezone(UTC)
        end = datetime.combine(first + timedelta(days=d + 1), time(0), tz).astimezone(UTC)
        out.append(interval(start, int((end - start).total_seconds() // 60), value, source))
    return out


def run(messages: list[dict[str, Any]], state: Any = None) -> tuple[Any, list[dict[str, Any]]]:
    out = []
    for message in messages:
        result = rules.month_progress({"state": state, "message": message})
        state = result["state"]
        if result["payload"] is not None:
            out.append(result["payload"])
    return state, out


@pytest.mark.parametrize("month, minutes, count", [
    ("2027-01", 60, 744), ("2027-01", 15, 2976), ("2027-03", 60, 743), ("2027-03", 15, 2972),
    ("2027-10", 60, 745), ("2027-10", 15, 2980), ("2028-02", 60, 696)])
def test_a_month_of_hourly_or_quarter_hour_readings_is_complete_only_with_its_last_one(
        month: str, minutes: int, count: int) -> None:
    """Not an hour early (743 of 744 hours, 2,972 of 2,976 quarter-hours): complete when the readings
    cover the month to its local end, DST months and a leap February included."""
    readings = month_intervals(month, minutes)
    assert len(readings) == count
    state, out = run(readings[1:])  # the first hour or quarter-hour is missing: not complete
    assert out == []
    state, [total] = run(readings[:1], state)  # it arrives late: now the month is complete, once
    assert (total["month"], total["readings"], total["total"], total["revision"]) == (month, count, float(count), 1)
    assert (total["month_start"], total["month_end"]) == tuple(rules.utc_text(t) for t in month_bounds(month, BERLIN))


def test_a_later_better_reading_publishes_a_corrected_total_and_a_repeat_answers_it_again() -> None:
    """After completion, an actual replacing an estimate with another value answers revision 2; the same
    message again (a crash repeat) answers revision 2 again; a better copy of the same value changes nothing."""
    readings = local_days("2027-02")
    readings[3] = {**readings[3], "quality": "estimated", "value": 0.5}
    state, [first] = run(readings)
    assert (first["total"], first["revision"], first["corrected"]) == (27.5, 1, False)
    better = {**readings[3], "quality": "actual", "value": 1.0}
    state, [corrected] = run([better], state)
    assert (corrected["total"], corrected["revision"], corrected["corrected"]) == (28.0, 2, True)
    state, [again] = run([better], state)
    assert again == corrected
    _, none = run([{**readings[5], "quality": "actual", "source": "vendor1/push"}], state)  # same value: stands
    assert none == []


def test_a_reading_straddling_the_month_edge_counts_for_the_part_inside() -> None:
    """A day reading from 22:00Z to 22:00Z against a month that starts at 23:00Z (a vendor whose days are
    not the meter's): the month completes once the next month's first reading covers its last hour."""
    start, end = month_bounds("2027-01", BERLIN)
    shifted = [interval(start - timedelta(hours=1) + timedelta(days=d), 24 * 60) for d in range(31)]
    state, out = run(shifted)
    assert out == []  # the last hour, 22:00Z to 23:00Z on 31 January, is in February's first reading
    _, [total] = run([interval(end - timedelta(hours=1), 24 * 60)], state)
    assert total["month"] == "2027-01" and total["readings"] == 31


def test_months_follow_the_vendors_zone() -> None:
    """London's days of a summer month complete London's month (vendor 3), not Berlin's or UTC's."""
    _, [total] = run(local_days("2027-07", LONDON, source="vendor3/push"))
    assert (total["zone"], total["month_start"], total["month_end"]) == (
        "Europe/London", "2027-06-30T23:00:00Z", "2027-07-31T23:00:00Z")


# --- forecasts end at the next local month end -----------------------------------------------------

@pytest.mark.parametrize("month, tz, source, forecast_end, days", [
    ("2027-02", BERLIN, "vendor1/pull", "2027-03-31T22:00:00Z", (28, 31)),   # into summer time
    ("2027-09", BERLIN, "vendor1/pull", "2027-10-31T23:00:00Z", (30, 31)),   # out of it
    ("2027-12", LONDON, "vendor3/pull", "2028-02-01T00:00:00Z", (31, 31)),   # over a year's end
    ("2028-01", BERLIN, "vendor1/pull", "2028-02-29T23:00:00Z", (31, 29)),   # into a leap February
    ("2028-02", BERLIN, "vendor1/pull", "2028-03-31T22:00:00Z", (29, 31)),
])
def test_a_forecast_ends_at_the_next_months_local_end(month: str, tz: ZoneInfo, source: str, forecast_end: str,
                                                      days: tuple[int, int]) -> None:
    """The forecast covers the next local month exactly (not its days × 24 h from this month's end)."""
    _, [total] = run(local_days(month, tz, source, value=2.0))
    forecast = rules.forecast(total)
    assert forecast["interval_start"] == total["month_end"] and forecast["read_at"] == forecast_end
    assert forecast["value"] == round(2.0 * days[0] * days[1] / days[0], 3)
