"""Meter data for Salesforce, as pure functions: what the CRM gets (a register's month total and the
next month's forecast, never the ~300M interval readings a month) and the interval detail the hub
keeps and serves on request.

A month total and a forecast become Meter_Month__c records keyed `meter:register:month:kind`, so a
total sent again, or a forecast replaced by the actual month, updates its record instead of adding
one. The interval detail comes from the `meter_months` state (transforms/meter_rules.month_progress
keeps each interval of a register's last months): `interval_detail` answers one month of it.
"""

from __future__ import annotations

from typing import Any

from transforms.meter_rules import month_of


def month_record(total: dict[str, Any]) -> dict[str, Any]:
    """meter.month.completed -> a Meter_Month__c record (Kind__c Actual)."""
    return {"Hub_Key__c": f"{total['meter_id']}:{total['register']}:{total['month']}:actual",
            "Site_Id__c": total["site_id"], "Meter_Id__c": total["meter_id"], "Register__c": total["register"],
            "Month__c": total["month"], "Kind__c": "Actual", "Total__c": total["total"], "Unit__c": total["unit"],
            "Readings__c": total.get("readings")}


def forecast_record(forecast: dict[str, Any]) -> dict[str, Any]:
    """meter.reading.forecast (a forecast reading over the next month) -> a Meter_Month__c record
    (Kind__c Forecast) of the month its interval falls in."""
    month, _ = month_of(forecast)
    return {"Hub_Key__c": f"{forecast['meter_id']}:{forecast['register']}:{month}:forecast",
            "Site_Id__c": forecast["site_id"], "Meter_Id__c": forecast["meter_id"], "Register__c": forecast["register"],
            "Month__c": month, "Kind__c": "Forecast", "Total__c": forecast["value"], "Unit__c": forecast["unit"],
            "Readings__c": None}


def interval_detail(ctx: dict[str, Any]) -> dict[str, Any]:
    """`state` apply for the detail request: the asked month's intervals of a meter register, read
    from its month-progress record, which stays as it is."""
    ask, state = ctx["message"], ctx["state"] or {}
    month = ask.get("month")
    entry = (state.get("months") or {}).get(month) if month else None
    intervals = sorted(((at, v[0], v[1]) for at, v in (entry or {}).get("values", {}).items()), key=lambda t: t[0])
    return {"state": ctx["state"], "payload": {
        "meter_id": ask.get("meter_id"), "register": ask.get("register"), "month": month, "found": entry is not None,
        "unit": state.get("unit"), "complete": bool(entry and entry.get("answer")),  # meter_rules answered its total
        "intervals": [{"read_at": at, "value": value, "seconds": seconds} for at, value, seconds in intervals],
        "total": round(sum(value for _, value, _ in intervals), 3),
        "months_kept": sorted(state.get("months") or {})}}
