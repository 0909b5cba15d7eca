"""Tariff switches to and from the country ERPs: the submit and status inputs, and the canonical
pending-switch record (erp_ref, status, reason) the hub keeps while an ERP takes up to 48 h.

Every ERP key that makes a resubmit idempotent (contract id + version, chiave_idempotenza, IdPedido) is
derived from `request_key`, so a redelivery or a DLQ replay lands on the ERP's first switch.
"""

from __future__ import annotations

import re
from typing import Any

from transforms.erp_soap.countries import ErpCountry, country_of, request_parts
from transforms.erp_soap.wire import dig, iso_date, nest, short, unwrap

ORIGIN = "plu-hub"
_VERSIONED_KEY = re.compile(r"^(?P<contract>.+):v(?P<version>\d+)$")


def switch_request(req: dict[str, Any]) -> dict[str, Any]:
    """The switch request plus `erp_request`, the country's submit input parts."""
    country = country_of(req)
    values = {
        "request_key": req["request_key"],
        "contract_id": req["contract_id"],
        "version": contract_version(req),
        "tariff_code": req["tariff_code"],
        "effective_from": iso_date(req.get("effective_from")),
        "origin": ORIGIN,
    }
    return {**req, "erp_request": nest(request_parts(country.submit_switch, values))}


def switch_submitted(p: dict[str, Any]) -> dict[str, Any]:
    """The canonical pending-switch record out of the submit answer."""
    country = country_of(p)
    ref, status, reason = _read_switch(country, p["erp_answer"])
    return {**_without_call(p), "erp_ref": ref, "status": status, "reason": reason}


def status_request(p: dict[str, Any]) -> dict[str, Any]:
    """The pending-switch record plus `erp_request`, the country's status input parts."""
    country = country_of(p)
    values = {"erp_ref": p["erp_ref"], "request_id": f"consulta:{p['erp_ref']}", "origin": ORIGIN}
    return {**p, "erp_request": nest(request_parts(country.switch_status, values))}


def switch_status(p: dict[str, Any]) -> dict[str, Any]:
    """The pending-switch record with status and reason as the status answer says."""
    country = country_of(p)
    ref, status, reason = _read_switch(country, p["erp_answer"])
    if ref is not None and p.get("erp_ref") is not None and str(ref) != str(p["erp_ref"]):
        raise ValueError(f"{country.code} ERP answered switch {ref!r} when asked about {p['erp_ref']!r}")
    return {**_without_call(p), "status": status, "reason": reason}


def contract_version(req: dict[str, Any]) -> int:
    """The contract version the ERP keys on: `version`, else the one in request_key ("<contract>:v<n>"), else 1.

    A `version` or contract id that contradicts request_key is refused: the ERP key and the hub's key would
    disagree and a replay could create a second switch.
    """
    match = _VERSIONED_KEY.match(str(req.get("request_key", "")))
    if match and match["contract"] != str(req.get("contract_id")):
        raise ValueError(f"request_key {req['request_key']!r} names another contract than {req.get('contract_id')!r}")
    from_key = int(match["version"]) if match else None
    explicit = req.get("version")
    if explicit is None:
        return from_key if from_key is not None else 1
    if isinstance(explicit, bool) or not isinstance(explicit, int) or explicit < 1:
        raise ValueError(f"version must be a positive integer, got {explicit!r}")
    if from_key is not None and from_key != explicit:
        raise ValueError(f"version {explicit} contradicts request_key {req['request_key']!r}")
    return explicit


def _read_switch(country: ErpCountry, answer: Any) -> tuple[str, str, str | None]:
    spec = country.switch_answer
    body = unwrap(answer, spec.wrapper)
    ref, raw_status, reason = dig(body, spec.ref), dig(body, spec.status), dig(body, spec.reason)
    if not ref:
        raise ValueError(f"{country.code} ERP answer has no switch reference at {spec.ref}: {short(answer)}")
    status = country.statuses.get(str(raw_status).strip().upper()) if raw_status is not None else None
    if status is None:
        raise ValueError(f"{country.code} ERP answered an unknown switch status {raw_status!r} for {ref}")
    return str(ref), status, (str(reason) if reason else None)


def _without_call(p: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in p.items() if k not in ("erp_request", "erp_answer")}
