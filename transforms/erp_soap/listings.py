"""Invoices and payments changed since a timestamp, a page at a time, in every country's paging style,
into canonical records (decimal strings in major units, UTC 'Z' timestamps) and an opaque next cursor.
"""

from __future__ import annotations

from typing import Any

from transforms.erp_soap.countries import ErpCountry, Listing, country_of, request_parts
from transforms.erp_soap.switches import ORIGIN
from transforms.erp_soap.wire import amount_text, as_list, dig, nest, short, unwrap, utc_iso

RECORD_FIELDS = {
    "invoices": ("invoice_id", "country", "erp_account_key", "amount", "currency", "changed_at"),
    "payments": ("payment_id", "country", "erp_account_key", "amount", "currency", "invoice_id", "changed_at"),
}
OPTIONAL = {"payments": {"invoice_id"}, "invoices": set()}


def invoices_request(ctx: dict[str, Any]) -> dict[str, Any]:
    """Input parts of the country's changed-invoices listing for the page `ctx["cursor"]`."""
    return _request(ctx, "invoices")


def payments_request(ctx: dict[str, Any]) -> dict[str, Any]:
    """Input parts of the country's changed-payments listing for the page `ctx["cursor"]`."""
    return _request(ctx, "payments")


def invoices_page(ctx: dict[str, Any]) -> dict[str, Any]:
    """{"items": canonical invoices, "next": cursor or None, "total": ERP count or None} of one answer."""
    return _page(ctx, "invoices")


def payments_page(ctx: dict[str, Any]) -> dict[str, Any]:
    """{"items": canonical payments, "next": cursor or None, "total": ERP count or None} of one answer."""
    return _page(ctx, "payments")


def _listing(country: ErpCountry, kind: str) -> Listing:
    return country.list_invoices if kind == "invoices" else country.list_payments


def _page_size(ctx: dict[str, Any]) -> int:
    size = ctx["page_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"page_size must be a positive integer, got {size!r}")
    return size


def _request(ctx: dict[str, Any], kind: str) -> dict[str, Any]:
    country = country_of(ctx)
    listing = _listing(country, kind)
    since, size, cursor = utc_iso(ctx["since"]), _page_size(ctx), ctx.get("cursor")
    values = {"since": since, "page_size": size, "origin": ORIGIN,
              "request_id": f"lista-{kind}:{since}:{'inicio' if cursor is None else cursor}:{size}"}
    return nest({**request_parts(listing.call, values), **listing.paging.request(cursor)})


def _page(ctx: dict[str, Any], kind: str) -> dict[str, Any]:
    country = country_of(ctx)
    listing = _listing(country, kind)
    page = unwrap(ctx.get("answer"), listing.wrapper)
    rows = as_list(dig(page, listing.items))
    items = [_record(country, listing, kind, row) for row in rows]
    cursor = ctx.get("cursor")
    following = listing.paging.next_cursor(page, cursor, len(rows))
    if following is not None and cursor is not None and str(following) == str(cursor):
        raise ValueError(f"{country.code} ERP paging did not advance: next page is again {cursor!r}")
    total = dig(page, listing.total) if listing.total else None
    return {"items": items, "next": following, "total": None if total is None else int(total)}


def _record(country: ErpCountry, listing: Listing, kind: str, row: Any) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise ValueError(f"{country.code} {kind} row is not a record: {short(row)}")
    record: dict[str, Any] = {}
    for name in RECORD_FIELDS[kind]:
        if name == "country":
            record[name] = country.code
            continue
        value = row.get(listing.fields[name]) if name in listing.fields else None
        if name == "currency":
            value = value or country.currency
        elif value is None or value == "":
            if name not in OPTIONAL[kind]:
                raise ValueError(f"{country.code} {kind} row lacks {listing.fields.get(name, name)}: {short(row)}")
            value = None
        elif name == "amount":
            value = amount_text(value, listing.minor_units)
        elif name == "changed_at":
            value = utc_iso(value)
        else:
            value = str(value)
        record[name] = value
    return record
