"""Pure transforms between the hub's canonical records and the five country ERPs' SOAP input parts and
answers (DE, FR, IT, PT, UK), referenced from flows as `erp_soap.<function>`.

Every function takes one payload dict with a `country` and dispatches on it to that country's table in
countries.py; `OPERATIONS` maps each logical operation to the country's WSDL operation name, for the
endpoints' operation aliases.

    switch_request(req)     -> {**req, "erp_request": submit input parts}
    switch_submitted(p)     -> pending-switch record (erp_ref, status, reason) from p["erp_answer"]
    status_request(p)       -> {**p, "erp_request": status input parts}
    switch_status(p)        -> the record with status and reason from p["erp_answer"]
    account_request(acc)    -> {**acc, "erp_request": upsert input parts}
    account_linked(p)       -> {"account_id", "country", "erp_account_key", "created"}
    invoices_request(ctx) / payments_request(ctx) -> list input parts for ctx["cursor"]
    invoices_page(ctx) / payments_page(ctx)       -> {"items", "next", "total"}
"""

from transforms.erp_soap.accounts import account_linked, account_request
from transforms.erp_soap.countries import COUNTRIES, OPERATIONS, UnknownCountry
from transforms.erp_soap.listings import invoices_page, invoices_request, payments_page, payments_request
from transforms.erp_soap.switches import status_request, switch_request, switch_status, switch_submitted

__all__ = [
    "COUNTRIES", "OPERATIONS", "UnknownCountry",
    "account_linked", "account_request",
    "invoices_page", "invoices_request", "payments_page", "payments_request",
    "status_request", "switch_request", "switch_status", "switch_submitted",
]
