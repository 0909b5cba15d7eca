"""The wire formats of the four JSON vendor platforms as PullFormats for the monthly pull
(transforms/meter_pulls.py): how each asks for a page (time spelling, paging) and reads one; the
records themselves are read by transforms/meter_vendors.py. Flows name them as `meter_formats.VENDOR1` …
"""

from __future__ import annotations

import math
from typing import Any, Callable

from transforms import meter_vendors as mv
from transforms.meter_pulls import PullFormat, Window

UTC = mv.UTC


def _utc_ms(moment: Any) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _as(vendor: str, result: dict[str, Any], own: str) -> dict[str, Any]:
    """The readings' source names the configured vendor, whatever the format's own name."""
    if vendor != own:
        source = f"{vendor}/pull"
        for item in result["items"]:
            item["source"] = source
    return result


def _total(answer: dict[str, Any], key: str) -> int | None:
    value = answer.get(key)
    return int(value) if isinstance(value, int) else None


def _json_page(read: Callable[[dict[str, Any]], dict[str, Any]], own: str, total_key: str | None
               ) -> Callable[[Any, str], dict[str, Any]]:
    def page(answer: Any, vendor: str) -> dict[str, Any]:
        if not isinstance(answer, dict):
            raise ValueError(f"a {own} page answer must be a JSON object, got {type(answer).__name__}")
        result = _as(vendor, read(answer), own)
        return {**result, "total": _total(answer, total_key) if total_key else None}
    return page


def _v1(w: Window) -> dict[str, Any]:  # ISO times with the vendor's offsets, numbered pages from 1
    return {"from": w.start.astimezone(w.zone).isoformat(), "to": w.end.astimezone(w.zone).isoformat(),
            "page": int(w.cursor or 1), "pageSize": w.size}


def _v2(w: Window) -> dict[str, Any]:
    """Compact Europe/Rome wall time (the wire's own zone); pages by meters, each with all its days,
    so ask for about page_size readings; then the absolute next links as given."""
    if w.cursor:
        return {"_url": w.cursor}
    days = max(1, math.ceil((w.end - w.start).total_seconds() / 86400))
    fmt = "%Y%m%d%H%M"
    return {"from": w.start.astimezone(mv.ROME).strftime(fmt), "to": w.end.astimezone(mv.ROME).strftime(fmt),
            "limit": max(1, min(math.ceil(w.page_size / days), VENDOR2.max_page))}


def _v3(w: Window) -> dict[str, Any]:  # epoch seconds, offset/limit
    return {"since": int(w.start.timestamp()), "until": int(w.end.timestamp()), "offset": int(w.cursor or 0),
            "limit": w.size}


def _v4(w: Window) -> dict[str, Any]:  # UTC with milliseconds, continuation tokens
    body: dict[str, Any] = {"start": _utc_ms(w.start), "end": _utc_ms(w.end), "maxResults": w.size}
    if w.cursor:
        body["continuationToken"] = w.cursor
    return body


VENDOR1 = PullFormat("vendor1", _v1, _json_page(mv.vendor1_page, "vendor1", "totalItems"), max_page=1000)
VENDOR2 = PullFormat("vendor2", _v2, _json_page(mv.vendor2_page, "vendor2", None), max_page=200)
VENDOR3 = PullFormat("vendor3", _v3, _json_page(mv.vendor3_page, "vendor3", "total"), max_page=5000)
VENDOR4 = PullFormat("vendor4", _v4, _json_page(mv.vendor4_page, "vendor4", None), max_page=1000)
