"""Contract events from the CRM into the shape the country ERPs' switch operations take."""

from __future__ import annotations

from typing import Any


def to_switch_request(contract: dict[str, Any]) -> dict[str, Any]:
    """One tariff switch request per signed contract; the idempotency key survives replays."""
    return {
        "request_key": f"{contract['contract_id']}:v{contract.get('version', 1)}",
        "contract_id": contract["contract_id"],
        "account_id": contract["account_id"],
        "country": contract["country"],
        "tariff_code": contract["tariff_code"],
        "effective_from": contract["signed_on"],
        "site_ids": [site["site_id"] for site in contract["sites"]],
        "meter_ids": [m for site in contract["sites"] for m in site.get("meter_ids", [])],
        "key_customer": bool(contract.get("key_customer", False)),
    }
