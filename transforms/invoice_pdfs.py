"""Invoice PDFs, pure: asking the PDF Generator for one, announcing the file the SFTP source fetched,
and answering the portal's `invoice.pdf.get` from the record kept per invoice.

`render_request` turns a canonical `erp.invoice.updated` into the generator's render-job body;
`requested` shapes its 202 answer. `available` turns the sftp source's landing record into the
`invoice.pdf.available` event with the object reference (bucket, name, size, sha256). `remember` (state
apply, per invoice id) keeps the newest PDF of the invoice and the references already announced: a file
landed again (a crash after the landing but before the done mark, later than JetStream's duplicate
window) is not announced a second time. `lookup` (state apply, read only) answers with the newest
reference, or a NotFound error reply shaped like the hub's own error replies.
"""

from __future__ import annotations

import re
from typing import Any

from engine.errors import ValidationFailed

INVOICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")  # what the generator accepts (and names files by)
ANNOUNCED_KEPT = 20


def _invoice_id(payload: Any) -> str:
    if not isinstance(payload, dict):
        raise ValidationFailed(f"expected a JSON object with invoice_id, got {type(payload).__name__}")
    value = payload.get("invoice_id")
    if not isinstance(value, str) or not INVOICE_ID.fullmatch(value.strip()):
        raise ValidationFailed(f"invoice_id: 1-64 of A-Z a-z 0-9 _ - (starting with a letter or digit) "
                               f"required, got {value!r}")
    return value.strip()


def render_request(invoice: dict[str, Any]) -> dict[str, Any]:
    """The invoice plus `render`, the generator's job body (customer name: the payload's, else the account)."""
    invoice_id = _invoice_id(invoice)
    amount = invoice.get("amount")
    if amount is None or amount == "":
        raise ValidationFailed("amount: required to render the invoice")
    customer = invoice.get("customer_name") or f"Account {invoice.get('erp_account_key') or '?'}"
    lines = invoice.get("lines") or [{"text": f"Invoice {invoice_id}", "amount": str(amount)}]
    return {**invoice, "render": {"invoiceId": invoice_id, "customerName": str(customer), "amount": str(amount),
                                  "currency": invoice.get("currency") or "EUR", "lines": lines}}


def requested(payload: dict[str, Any]) -> dict[str, Any]:
    """`invoice.pdf.requested`: which invoice, which change, and the generator's job."""
    job = payload.get("job") or {}
    return {"invoice_id": payload["invoice_id"], "country": payload.get("country"),
            "changed_at": payload.get("changed_at"), "job_id": job.get("jobId"), "status": job.get("status")}


def reference(record: dict[str, Any]) -> dict[str, Any]:
    """The claim check a reader needs: where the bytes are and how to check them."""
    return {"bucket": record["bucket"], "name": record["object"], "size": record["size"], "sha256": record["sha256"]}


def available(landing: dict[str, Any]) -> dict[str, Any]:
    """`invoice.pdf.available` from the sftp source's landing record."""
    if not landing.get("invoice_id"):
        raise ValidationFailed("invoice_id: missing (a quarantined file replayed without setting it?)")
    return {"invoice_id": landing["invoice_id"], "file_name": landing["file_name"], "object": reference(landing),
            "server_mtime": landing.get("server_mtime"), "fetched_at": landing.get("fetched_at")}


def _mark(event: dict[str, Any]) -> str:
    return f"{event['object']['name']}:{event['object']['sha256']}"


def _newer(event: dict[str, Any], latest: dict[str, Any] | None) -> bool:
    if latest is None:
        return True
    return (event.get("server_mtime") or "", event["file_name"]) >= (latest.get("server_mtime") or "",
                                                                       latest["file_name"])


def remember(ctx: dict[str, Any]) -> dict[str, Any]:
    """State apply: keep the newest PDF per invoice; drop an announcement already made."""
    state, event = ctx["state"] or {}, ctx["message"]
    announced = list(state.get("announced") or [])
    mark = _mark(event)
    if mark in announced:
        return {"state": ctx["state"], "payload": None}
    latest = state.get("latest")
    if _newer(event, latest):
        latest = {k: event[k] for k in ("file_name", "object", "server_mtime", "fetched_at")}
    new = {"invoice_id": event["invoice_id"], "latest": latest, "announced": [*announced, mark][-ANNOUNCED_KEPT:],
           "versions": int(state.get("versions") or 0) + 1}
    return {"state": new, "payload": event}


def get_request(payload: Any) -> dict[str, Any]:
    """What `invoice.pdf.get` needs: a valid invoice id (ValidationFailed names the field otherwise)."""
    return {"invoice_id": _invoice_id(payload)}


def lookup(ctx: dict[str, Any]) -> dict[str, Any]:
    """State apply, read only: the newest PDF's reference, or a NotFound error reply."""
    state, invoice_id = ctx["state"], ctx["message"]["invoice_id"]
    latest = (state or {}).get("latest")
    if latest is None:
        return {"state": state, "payload": {"invoice_id": invoice_id, "error": {
            "class": "NotFound", "transient": False,
            "message": f"no PDF stored for invoice {invoice_id!r}: not rendered yet, not fetched from the drop yet, "
                       "or an unknown invoice"}}}
    return {"state": state, "payload": {"invoice_id": invoice_id, **latest}}
