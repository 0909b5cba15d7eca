"""The monthly vendor pull as two pure functions for the `pull` step: `request(ctx)` builds one page's
query, `page(ctx)` reads one answer; both dispatch on `ctx["vendor"]` (vendor1..vendor4).

The window is [since, until). `since` is the pull step's watermark: the `read_at` (interval end) of the
newest reading the last run took, so the next run starts exactly where the last one stopped. A
transform has no clock, so `until` is not "now": by default it is the first local midnight of the
month after `since`, in the vendor's own time zone (whole vendor days, one calendar month per run),
which makes the window a pure function of `since` - the same on every page and after a resume, as
vendor 4's continuation tokens and vendor 2's cursors require. A platform answers only intervals
that have ended, so a run inside the month stops at yesterday and the next run goes on from there.
A tick may carry `until` (ISO with offset) to pull further, e.g. to catch up on missed months, and
`from` (ISO) to start a first run inside the vendor's 3-month retention instead of the flow's
`start`: `runner.py trigger meter-vendor-pulls --payload '{"vendor": "vendor1", "from": "…"}'`.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Callable
from zoneinfo import ZoneInfo

from transforms import meter_vendors as mv

UTC = mv.UTC
ZONES = {"vendor1": ZoneInfo("Europe/Berlin"), "vendor2": ZoneInfo("Europe/Rome"),
         "vendor3": ZoneInfo("Europe/London"), "vendor4": ZoneInfo("Europe/Lisbon")}
MAX_PAGE = {"vendor1": 1000, "vendor2": 200, "vendor3": 5000, "vendor4": 1000}  # the platforms' own caps


def _vendor(ctx: dict[str, Any]) -> str:
    vendor = ctx.get("vendor")
    if vendor not in ZONES:
        raise ValueError(f"unknown vendor {vendor!r} (known: {', '.join(ZONES)})")
    return vendor


def next_month(moment: datetime, tz: ZoneInfo) -> datetime:
    """The first local midnight of the month after `moment`'s month in `tz`, as UTC."""
    local = moment.astimezone(tz)
    year, month = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
    return datetime(year, month, 1, tzinfo=tz).astimezone(UTC)


def window(ctx: dict[str, Any]) -> tuple[datetime, datetime]:
    """[start, end) of this run, in UTC (see the module docstring)."""
    tz = ZONES[_vendor(ctx)]
    start = mv.parse_iso(str(ctx["since"]).replace("Z", "+00:00"))
    if ctx.get("from"):
        start = max(start, mv.parse_iso(str(ctx["from"]).replace("Z", "+00:00")))
    end = mv.parse_iso(str(ctx["until"]).replace("Z", "+00:00")) if ctx.get("until") else next_month(start, tz)
    if end <= start:
        raise ValueError(f"empty window: until {end.isoformat()} is not after since {start.isoformat()}")
    return start.astimezone(UTC), end.astimezone(UTC)


def _size(ctx: dict[str, Any], vendor: str) -> int:
    return max(1, min(int(ctx.get("page_size") or 100), MAX_PAGE[vendor]))


def request(ctx: dict[str, Any]) -> dict[str, Any]:
    """One page's call body (query parameters of a GET; `_url` for vendor 2's next links)."""
    vendor, cursor = _vendor(ctx), ctx.get("cursor")
    size = _size(ctx, vendor)
    if vendor == "vendor2" and cursor:
        return {"_url": cursor}  # an absolute next link, followed as given
    start, end = window(ctx)
    tz = ZONES[vendor]
    if vendor == "vendor1":
        return {"from": start.astimezone(tz).isoformat(), "to": end.astimezone(tz).isoformat(),
                "page": int(cursor or 1), "pageSize": size}
    if vendor == "vendor2":  # pages by meters, each with all its days: ask for about page_size readings
        days = max(1, math.ceil((end - start).total_seconds() / 86400))
        fmt = "%Y%m%d%H%M"
        return {"from": start.astimezone(tz).strftime(fmt), "to": end.astimezone(tz).strftime(fmt),
                "limit": max(1, min(math.ceil(int(ctx.get("page_size") or 100) / days), MAX_PAGE[vendor]))}
    if vendor == "vendor3":
        return {"since": int(start.timestamp()), "until": int(end.timestamp()), "offset": int(cursor or 0),
                "limit": size}
    body = {"start": _utc_ms(start), "end": _utc_ms(end), "maxResults": size}
    if cursor:
        body["continuationToken"] = cursor
    return body


def _utc_ms(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _total(answer: dict[str, Any], key: str) -> int | None:
    value = answer.get(key)
    return int(value) if isinstance(value, int) else None


_PAGES: dict[str, tuple[Callable[[dict[str, Any]], dict[str, Any]], str | None]] = {
    "vendor1": (mv.vendor1_page, "totalItems"), "vendor2": (mv.vendor2_page, None),
    "vendor3": (mv.vendor3_page, "total"), "vendor4": (mv.vendor4_page, None)}


def page(ctx: dict[str, Any]) -> dict[str, Any]:
    """`{items, next, total}`: canonical MeterReadings (source
    `vendorN/pull`), the vendor's next-page cursor or None, and the platform's count where it gives one."""
    convert, total_key = _PAGES[_vendor(ctx)]
    answer = ctx["answer"]
    if not isinstance(answer, dict):
        raise ValueError(f"a page answer must be a JSON object, got {type(answer).__name__}")
    result = convert(answer)
    return {"items": result["items"], "next": result["next"],
            "total": _total(answer, total_key) if total_key else None}
