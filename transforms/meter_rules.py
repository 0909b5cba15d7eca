"""The meter business rules as pure `state` functions: one reading per (meter, register, time), a month's
total once the month is covered, the next month's forecast, and key-customer detection per site.

Each runs with `save: now` (the record is written before the outputs exist), so each is idempotent:
the same message applied again after a crash changes nothing and answers the same output again (the
publish ids then collapse the repeat). That is why they keep what they counted by identity (a reading
by its time, a month total by meter and register) rather than adding into a running sum.

Months are UTC calendar months; an interval belongs to the month of its midpoint, so a vendor's local
day (23:00Z to 23:00Z for Berlin) counts in the month whose day it is.
"""

from __future__ import annotations

import calendar
from datetime import timedelta
from typing import Any

from transforms.meter_vendors import parse_iso, utc_text

QUALITY_RANK = {"forecast": 0, "estimated": 1, "actual": 2}
DEDUPE_HORIZON = timedelta(days=100)    # longer than any platform keeps readings (3 months)
COVERAGE_SLACK = 3600                   # a month in local days is an hour short or long across DST
MONTHS_KEPT = 3                         # per meter and register: enough to close one while the next starts
KEY_CUSTOMER_KWH = 5000.0               # more than this in a month ...
KEY_CUSTOMER_MONTHS = 3                 # ... in this many months ...
KEY_CUSTOMER_SPAN = 12                  # ... within a year (first to last month inclusive)
KEY_CUSTOMER_REGISTER = "1-0:1.8.0"     # electricity taken from the grid


# --- one reading per (meter, register, read_at), whichever path brought it ----------------------

def first_sighting(ctx: dict[str, Any]) -> dict[str, Any]:
    """Forward a reading the first time its (meter, register, read_at) is seen, or when it is better than
    what was forwarded (an actual after an estimate), or again from the same path (a crash repeat, or
    the vendor's correction); drop the copy another path brings. State: {read_at: [source, quality]}
    for the last DEDUPE_HORIZON of the meter register's readings."""
    reading, seen = ctx["message"], dict((ctx["state"] or {}).get("seen") or {})
    # an interval ending at a time and a register read at that time are two readings
    at = reading["read_at"] if reading.get("interval_start") else f"{reading['read_at']} read"
    source, quality = reading["source"], reading.get("quality", "actual")
    before = seen.get(at)
    if before is not None and before[0] != source and QUALITY_RANK[quality] <= QUALITY_RANK[before[1]]:
        return {"state": ctx["state"], "payload": None}
    seen[at] = [source, quality]
    horizon = utc_text(parse_iso(max(k[:20] for k in seen)) - DEDUPE_HORIZON)
    return {"state": {"seen": {k: v for k, v in seen.items() if k >= horizon}},
            "payload": {**reading, "interval_start": reading.get("interval_start")}}  # every key, for the id


# --- a month's total, once the month is covered ------------------------------------------------

def month_of(reading: dict[str, Any]) -> tuple[str, float]:
    """(`YYYY-MM` of the interval's midpoint, the interval's length in seconds)."""
    start, end = parse_iso(reading["interval_start"]), parse_iso(reading["read_at"])
    middle = start + (end - start) / 2
    return f"{middle.year:04d}-{middle.month:02d}", (end - start).total_seconds()


def month_seconds(month: str) -> int:
    year, number = int(month[:4]), int(month[5:])
    return calendar.monthrange(year, number)[1] * 86400


def month_progress(ctx: dict[str, Any]) -> dict[str, Any]:
    """Count an interval reading into its month (by read_at, so a better copy replaces the first); the
    reading that completes the month's coverage answers the month's total (`meter.month.completed`),
    and answers it again if it comes again. A better copy arriving after that corrects the record but
    publishes no new total. Register reads (no interval) and forecasts do not count."""
    reading, state = ctx["message"], ctx["state"] or {"months": {}}
    if not reading.get("interval_start") or reading.get("quality") == "forecast":
        return {"state": ctx["state"], "payload": None}
    month, length = month_of(reading)
    months = {k: dict(v) for k, v in state["months"].items()}
    if month not in months and months and month < min(months) and len(months) >= MONTHS_KEPT:
        return {"state": ctx["state"], "payload": None}   # older than what is kept: long closed
    entry = months.setdefault(month, {"values": {}, "completed_by": None})
    values = dict(entry["values"])
    values[reading["read_at"]] = [float(reading["value"]), length]
    entry["values"] = values
    at = reading["read_at"]
    if entry["completed_by"] is None and sum(v[1] for v in values.values()) >= month_seconds(month) - COVERAGE_SLACK:
        entry["completed_by"] = at
    for old in sorted(months)[:-MONTHS_KEPT]:
        del months[old]
    new_state = {"months": months, "unit": reading["unit"]}
    if entry["completed_by"] != at:
        return {"state": new_state, "payload": None}
    total = sum(v[0] for v in values.values())
    return {"state": new_state, "payload": {
        "meter_id": reading["meter_id"], "site_id": reading["site_id"], "register": reading["register"],
        "unit": reading["unit"], "month": month, "total": round(total, 3), "readings": len(values),
        "first_start": min(utc_text(parse_iso(k) - timedelta(seconds=v[1])) for k, v in values.items()),
        "last_end": max(values), "latest": month == max(months)}}


# --- the next month's forecast ---------------------------------------------------------------

def forecast(month_total: dict[str, Any]) -> dict[str, Any]:
    """A forecast reading for the month after a completed one: the same consumption per day, over the
    next month's days, from where the month's readings end."""
    month = month_total["month"]
    year, number = int(month[:4]), int(month[5:])
    following = (year + 1, 1) if number == 12 else (year, number + 1)
    days_now, days_next = calendar.monthrange(year, number)[1], calendar.monthrange(*following)[1]
    start = parse_iso(month_total["last_end"])
    return {"meter_id": month_total["meter_id"], "site_id": month_total["site_id"],
            "register": month_total["register"], "interval_start": utc_text(start),
            "read_at": utc_text(start + timedelta(days=days_next)),
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
    year, answer the candidate, once (and again only for the same month total coming again)."""
    total, state = ctx["message"], ctx["state"] or {"months": {}, "candidate": None}
    if total["register"] != KEY_CUSTOMER_REGISTER or total["unit"] != "kWh":
        return {"state": ctx["state"], "payload": None}
    trigger = f"{total['meter_id']}|{total['month']}"
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
             "meters": sorted({meter for m in run for meter in months[m]}), "detected_by": trigger}
    return {"state": {"months": months, "candidate": {"raised_by": trigger, "event": event}}, "payload": event}


def site_lookup(candidate: dict[str, Any]) -> dict[str, Any]:
    """The candidate, and the CRM site query the next `call` sends (`input: lookup`)."""
    return {"candidate": candidate, "lookup": {"site_id": candidate["site_id"]}}


def candidate_event(answer: dict[str, Any]) -> dict[str, Any]:
    """`crm.keycustomer.candidate`: the candidate with the CRM's account for the site (`call ... into: site`)."""
    site = answer.get("site") or {}
    return {**answer["candidate"], "account_id": site.get("account_id"), "site_kind": site.get("kind")}
