"""The field agents' radar-reader readings (phone app → webhook) as the canonical reading: register reads
(no interval), quality actual, source manual, `read_at` in the one UTC spelling."""

from __future__ import annotations

from typing import Any

from transforms.meter_vendors import convert, obis_code, parse_iso, utc_text

MANUAL_QUALITY = "actual"
MANUAL_SOURCE = "manual"
_DEFAULT_REGISTER = {"kWh": "1-0:1.8.0", "m3": "7-0:3.0.0"}


def manual_reading(body: dict[str, Any]) -> dict[str, Any]:
    """The field app's `{meter_id, site_id, register?, read_at, value, unit}`: a register read by an agent,
    quality actual, source manual. `read_at` must carry an offset; `unit` is Wh, kWh, MWh, dm3 or m3;
    `register` (full or short OBIS) defaults to the medium's total import register."""
    for key in ("meter_id", "site_id", "read_at", "value", "unit"):
        if body.get(key) in (None, ""):
            raise ValueError(f"manual reading: {key} is required")
    value, unit = convert(body["value"], str(body["unit"]))
    medium = "gas" if unit == "m3" else "electricity"
    register = obis_code(str(body["register"]), medium) if body.get("register") else _DEFAULT_REGISTER[unit]
    if (unit == "m3") != register.startswith("7-"):
        raise ValueError(f"unit {unit} does not fit register {register} (m3 is for gas, 7-0:...)")
    return {"meter_id": str(body["meter_id"]), "site_id": str(body["site_id"]), "register": register,
            "interval_start": None, "read_at": utc_text(parse_iso(str(body["read_at"]))), "value": value, "unit": unit,
            "quality": MANUAL_QUALITY, "source": MANUAL_SOURCE}
