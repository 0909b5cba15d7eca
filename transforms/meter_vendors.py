"""The four smart-meter vendors' reading records as the one canonical reading (schemas/meter.py).

Pure functions (no clock, no I/O): the hub pulls and receives pushes in four wire formats that differ
in field names, nesting, units (Wh, dm³, DLMS scalers, MWh), timestamps (ISO with offsets, compact
local `yyyyMMddHHmm` in Europe/Rome, epoch seconds, UTC with milliseconds) and quality codes. Every
function answers the same JSON-able dict, with times as `YYYY-MM-DDTHH:MM:SSZ` text, so that
(meter, register, read_at) is one key across vendors and across pull and push. A record that cannot
be read unambiguously raises ValueError (the flow dead-letters it) rather than guessing.

`vendorN_page(answer)` turns one page of a pull answer into `{"items": [...], "next": ...}`, where
`next` is what the vendor pages by (page number, next URL, offset, continuation token) or None.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

UTC = timezone.utc
ROME = ZoneInfo("Europe/Rome")
V3_ZONE, V4_ZONE = "Europe/London", "Europe/Lisbon"  # the pushing vendors' days (flows/meter-vendor-pulls.yaml)

# unit -> (canonical unit, factor): every value leaves in kWh or m³
_UNITS = {"Wh": ("kWh", Decimal("0.001")), "kWh": ("kWh", Decimal(1)), "MWh": ("kWh", Decimal(1000)),
          "dm3": ("m3", Decimal("0.001")), "m3": ("m3", Decimal(1))}
_MEDIA = {"electricity": "1-0", "gas": "7-0"}
_FULL_OBIS = re.compile(r"^(\d{1,3})-(\d{1,3}):(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?:\*\d{1,3})?$")
_SHORT_OBIS = re.compile(r"^(\d{1,3})\.(\d{1,3})\.(\d{1,3})$")

V1_QUALITY = {"A": "actual", "E": "estimated", "F": "forecast"}
V2_QUALITY = {"M": "actual", "S": "estimated", "P": "forecast"}
V2_CHANNELS = {"A+": "1-0:1.8.0", "A-": "1-0:2.8.0", "VOL": "7-0:3.0.0"}
V3_QUALITY = {0: "actual", 1: "estimated", 2: "forecast"}
V3_REGISTERS = {"E": "1-0:1.8.0", "G": "7-0:3.0.0"}
V4_QUALITY = {"VALID": "actual", "SUBSTITUTED": "estimated", "PREDICTED": "forecast"}
V4_MEDIA = {"ELECTRICITY": "electricity", "GAS": "gas"}


# --- building blocks ---------------------------------------------------------------------------

def utc_text(moment: datetime) -> str:
    """One spelling for every instant (UTC, whole seconds, `Z`), so de-duplication keys compare."""
    if moment.tzinfo is None:
        raise ValueError(f"naive time {moment.isoformat()}: a UTC offset is required")
    return moment.astimezone(UTC).isoformat(timespec="seconds")[:19] + "Z"  # faster than strftime


def parse_iso(text: str) -> datetime:
    """ISO 8601 with an offset or `Z` (milliseconds allowed); a time without offset is refused."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset")
    return moment


def local_time(naive: datetime, tz: ZoneInfo, dst: bool | None = None) -> datetime:
    """A wall-clock time in `tz` as an aware instant; `dst` picks the summer or winter copy of the
    repeated hour when clocks go back. A time in the spring gap, or a repeated one without `dst`, raises."""
    first, second = naive.replace(tzinfo=tz, fold=0), naive.replace(tzinfo=tz, fold=1)
    if first.utcoffset() == second.utcoffset():
        return first
    if first.astimezone(UTC).astimezone(tz).replace(tzinfo=None) != naive:
        raise ValueError(f"{naive:%Y-%m-%d %H:%M} does not exist in {tz.key} (clocks go forward)")
    if dst is None:
        raise ValueError(f"{naive:%Y-%m-%d %H:%M} happens twice in {tz.key}: the DST flag is missing")
    return first if dst else second  # fold=0 is the earlier copy, still on summer time


