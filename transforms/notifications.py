"""Notification requests (`notify.requested`) for the notification service: who is told, by role
and region, never addresses (the notification service resolves people from roles)."""

from __future__ import annotations

from typing import Any

from transforms.regions import region_of


def switch_completed(switch: dict[str, Any]) -> dict[str, Any]:
    """The customer, and for key customers the key account managers of every region the contract's
    sites are in, hear that the new tariff is active."""
    recipients: list[dict[str, Any]] = [{"role": "customer", "account_id": switch["account_id"]}]
    if switch.get("key_customer"):
        regions = sorted({region_of(switch["country"], site["postcode"]) for site in switch.get("sites", [])})
        recipients += [{"role": "key_account_manager", "region": r} for r in regions]
    return {
        "template": "tariff-switch-completed",
        "reference": f"{switch['contract_id']}:v{switch.get('version', 1)}",
        "country": switch["country"],
        "recipients": recipients,
        "data": {"contract_id": switch["contract_id"], "tariff_code": switch["tariff_code"],
                 "effective_from": switch["effective_from"], "erp_ref": switch["erp_ref"]},
    }
