"""Contract events from the CRM into the shape the country ERPs' switch operations take, and the
switch outcome back into the events the CRM listens to."""

from __future__ import annotations

from typing import Any

OUTCOME_EVENTS = {"COMPLETED": "switched", "FAILED": "switch-failed"}


def to_switch_request(contract: dict[str, Any]) -> dict[str, Any]:
    """One tariff switch request per signed contract; the idempotency key survives replays. The
    sites travel along: the notification after the switch goes to their regions' account managers."""
    return {
        "request_key": f"{contract['contract_id']}:v{contract.get('version', 1)}",
        "contract_id": contract["contract_id"],
        "version": contract.get("version", 1),
        "account_id": contract["account_id"],
        "country": contract["country"],
        "tariff_code": contract["tariff_code"],
        "effective_from": contract["signed_on"],
        "site_ids": [site["site_id"] for site in contract["sites"]],
        "meter_ids": [m for site in contract["sites"] for m in site.get("meter_ids", [])],
        "sites": [{"site_id": s["site_id"], "postcode": s["postcode"], "city": s["city"]} for s in contract["sites"]],
        "key_customer": bool(contract.get("key_customer", False)),
    }


def switch_outcome(switch: dict[str, Any]) -> dict[str, Any]:
    """A finished switch as the CRM sees it, for every country alike; `outcome` names the event
    (erp.contract.switched or erp.contract.switch-failed)."""
    status = switch["status"]
    if status not in OUTCOME_EVENTS:
        raise ValueError(f"switch {switch.get('erp_ref')} is {status!r}, not finished")
    return {
        "contract_id": switch["contract_id"],
        "version": switch.get("version", 1),
        "account_id": switch["account_id"],
        "country": switch["country"],
        "tariff_code": switch["tariff_code"],
        "effective_from": switch["effective_from"],
        "erp_ref": switch["erp_ref"],
        "status": status,
        "reason": switch.get("reason"),
        "sites": switch.get("sites", []),
        "key_customer": switch.get("key_customer", False),
        "outcome": OUTCOME_EVENTS[status],
    }