def parse_compact(text: str, tz: ZoneInfo, dst: bool | None = None) -> datetime:
    """`yyyyMMddHHmm` in the vendor's local time zone."""
    if len(text) != 12 or not text.isdigit():
        raise ValueError(f"{text!r} is not yyyyMMddHHmm")
    naive = datetime(int(text[:4]), int(text[4:6]), int(text[6:8]), int(text[8:10]), int(text[10:]))  # cheaper than strptime
    return local_time(naive, tz, dst)


def parse_epoch(seconds: Any) -> datetime:
    """Unix epoch seconds (an int, or an integral float or string)."""
    value = Decimal(str(seconds))
    if value != value.to_integral_value():
        raise ValueError(f"epoch seconds {seconds!r} are not whole")
    return datetime.fromtimestamp(int(value), UTC)


def convert(value: Any, unit: str, scaler: int = 0) -> tuple[float, str]:
    """A vendor quantity (int, float or decimal text, times 10**scaler) in kWh or m³."""
    if unit not in _UNITS:
        raise ValueError(f"unknown unit {unit!r} (known: {', '.join(_UNITS)})")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"value {value!r} is not a number")
    try:
        amount = Decimal(str(value)).scaleb(scaler)
    except InvalidOperation:
        raise ValueError(f"value {value!r} is not a number") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"value {value!r} must be a finite number >= 0")
    canonical, factor = _UNITS[unit]
    return float(amount * factor), canonical


def obis_code(code: str, medium: str = "electricity") -> str:
    """Full `A-B:C.D.E` OBIS form; a short `C.D.E` takes its A-B from the medium (1-0 power, 7-0 gas)."""
    full = _FULL_OBIS.match(code)
    if full:
        return "{}-{}:{}.{}.{}".format(*full.groups())
    short = _SHORT_OBIS.match(code)
    if short and medium in _MEDIA:
        return f"{_MEDIA[medium]}:{'.'.join(short.groups())}"
    raise ValueError(f"{code!r} is not an OBIS code (medium {medium!r})")


def _code(table: dict[Any, str], code: Any, what: str) -> str:
    try:
        return table[code]
    except (KeyError, TypeError):
        raise ValueError(f"unknown {what} {code!r} (known: {', '.join(map(str, table))})") from None


def _reading(vendor: str, path: str, meter: Any, site: Any, register: str, start: datetime, end: datetime,
             value: float, unit: str, quality: str) -> dict[str, Any]:
    start, end = start.astimezone(UTC), end.astimezone(UTC)  # same-zone comparisons ignore `fold`
    if end <= start:
        raise ValueError(f"interval end {end.isoformat()} is not after its start {start.isoformat()}")
    if not meter or not site:
        raise ValueError("meter and site ids are required")
    if (unit == "m3") != register.startswith("7-"):
        raise ValueError(f"unit {unit} does not fit register {register} (m3 is for gas, 7-0:...)")
    return {"meter_id": str(meter), "site_id": str(site), "register": register, "interval_start": utc_text(start),
            "read_at": utc_text(end), "value": value, "unit": unit, "quality": quality, "source": f"{vendor}/{path}"}


# --- vendor 1: flat records, Wh / dm³, ISO 8601 with local offsets, page numbers ----------------

def vendor1_reading(record: dict[str, Any]) -> dict[str, Any]:
    """`{"meterId", "marketLocation", "obis", "from", "to", "value", "unit", "status"}`."""
    value, unit = convert(record["value"], record["unit"])
    return _reading("vendor1", "pull", record["meterId"], record["marketLocation"], obis_code(record["obis"]),
                    parse_iso(record["from"]), parse_iso(record["to"]), value, unit,
                    _code(V1_QUALITY, record["status"], "vendor1 status"))


def vendor1_page(answer: dict[str, Any]) -> dict[str, Any]:
    """Pages are numbered from 1; the last one is `totalPages`."""
    items = [vendor1_reading(r) for r in answer["items"]]
    more = answer["page"] < answer["totalPages"] and bool(items)
    return {"items": items, "next": answer["page"] + 1 if more else None}


# --- vendor 2: per meter, channels of values, decimal text, compact Europe/Rome, next URLs ------

