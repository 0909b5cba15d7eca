"""The meter business rules as pure `state` functions: one reading per (meter, register, time), a month's
total once the month is covered, the next month's forecast, and key-customer detection per site.

Each runs with `save: now` (the record is written before the outputs exist), so each is idempotent:
the same message applied again after a crash changes nothing and answers the same output again (the
publish ids then collapse the repeat). That is why they keep what they counted by identity (a reading
by its time, a month total by meter, register and revision) rather than adding into a running sum.

Months are the meter's local calendar months (its vendor's time zone): an interval belongs to the
month of its midpoint, so a vendor's local day (23:00Z to 23:00Z for Berlin) counts in the month whose
day it is, and the month is complete once its intervals cover it from its first local midnight to the
next month's (one hour less in March, one more in October, 29 days in a leap February).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from engine.months import add_months, month_bounds, month_name
from transforms.meter_vendors import parse_iso, utc_text

QUALITY_RANK = {"forecast": 0, "estimated": 1, "actual": 2}
DEDUPE_HORIZON = timedelta(days=100)    # longer than any platform keeps readings (3 months)
SUB_DAILY = timedelta(hours=12)         # shorter intervals are kept per UTC day, the rest per UTC month
HOME_ZONE = ZoneInfo("Europe/Brussels")  # a meter whose vendor's zone is unknown keeps PLU's months
UTC_ZONE = ZoneInfo("UTC")
LONGEST_INTERVAL = timedelta(hours=25)  # a local day across the autumn change: how far a reading may reach
MONTHS_KEPT = 3                         # per meter and register: enough to close one while the next starts
KEY_CUSTOMER_KWH = 5000.0               # more than this in a month ...
KEY_CUSTOMER_MONTHS = 3                 # ... in this many months ...
KEY_CUSTOMER_SPAN = 12                  # ... within a year (first to last month inclusive)
KEY_CUSTOMER_REGISTER = "1-0:1.8.0"     # electricity taken from the grid


# --- one reading per (meter, register, read_at), whichever path brought it ----------------------

def seen_slot(reading: dict[str, Any]) -> dict[str, Any]:
    """The reading with `seen_slot`, the part of its meter register's history whose KV record keeps it
    (meter-reading-dedupe keys its state on it): the UTC day of `read_at` for intervals shorter than
    SUB_DAILY (96 entries for a 15-minute meter), else its UTC month (about 30 for daily readings,
    register reads). Every copy of a reading has the same slot, so it meets the first one's entry; a
    record stays small however many readings a meter sends, and only a few records per register live."""
    return {**reading, "seen_slot": slot_of(reading)}


def slot_of(reading: dict[str, Any]) -> str:
    at = parse_iso(reading["read_at"]).astimezone(UTC_ZONE)
    start = reading.get("interval_start")
    if start and at - parse_iso(start) < SUB_DAILY:
        return at.strftime("%Y-%m-%d")
    return at.strftime("%Y-%m")


def first_sighting(ctx: dict[str, Any]) -> dict[str, Any]:
    """Forward a reading the first time its (meter, register, read_at) is seen, or when it is better than
    what was forwarded (an actual after an estimate), or again from the same path (a crash repeat, or
    the vendor's correction); drop the copy another path brings. State: {read_at: [source, quality]}
    of the readings in the record's slot (`seen_slot`; the record expires `keep` after its last change),
    trimmed to the last DEDUPE_HORIZON should a flow key it coarser. `read_at` is compared as an
    instant: two spellings of one time are one reading."""
    reading = {k: v for k, v in ctx["message"].items() if k != "seen_slot"}
    seen = dict((ctx["state"] or {}).get("seen") or {})
    read_at = utc_text(parse_iso(reading["read_at"]))
    # an interval ending at a time and a register read at that time are two readings
    at = read_at if reading.get("interval_start") else f"{read_at} read"
    source, quality = reading["source"], reading.get("quality", "actual")
    before = seen.get(at)
    if before is not None and before[0] != source and QUALITY_RANK[quality] <= QUALITY_RANK[before[1]]:
        return {"state": ctx["state"], "payload": None}
    seen[at] = [source, quality]
    horizon = utc_text(parse_iso(max(k[:20] for k in seen)) - DEDUPE_HORIZON)
    return {"state": {"seen": {k: v for k, v in seen.items() if k >= horizon}},
            "payload": {**reading, "interval_start": reading.get("interval_start")}}  # every key, for the id


def split_seen(state: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """An old record (one per meter register, before `seen_slot`) as the slot records that keep its
    entries now. The old record does not keep interval lengths: the register's usual spacing decides
    (the median gap between its interval entries); with fewer than two, an entry goes to both its day
    and its month, so a later copy meets it whichever slot it has."""
    entries = []  # (instant, is a register read, [source, quality]); old records kept read_at as sent
    for at, value in ((state or {}).get("seen") or {}).items():
        read = at.endswith(" read")
        entries.append((parse_iso(at.removesuffix(" read")).astimezone(UTC_ZONE), read, list(value)))
    intervals = sorted(moment for moment, read, _ in entries if not read)
    gaps = sorted(b - a for a, b in zip(intervals, intervals[1:]))
    sub_daily = gaps[len(gaps) // 2] < SUB_DAILY if gaps else None
    out: dict[str, dict[str, Any]] = {}
    for moment, read, value in entries:
        day, month = moment.strftime("%Y-%m-%d"), moment.strftime("%Y-%m")
        slots = [month] if read or sub_daily is False else [day] if sub_daily else [day, month]
        at = utc_text(moment) + (" read" if read else "")
        for slot in slots:
            out.setdefault(slot, {"seen": {}})["seen"][at] = value
    return out


def merge_seen(kept: dict[str, Any] | None, moved: dict[str, Any]) -> dict[str, Any]:
    """A slot record with an old record's entries moved in: per reading the better quality, and on a
    tie the slot record's own entry (written later, by the new flow)."""
    seen = dict(moved["seen"])
    for at, value in ((kept or {}).get("seen") or {}).items():
        if at not in seen or QUALITY_RANK[value[1]] >= QUALITY_RANK[seen[at][1]]:
            seen[at] = value
    return {"seen": seen}


# --- a month's total, once the month is covered ------------------------------------------------

def zone_of(reading: dict[str, Any]) -> ZoneInfo:
    """The meter's time zone, whose calendar months its totals follow: the reading's `zone` (its vendor's,
    stamped by the pull from its `each` entry or by the push format), else HOME_ZONE."""
    name = reading.get("zone")
    return _zone(name) if name else HOME_ZONE


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def month_of(reading: dict[str, Any], tz: ZoneInfo = UTC_ZONE) -> tuple[str, float]:
    """(`YYYY-MM` of the interval's midpoint in `tz`, the interval's length in seconds)."""
    start, end = parse_iso(reading["interval_start"]), parse_iso(reading["read_at"])
    return month_name(start + (end - start) / 2, tz), (end - start).total_seconds()


def month_seconds(month: str, tz: ZoneInfo = UTC_ZONE) -> float:
    """The month's length in `tz`: 31 days less an hour for March in Brussels, more an hour for October."""
    start, end = month_bounds(month, tz)
    return (end - start).total_seconds()


def _covered(months: dict[str, Any], month: str, tz: ZoneInfo) -> bool:
    """Whether the intervals kept for the meter register cover `month` from its first local midnight to
    the next month's, without a hole (a reading straddling the edge counts for the part inside)."""
    start, end = month_bounds(month, tz)
    low, high = utc_text(start), utc_text(end + LONGEST_INTERVAL)
    spans = []
    for name, entry in months.items():
        for at, (_, length, *_rest) in entry["values"].items():
            if name != month and not low < at < high:  # a neighbour's reading far from this month's edges
                continue
            stop = parse_iso(at)
            spans.append((max(stop - timedelta(seconds=length), start), min(stop, end)))
    reached = start
    for begin, stop in sorted(spans):
        if begin > reached:
            return False
        reached = max(reached, stop)
    return reached >= end


def _parts(end: datetime, length: float, month: str, tz: ZoneInfo) -> dict[str, float]:
    """Seconds of the interval ending at `end` inside its month and, when it straddles an edge, inside
    the neighbouring month: what it adds to each month's filled time."""
    start = end - timedelta(seconds=length)
    first, last = month_bounds(month, tz)
    parts = {month: (min(end, last) - max(start, first)).total_seconds()}
    if start < first:
        parts[month_name(start, tz)] = (first - start).total_seconds()
    if end > last:
        parts[month_name(end - timedelta(microseconds=1), tz)] = (end - last).total_seconds()
    return parts


def month_progress(ctx: dict[str, Any]) -> dict[str, Any]:
    """Count an interval reading into its local month (by read_at, so a better copy replaces the first).
    A month is complete when its readings cover it to its local end (DST months included: 743 hours in
    March, 745 in October); the reading that completes it answers the month's total on
    `meter.month.completed`, and answers it again if it comes again (a crash repeat). A reading that
    changes a completed month's total (a better copy, a late one) answers a corrected total: `revision`
    counts up, `corrected` is true. Register reads (no interval) and forecasts do not count.

    State: per month its readings {read_at: [value, seconds, quality]} and the last answer; `filled`
    per month, the seconds its readings fill (kept as they come, so only a month that looks full is
    checked for holes)."""
    reading, state = ctx["message"], ctx["state"] or {"months": {}}
    if not reading.get("interval_start") or reading.get("quality") == "forecast":
        return {"state": ctx["state"], "payload": None}
    tz = zone_of(reading)
    month, length = month_of(reading, tz)
    months = {k: dict(v) for k, v in state["months"].items()}
    if month not in months and months and month < min(months) and len(months) >= MONTHS_KEPT:
        return {"state": ctx["state"], "payload": None}   # older than what is kept: long closed
    entry = months.setdefault(month, {"values": {}, "answer": None})
    values = dict(entry["values"])
    filled = dict(state.get("filled") or {})
    at, value = reading["read_at"], [float(reading["value"]), length, reading.get("quality", "actual")]
    before = values.get(at)
    parts = _parts(parse_iso(at), length, month, tz)
    if before is None or before[1] != length:
        for name, seconds in parts.items():
            filled[name] = filled.get(name, 0.0) + seconds
        if before is not None:
            for name, seconds in _parts(parse_iso(at), before[1], month, tz).items():
                filled[name] = filled.get(name, 0.0) - seconds
    values[at] = value
    entry["values"] = values
    for old in sorted(months)[:-MONTHS_KEPT]:
        del months[old]
    oldest = min(months)
    new_state = {"months": months, "filled": {k: v for k, v in filled.items() if k >= oldest},
                 "unit": reading["unit"], "zone": tz.key}
    touched = [name for name in sorted(parts) if name in months]  # its month, and one it reaches into
    if before == value:  # nothing new: the same answer again when this reading gave it (a crash repeat)
        given = [months[n]["answer"]["payload"] for n in touched
                 if months[n].get("answer") and months[n]["answer"]["by"] == at]
        return {"state": new_state, "payload": given[0] if given else None}
    for name in touched:
        payload = _completed(months, name, filled.get(name, 0.0), tz, reading)
        if payload is not None:
            return {"state": new_state, "payload": payload}
    return {"state": new_state, "payload": None}


def _completed(months: dict[str, Any], month: str, filled: float, tz: ZoneInfo,
               reading: dict[str, Any]) -> dict[str, Any] | None:
    """The month's total when `reading` completed it or changed its total since it was answered (and
    the month's answer is updated), else None."""
    if filled < month_seconds(month, tz) - 1 or not _covered(months, month, tz):
        return None
    entry = months[month] = dict(months[month])
    values, answer = entry["values"], entry.get("answer")
    total = round(sum(v[0] for v in values.values()), 3)
    if answer is not None and (answer["payload"]["total"], answer["payload"]["readings"]) == (total, len(values)):
        return None  # a better copy of the same value: the total stands
    revision = 1 if answer is None else answer["payload"]["revision"] + 1
    start, end = month_bounds(month, tz)
    payload = {
        "meter_id": reading["meter_id"], "site_id": reading["site_id"], "register": reading["register"],
        "unit": reading["unit"], "month": month, "total": total, "readings": len(values),
        "first_start": min(utc_text(parse_iso(k) - timedelta(seconds=v[1])) for k, v in values.items()),
        "last_end": max(values), "latest": month == max(months), "zone": tz.key,
        "month_start": utc_text(start), "month_end": utc_text(end), "revision": revision, "corrected": revision > 1}
    entry["answer"] = {"by": reading["read_at"], "payload": payload}
    return payload


# --- the next month's forecast ---------------------------------------------------------------

def forecast(month_total: dict[str, Any]) -> dict[str, Any]:
    """A forecast reading for the month after a completed one: the same consumption per day, over the
    next month's days, from where the month's readings end to the next month's local end (so a
    forecast for April in Brussels ends at 30 April 22:00Z, not 30 × 24 h after 31 March)."""
    tz = ZoneInfo(month_total.get("zone") or HOME_ZONE.key)
    month = month_total["month"]
    this_start, this_end = month_bounds(month, tz)
    next_end = add_months(this_end, 1, tz)
    days_now = (this_end.astimezone(tz).date() - this_start.astimezone(tz).date()).days
    days_next = (next_end.astimezone(tz).date() - this_end.astimezone(tz).date()).days
    start = parse_iso(month_total["last_end"])
    return {"meter_id": month_total["meter_id"], "site_id": month_total["site_id"],
            "register": month_total["register"], "interval_start": utc_text(start),
            "read_at": utc_text(next_end),
            "value": round(month_total["total"] * days_next / days_now, 3), "unit": month_total["unit"],
            "quality": "forecast", "source": "hub/forecast"}


# --- key customers -------------------------------------------------------------------------------

def _month_index(month: str) -> int:
    return int(month[:4]) * 12 + int(month[5:]) - 1


def heavy_run(totals: dict[str, float]) -> list[str] | None:
    """The first KEY_CUSTOMER_MONTHS months above KEY_CUSTOMER_KWH that fit in KEY_CUSTOMER_SPAN months."""
    heavy = sorted(m for m, kwh in totals.items() if kwh > KEY_CUSTOMER_KWH)
    for i in range(len(heavy) - KEY_CUSTOMER_MONTHS + 1):
        run = heavy[i:i + KEY_CUSTOMER_MONTHS]
        if _month_index(run[-1]) - _month_index(run[0]) < KEY_CUSTOMER_SPAN:
            return run
    return None


def site_months(ctx: dict[str, Any]) -> dict[str, Any]:
    """Keep each electricity meter's completed month totals per site (by meter, so a total sent again
    replaces itself); the first time KEY_CUSTOMER_MONTHS months above KEY_CUSTOMER_KWH fall within a
    year, answer the candidate, once (and again only for the same month total coming again; a corrected
    total replaces the meter's month and may raise it, never raise it twice)."""
    total, state = ctx["message"], ctx["state"] or {"months": {}, "candidate": None}
    if total["register"] != KEY_CUSTOMER_REGISTER or total["unit"] != "kWh":
        return {"state": ctx["state"], "payload": None}
    trigger = f"{total['meter_id']}|{total['month']}|r{total.get('revision', 1)}"  # a corrected total is new
    candidate = state.get("candidate")
    if candidate is not None:
        return {"state": state, "payload": candidate["event"] if candidate["raised_by"] == trigger else None}
    months = {k: dict(v) for k, v in state["months"].items()}
    months.setdefault(total["month"], {})[total["meter_id"]] = float(total["total"])
    newest = max(_month_index(m) for m in months)
    months = {m: v for m, v in months.items() if newest - _month_index(m) < KEY_CUSTOMER_SPAN}
    sums = {m: round(sum(v.values()), 3) for m, v in months.items()}
    run = heavy_run(sums)
    if run is None:
        return {"state": {"months": months, "candidate": None}, "payload": None}
    event = {"site_id": total["site_id"], "months": {m: sums[m] for m in run}, "threshold_kwh": KEY_CUSTOMER_KWH,
             "meters": sorted({meter for m in run for meter in months[m]}), "detected_by": trigger.rsplit("|", 1)[0]}
    return {"state": {"months": months, "candidate": {"raised_by": trigger, "event": event}}, "payload": event}


def site_lookup(candidate: dict[str, Any]) -> dict[str, Any]:
    """The candidate, and the CRM site query the next `call` sends (`input: lookup`)."""
    return {"candidate": candidate, "lookup": {"site_id": candidate["site_id"]}}


def candidate_event(answer: dict[str, Any]) -> dict[str, Any]:
    """`crm.keycustomer.candidate`: the candidate with the CRM's account for the site (`call ... into: site`)."""
    site = answer.get("site") or {}
    return {**answer["candidate"], "account_id": site.get("account_id"), "site_kind": site.get("kind")}
