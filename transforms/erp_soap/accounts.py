"""CRM account master data into each country ERP's upsert, and the ERP's account key back out.

The ERPs key accounts by the CRM account id, so upserting twice keeps one ERP account; PT's IdPedido is a
digest of the content, so a replay repeats the same request id while a real change gets a new one.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from transforms.erp_soap.countries import country_of, request_parts
from transforms.erp_soap.switches import ORIGIN
from transforms.erp_soap.wire import dig, nest, short, unwrap

ACCOUNT_FIELDS = ("account_id", "name", "kind", "street", "postcode", "city", "email", "phone")


def account_request(acc: dict[str, Any]) -> dict[str, Any]:
    """The AccountChanged event plus `erp_request`, the country's upsert input parts."""
    country = country_of(acc)
    values = {name: acc.get(name) for name in ACCOUNT_FIELDS}
    values["account_id"] = acc["account_id"]
    values["request_id"] = f"cliente:{acc['account_id']}:{content_digest(acc)}"
    values["origin"] = ORIGIN
    return {**acc, "erp_request": nest(request_parts(country.upsert_account, values))}


def account_linked(p: dict[str, Any]) -> dict[str, Any]:
    """The CRM account and the ERP's key for it (and whether the ERP just created it, when it says)."""
    country = country_of(p)
    spec = country.account_answer
    body = unwrap(p["erp_answer"], spec.wrapper)
    key = dig(body, spec.key)
    if not key or isinstance(key, dict | list):
        raise ValueError(f"{country.code} ERP answer has no account key: {short(p['erp_answer'])}")
    created = dig(body, spec.created) if spec.created else None
    return {"account_id": p["account_id"], "country": p["country"], "erp_account_key": str(key),
            "created": created if isinstance(created, bool) else None}


def content_digest(acc: dict[str, Any]) -> str:
    """12 hex digits of the account's master data, stable across processes and key order."""
    data = json.dumps({k: acc.get(k) for k in ACCOUNT_FIELDS + ("country",)}, sort_keys=True, default=str)
    return hashlib.sha256(data.encode()).hexdigest()[:12]