def vendor2_readings(record: dict[str, Any]) -> list[dict[str, Any]]:
    """`{"pod", "meter": {"serial", "medium"}, "channels": [{"code", "unit", "values": [...]}]}`;
    a value is `{"from", "to", "v", "q"}` plus `fromDst`/`toDst` when its time is in the repeated hour."""
    readings = []
    for channel in record["channels"]:
        register = _code(V2_CHANNELS, channel["code"], "vendor2 channel")
        for item in channel["values"]:
            value, unit = convert(item["v"], channel["unit"])
            readings.append(_reading(
                "vendor2", "pull", record["meter"]["serial"], record["pod"], register,
                parse_compact(item["from"], ROME, item.get("fromDst")), parse_compact(item["to"], ROME, item.get("toDst")),
                value, unit, _code(V2_QUALITY, item["q"], "vendor2 quality")))
    return readings


def vendor2_page(answer: dict[str, Any]) -> dict[str, Any]:
    """The next page is the absolute URL in `links.next`, absent on the last page."""
    items = [reading for record in answer["data"] for reading in vendor2_readings(record)]
    return {"items": items, "next": (answer.get("links") or {}).get("next") or None}


# --- vendor 3: device/reading nesting, epoch seconds + duration, DLMS scaler, offset/limit ------

def vendor3_reading(record: dict[str, Any], path: str = "pull") -> dict[str, Any]:
    """`{"device": {"id", "installation"}, "commodity": "E"|"G", "reading": {"start", "duration",
    "value", "scaler", "unit", "qc"}}`; the quantity is value x 10**scaler in `unit`."""
    reading = record["reading"]
    start = parse_epoch(reading["start"])
    value, unit = convert(reading["value"], reading["unit"], int(reading.get("scaler", 0)))
    return _reading("vendor3", path, record["device"]["id"], record["device"]["installation"],
                    _code(V3_REGISTERS, record["commodity"], "vendor3 commodity"),
                    start, start + timedelta(seconds=int(reading["duration"])), value, unit,
                    _code(V3_QUALITY, reading["qc"], "vendor3 quality code"))


def vendor3_page(answer: dict[str, Any]) -> dict[str, Any]:
    """`offset` of the next page, None once `offset + len(readings)` reaches `total`."""
    items = [vendor3_reading(r) for r in answer["readings"]]
    reached = answer["offset"] + len(items)
    return {"items": items, "next": reached if items and reached < answer["total"] else None}


def vendor3_message(record: dict[str, Any]) -> dict[str, Any]:
    """One reading of a vendor-3 webhook batch: the pull record, pushed (London days, as its pull's entry says)."""
    return {**vendor3_reading(record, "push"), "zone": V3_ZONE}


def vendor3_webhook(body: dict[str, Any]) -> list[dict[str, Any]]:
    """A pushed batch `{"batchId", "sentAt", "readings": [records as in the pull]}`."""
    return [vendor3_message(r) for r in body["readings"]]


# --- vendor 4: flat, ISO UTC with milliseconds, kWh / MWh / m³, short OBIS, continuation token --

def vendor4_reading(record: dict[str, Any], path: str = "pull") -> dict[str, Any]:
    """`{"meter", "site", "type", "register", "intervalStart", "intervalEnd", "energy": {"value",
    "unit"}, "quality"}`; `register` is short OBIS (`1.8.0`), `type` says which medium."""
    medium = _code(V4_MEDIA, record["type"], "vendor4 meter type")
    value, unit = convert(record["energy"]["value"], record["energy"]["unit"])
    return _reading("vendor4", path, record["meter"], record["site"], obis_code(record["register"], medium),
                    parse_iso(record["intervalStart"]), parse_iso(record["intervalEnd"]), value, unit,
                    _code(V4_QUALITY, record["quality"], "vendor4 quality"))


def vendor4_page(answer: dict[str, Any]) -> dict[str, Any]:
    """The next page is asked with `continuationToken`, absent on the last page."""
    return {"items": [vendor4_reading(r) for r in answer["readings"]], "next": answer.get("continuationToken") or None}


def vendor4_message(payload: dict[str, Any]) -> dict[str, Any]:
    """One MQTT message on `vendor4/readings/<meter>`: the pull record, pushed (Lisbon days, as its pull's entry says)."""
    return {**vendor4_reading(payload, "push"), "zone": V4_ZONE}
