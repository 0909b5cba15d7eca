"""Canonical meter readings into the CRM bridge's reading resource."""

from __future__ import annotations

from typing import Any


def to_crm_reading(reading: dict[str, Any]) -> dict[str, Any]:
    """The CRM wants a flat record keyed by meter, register and time, values in kWh or m³."""
    return {
        "external_id": f"{reading['meter_id']}|{reading.get('register', '1.8.0')}|{reading['read_at']}",
        "meter": reading["meter_id"],
        "site": reading["site_id"],
        "register": reading.get("register", "1.8.0"),
        "timestamp": reading["read_at"],
        "quantity": round(float(reading["value"]), 3),
        "unit": reading["unit"],
        "quality": reading.get("quality", "actual"),
        "origin": reading["source"],
    }


def passthrough(payload: Any) -> Any:
    """The identity, for benchmarks and for flows that only route."""
    return payload
