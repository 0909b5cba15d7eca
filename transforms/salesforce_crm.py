"""Salesforce <-> the hub's canonical CRM messages, as pure functions.

In: a signed contract's platform event (Contract_Signed__e) becomes `crm.contract.signed`; an Account
change event becomes one `salesforce.account.changed` per record whose master data changed (the
changed-field names decoded from the CDC bitmaps decide: the hub's own write-back of the ERP key
changes no master field, so it never loops back to the ERP), and the record read back from
Salesforce becomes `crm.account.changed`. Out: switch outcomes, ERP account keys, invoices and
payments as records to upsert by external id; a key-customer candidate as a platform event.
Dates in events are epoch numbers (days for a date, milliseconds for a date-time).
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

MASTER_FIELDS = frozenset({"Name", "Phone", "BillingAddress", "PLU_Account_Id__c", "Country__c", "Customer_Kind__c",
                           "Email__c"})
SKIPPED_CHANGES = frozenset({"DELETE", "GAP_DELETE"})   # a deleted account is not pushed to the ERPs
SWITCH_STATUS = {"COMPLETED": "Switched", "FAILED": "Failed"}


def _epoch_day(value: Any) -> str | None:
    return None if value is None else (date(1970, 1, 1) + timedelta(days=int(value))).isoformat()


def _epoch_ms(value: Any) -> str | None:
    if value is None:
        return None
    return datetime.fromtimestamp(int(value) / 1000, timezone.utc).isoformat(timespec="milliseconds")


def _payload(event: dict[str, Any]) -> dict[str, Any]:
    if "decode_error" in event:
        raise ValueError(f"event {event.get('event_id')} could not be decoded: {event['decode_error']}")
    return event["payload"]


# --- in --------------------------------------------------------------------------------------------

def contract_signed(event: dict[str, Any]) -> dict[str, Any]:
    """Contract_Signed__e (published by Salesforce when the digital signature completes) -> ContractSigned."""
    p = _payload(event)
    sites = json.loads(p.get("Sites__c") or "[]")
    return {"contract_id": p["Contract_Id__c"], "version": p.get("Version__c") or 1, "account_id": p["Account_Id__c"],
            "country": p["Country__c"], "tariff_code": p["Tariff_Code__c"], "signed_on": _epoch_day(p["Signed_On__c"]),
            "sites": sites, "key_customer": bool(p.get("Key_Customer__c"))}


def account_changes(event: dict[str, Any]) -> list[dict[str, Any]]:
    """One item per changed account whose master data may have changed (publish with `each`):
    creates, undeletes and gap events always (a gap event says nothing about fields: read the record);
    updates only when a master field is among the changed fields; deletes never. An overflow event
    (more than 100,000 changes in one transaction, no record ids) becomes one `overflow` item."""
    p = _payload(event)
    header = p["ChangeEventHeader"]
    kind = header["changeType"]
    base = {"entity": header["entityName"], "change_type": kind, "transaction_key": header["transactionKey"],
            "sequence": header["sequenceNumber"], "commit_timestamp": _epoch_ms(header["commitTimestamp"]),
            "replay_id": event["replay_id"]}
    if kind == "GAP_OVERFLOW":
        return [{**base, "route": "overflow", "key": f"overflow:{header['transactionKey']}:{header['sequenceNumber']}"}]
    if kind in SKIPPED_CHANGES:
        return []
    changed = [f.split(".")[0] for f in header.get("changedFields") or []]
    if kind == "UPDATE" and not MASTER_FIELDS.intersection(changed):
        return []
    return [{**base, "route": "changed", "id": record_id, "changed_fields": header.get("changedFields") or [],
             "key": f"{record_id}:{header['transactionKey']}:{header['sequenceNumber']}"}
            for record_id in header["recordIds"]]


def account_lookup(change: dict[str, Any]) -> dict[str, Any]:
    """The change, and the record read the next `call` sends (`input: lookup`)."""
    return {**change, "lookup": {"id": change["id"]}}


def account_changed(answer: dict[str, Any]) -> dict[str, Any]:
    """The account as Salesforce has it now (`call ... into: record`) -> AccountChanged."""
    r = answer["record"]
    return {"account_id": r.get("PLU_Account_Id__c"), "country": r.get("Country__c"), "name": r.get("Name"),
            "kind": (r.get("Customer_Kind__c") or "").lower() or None, "street": r.get("BillingStreet") or "",
            "postcode": r.get("BillingPostalCode") or "", "city": r.get("BillingCity") or "",
            "email": r.get("Email__c"), "phone": r.get("Phone")}


def overflow_alert(item: dict[str, Any]) -> dict[str, Any]:
    """An overflow event as an `ops.alert.<flow>` event: the entity needs a full reconciliation."""
    return {"flow": "salesforce-cdc-gaps", "alert": "cdc_overflow", "state": "firing", "entity": item["entity"],
            "transaction_key": item["transaction_key"], "commit_timestamp": item["commit_timestamp"],
            "replay_id": item["replay_id"], "at": item["commit_timestamp"],
            "action": f"more than 100,000 changes in one transaction: reconcile every {item['entity']} record"}


# --- out -------------------------------------------------------------------------------------------

def contract_outcome_record(outcome: dict[str, Any]) -> dict[str, Any]:
    """A finished tariff switch (erp.contract.switched / switch-failed) -> Contract fields by PLU id."""
    return {"PLU_Contract_Id__c": outcome["contract_id"], "Version__c": outcome.get("version", 1),
            "Switch_Status__c": SWITCH_STATUS[outcome["status"]], "ERP_Ref__c": outcome.get("erp_ref"),
            "Effective_From__c": outcome.get("effective_from"), "Switch_Reason__c": outcome.get("reason")}


def account_key_record(linked: dict[str, Any]) -> dict[str, Any]:
    """erp.account.linked -> the ERP's key on the Account (no master field: no change event loops back)."""
    return {"PLU_Account_Id__c": linked["account_id"], "ERP_Account_Key__c": linked["erp_account_key"]}


def _amount(text: Any) -> float:
    return float(Decimal(str(text)))


def invoice_record(invoice: dict[str, Any]) -> dict[str, Any]:
    """erp.invoice.updated -> Invoice__c (the portal's 24 months)."""
    return {"Invoice_Id__c": invoice["invoice_id"], "ERP_Account_Key__c": invoice["erp_account_key"],
            "Country__c": invoice.get("country"), "Amount__c": _amount(invoice["amount"]),
            "Currency__c": invoice.get("currency"), "Changed_At__c": invoice.get("changed_at")}


def payment_record(payment: dict[str, Any]) -> dict[str, Any]:
    """erp.payment.updated -> Payment__c."""
    return {"Payment_Id__c": payment["payment_id"], "ERP_Account_Key__c": payment["erp_account_key"],
            "Invoice_Id__c": payment.get("invoice_id"), "Country__c": payment.get("country"),
            "Amount__c": _amount(payment["amount"]), "Currency__c": payment.get("currency"),
            "Changed_At__c": payment.get("changed_at")}


def keycustomer_event(candidate: dict[str, Any]) -> dict[str, Any]:
    """crm.keycustomer.candidate -> the fields of a Key_Customer_Candidate__e platform event."""
    return {"Site_Id__c": candidate["site_id"], "Account_Id__c": candidate.get("account_id"),
            "Months__c": json.dumps(candidate.get("months", {}), sort_keys=True),
            "Threshold_kWh__c": candidate.get("threshold_kwh"),
            "Meters__c": json.dumps(candidate.get("meters", [])), "Detected_By__c": candidate.get("detected_by")}
