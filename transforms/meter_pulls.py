"""The monthly vendor pull as two pure functions for the `pull` step: `request(ctx)` builds one page's
query, `page(ctx)` reads one answer. Which vendors there are is configuration, not code: each tick is
one `each` entry of flows/meter-vendor-pulls.yaml, which names the vendor (its endpoint is
`meter_<vendor>`), the wire `format` it speaks (a PullFormat in a transforms module, e.g.
`meter_formats.VENDOR1` or `meter_espi.ESPI`) and the time `zone` its days are counted in:

    each:
      - {vendor: vendor5, format: meter_espi.ESPI, zone: Europe/Paris}

A new vendor is an endpoint and an entry in YAML, plus its format's one transform module when its wire
format is new. `runner.py validate` checks every entry (`PullTick`) with file and line.

The window is [since, until). `since` is the pull step's watermark: the `read_at` (interval end) of the
newest reading the last run took, so the next run starts exactly where the last one stopped. A
transform has no clock, so `until` is not "now": by default it is the first local midnight of the
month after `since`, in the vendor's zone (whole vendor days, one calendar month per run), which makes
the window a pure function of `since` - the same on every page and after a resume, as continuation
tokens and cursors require. A platform answers only intervals that have ended, so a run inside the
month stops at yesterday and the next run goes on from there. A tick may carry `until` (ISO with
offset) to pull further, e.g. to catch up on missed months, and `from` (ISO) to start a first run
inside the vendor's 3-month retention instead of the flow's `start`:
`runner.py trigger meter-vendor-pulls --only vendor=vendor1 --payload '{"from": "…"}'`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cache
from typing import Any, Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

UTC = timezone.utc


@dataclass(frozen=True)
class Window:
    """What one page's request is built from: the run's window in UTC, the vendor's zone, the page size
    (within the platform's cap) and the vendor's cursor for this page (None on the first)."""

    start: datetime
    end: datetime
    zone: ZoneInfo
    size: int
    cursor: Any
    page_size: int  # what the flow asked for, before the platform's cap


@dataclass(frozen=True)
class PullFormat:
    """How one kind of vendor platform is pulled: the query of a page, the reading of an answer
    (`{items, next, total}`, items canonical readings with source `<vendor>/pull`), its page-size cap."""

    name: str
    request: Callable[[Window], dict[str, Any]]
    page: Callable[[Any, str], dict[str, Any]]
    max_page: int


@cache
def pull_format(ref: str) -> PullFormat:
    """`module.NAME` → the PullFormat transforms.module.NAME; ValueError naming what exists."""
    module_name, _, name = ref.rpartition(".")
    if not module_name or not name:
        raise ValueError(f"format {ref!r} must be module.NAME of a PullFormat in transforms/")
    try:
        module = importlib.import_module(f"transforms.{module_name}")
    except ModuleNotFoundError:
        raise ValueError(f"format {ref!r}: no module transforms/{module_name.replace('.', '/')}.py") from None
    found = getattr(module, name, None)
    if not isinstance(found, PullFormat):
        known = sorted(n for n, v in vars(module).items() if isinstance(v, PullFormat))
        raise ValueError(f"format {ref!r}: transforms.{module_name} has {', '.join(known) or 'no PullFormat'}")
    return found


class PullTick(BaseModel):
    """One vendor's tick (an `each` entry of the pull flow, or a manual trigger's payload)."""

    model_config = ConfigDict(extra="forbid")

    vendor: str = Field(pattern=r"^[a-z0-9_-]+$", description="The vendor's name: its endpoint is meter_<vendor>, "
                        "its checkpoint readings:<vendor>, its readings' source <vendor>/pull.")
    format: str = Field(description="The wire format: a PullFormat as module.NAME in transforms/.",
                        examples=["meter_formats.VENDOR1", "meter_espi.ESPI"])
    zone: str = Field(description="IANA time zone the vendor's days and months are counted in.",
                      examples=["Europe/Berlin"])
    max_page_size: int | None = Field(None, ge=1, description="A lower page-size cap than the format's own.")
    from_: str | None = Field(None, alias="from", description="ISO start of a first run (manual ticks).")
    until: str | None = Field(None, description="ISO end of the window instead of the next month (catch-up).")

    @field_validator("format")
    @classmethod
    def _format(cls, v: str) -> str:
        pull_format(v)
        return v

    @field_validator("zone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (IANA names like Europe/Paris)") from None
        return v

    @field_validator("from_", "until")
    @classmethod
    def _instant(cls, v: str | None) -> str | None:
        if v is not None:
            parse_instant(v)
        return v


def parse_instant(text: str) -> datetime:
    moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset")
    return moment


def tick(ctx: dict[str, Any]) -> PullTick:
    """The tick's own fields out of a pull context (which also holds since, cursor, page_size, answer)."""
    fields = {k: ctx[k] for k in ("vendor", "format", "zone", "max_page_size", "from", "until") if ctx.get(k) is not None}
    if "format" not in fields or "zone" not in fields:
        raise ValueError(f"the tick for {ctx.get('vendor')!r} names no format and zone: trigger it from its `each` "
                         "entry (runner.py trigger meter-vendor-pulls --only vendor=<name> --payload '{...}')")
    return PullTick.model_validate(fields)


def next_month(moment: datetime, tz: ZoneInfo) -> datetime:
    """The first local midnight of the month after `moment`'s month in `tz`, as UTC."""
    local = moment.astimezone(tz)
    year, month = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
    return datetime(year, month, 1, tzinfo=tz).astimezone(UTC)


def window(ctx: dict[str, Any]) -> tuple[datetime, datetime]:
    """[start, end) of this run, in UTC (see the module docstring)."""
    t = tick(ctx)
    start = parse_instant(ctx["since"])
    if t.from_:
        start = max(start, parse_instant(t.from_))
    end = parse_instant(t.until) if t.until else next_month(start, ZoneInfo(t.zone))
    if end <= start:
        raise ValueError(f"empty window: until {end.isoformat()} is not after since {start.isoformat()}")
    return start.astimezone(UTC), end.astimezone(UTC)


def request(ctx: dict[str, Any]) -> dict[str, Any]:
    """One page's call body, in the tick's format (query parameters of a GET; `_url` for a next link)."""
    t = tick(ctx)
    fmt = pull_format(t.format)
    start, end = window(ctx)
    asked = int(ctx.get("page_size") or 100)
    cap = min(fmt.max_page, t.max_page_size or fmt.max_page)
    return fmt.request(Window(start, end, ZoneInfo(t.zone), max(1, min(asked, cap)), ctx.get("cursor"), asked))


request.tick_model = PullTick  # type: ignore[attr-defined]  # validate checks each `each` entry against it


def page(ctx: dict[str, Any]) -> dict[str, Any]:
    """`{items, next, total}`: canonical MeterReadings (source `<vendor>/pull`), the vendor's next-page
    cursor or None, and the platform's own count where it gives one."""
    t = tick(ctx)
    result = pull_format(t.format).page(ctx["answer"], t.vendor)
    return {"items": result["items"], "next": result.get("next"), "total": result.get("total")}
