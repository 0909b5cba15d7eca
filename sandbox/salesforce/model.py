"""PLU's Salesforce data model as the emulator knows it: sObjects with their fields, and the Avro
schemas Salesforce derives from them for Change Data Capture and platform events.

What Salesforce documents and the emulator keeps: record ids are 18 characters starting with the
object's key prefix; external id fields identify records for upserts; a compound field (an address)
is written through its component fields (BillingCity) and appears in a change event as one nested
record (BillingAddress.City); a change event's schema starts with `ChangeEventHeader`, then every
field as an optional value, so a bit position in `changedFields` is a field's position in the
schema; a platform event's schema has CreatedDate and CreatedById, then its custom fields. Dates in
events are epoch numbers (days for a date, milliseconds for a date-time), as the Pub/Sub API sends them.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import fastavro

NAMESPACE = "com.sforce.eventbus"
AVRO_TYPES = {"string": "string", "textarea": "string", "picklist": "string", "id": "string", "reference": "string",
              "email": "string", "phone": "string", "double": "double", "currency": "double", "int": "int",
              "boolean": "boolean", "date": "int", "datetime": "long"}
CHANGE_TYPES = ["CREATE", "UPDATE", "DELETE", "UNDELETE", "GAP_CREATE", "GAP_UPDATE", "GAP_DELETE", "GAP_UNDELETE",
                "GAP_OVERFLOW"]


@dataclass(frozen=True)
class FieldDef:
    name: str
    type: str = "string"            # a key of AVRO_TYPES
    required: bool = False          # createable records must carry it (REQUIRED_FIELD_MISSING)
    unique: bool = False            # two records cannot share a value (DUPLICATE_VALUE)
    external_id: bool = False       # may identify a record in an upsert
    createable: bool = True         # system fields are not (INVALID_FIELD_FOR_INSERT_UPDATE)
    compound: str | None = None     # the compound field it belongs to (BillingCity -> BillingAddress)
    part: str | None = None         # its name inside the compound (City)
    length: int = 255


@dataclass
class SObjectDef:
    name: str
    key_prefix: str
    fields: dict[str, FieldDef] = field(default_factory=dict)
    change_events: bool = True      # selected for Change Data Capture in Setup
    platform_event: bool = False

    @property
    def cdc_topic(self) -> str:
        return f"/data/{self.name.removesuffix('__c')}{'__' if self.name.endswith('__c') else ''}ChangeEvent"

    @property
    def event_topic(self) -> str:
        return f"/event/{self.name}"


SYSTEM_FIELDS = (FieldDef("Id", "id", createable=False), FieldDef("CreatedDate", "datetime", createable=False),
                 FieldDef("CreatedById", "reference", createable=False),
                 FieldDef("LastModifiedDate", "datetime", createable=False),
                 FieldDef("LastModifiedById", "reference", createable=False))


def _object(name: str, prefix: str, *fields: FieldDef, **kw: Any) -> SObjectDef:
    obj = SObjectDef(name, prefix, **kw)
    for f in (*SYSTEM_FIELDS, *fields):
        obj.fields[f.name] = f
    return obj


def _event(name: str, prefix: str, *fields: FieldDef) -> SObjectDef:
    obj = SObjectDef(name, prefix, change_events=False, platform_event=True)
    for f in (FieldDef("CreatedDate", "datetime", required=True), FieldDef("CreatedById", "reference", required=True),
              FieldDef("EventUuid", "string", createable=False), *fields):
        obj.fields[f.name] = f
    return obj


ADDRESS_PARTS = ("Street", "City", "State", "PostalCode", "Country")


def _address(prefix: str) -> tuple[FieldDef, ...]:
    return tuple(FieldDef(f"{prefix}{part}", "string", compound=f"{prefix}Address", part=part)
                 for part in ADDRESS_PARTS)


def plu_objects() -> dict[str, SObjectDef]:
    """PLU's org: accounts and contracts (CDC), the hub's write-back objects, two platform events."""
    objects = [
        _object("Account", "001", FieldDef("Name", required=True), FieldDef("Phone", "phone"),
                *_address("Billing"), FieldDef("PLU_Account_Id__c", unique=True, external_id=True),
                FieldDef("Country__c", "picklist"), FieldDef("Customer_Kind__c", "picklist"),
                FieldDef("Email__c", "email"), FieldDef("ERP_Account_Key__c", unique=True)),
        _object("Contract", "800", FieldDef("AccountId", "reference", required=True), FieldDef("Status", "picklist"),
                FieldDef("StartDate", "date"), FieldDef("PLU_Contract_Id__c", unique=True, external_id=True),
                FieldDef("Version__c", "int"), FieldDef("Country__c", "picklist"), FieldDef("Tariff_Code__c"),
                FieldDef("Switch_Status__c", "picklist"), FieldDef("ERP_Ref__c"), FieldDef("Effective_From__c", "date"),
                FieldDef("Switch_Reason__c", "textarea")),
        _object("Meter_Month__c", "a01", FieldDef("Hub_Key__c", required=True, unique=True, external_id=True),
                FieldDef("Site_Id__c", required=True), FieldDef("Meter_Id__c", required=True),
                FieldDef("Register__c"), FieldDef("Month__c", required=True), FieldDef("Kind__c", "picklist"),
                FieldDef("Total__c", "double", required=True), FieldDef("Unit__c", "picklist"),
                FieldDef("Readings__c", "int"), change_events=False),
        _object("Invoice__c", "a02", FieldDef("Invoice_Id__c", required=True, unique=True, external_id=True),
                FieldDef("ERP_Account_Key__c", required=True), FieldDef("Country__c", "picklist"),
                FieldDef("Amount__c", "currency", required=True), FieldDef("Currency__c", "picklist"),
                FieldDef("Changed_At__c", "datetime"), change_events=False),
        _object("Payment__c", "a03", FieldDef("Payment_Id__c", required=True, unique=True, external_id=True),
                FieldDef("ERP_Account_Key__c", required=True), FieldDef("Invoice_Id__c"),
                FieldDef("Country__c", "picklist"), FieldDef("Amount__c", "currency", required=True),
                FieldDef("Currency__c", "picklist"), FieldDef("Changed_At__c", "datetime"), change_events=False),
        _event("Contract_Signed__e", "e01", FieldDef("Contract_Id__c", required=True), FieldDef("Version__c", "int"),
               FieldDef("Account_Id__c", required=True), FieldDef("Country__c", required=True),
               FieldDef("Tariff_Code__c", required=True), FieldDef("Signed_On__c", "date", required=True),
               FieldDef("Sites__c", "textarea", length=131072), FieldDef("Key_Customer__c", "boolean")),
        _event("Key_Customer_Candidate__e", "e02", FieldDef("Site_Id__c", required=True),
               FieldDef("Account_Id__c"), FieldDef("Months__c", "textarea", length=131072),
               FieldDef("Threshold_kWh__c", "double"), FieldDef("Meters__c", "textarea", length=131072),
               FieldDef("Detected_By__c")),
    ]
    return {o.name: o for o in objects}


# --- Avro schemas ------------------------------------------------------------------------------

def _optional(avro: Any) -> list[Any]:
    return ["null", avro]


def change_event_schema(obj: SObjectDef) -> dict[str, Any]:
    """The change event schema: the header first, then every field optional; the components of a
    compound field become one nested record at the compound's first position."""
    header = {"type": "record", "name": "ChangeEventHeader", "namespace": NAMESPACE, "fields": [
        {"name": "entityName", "type": "string"},
        {"name": "recordIds", "type": {"type": "array", "items": "string"}},
        {"name": "changeType", "type": {"type": "enum", "name": "ChangeType", "namespace": NAMESPACE,
                                        "symbols": CHANGE_TYPES}},
        {"name": "changeOrigin", "type": "string"},
        {"name": "transactionKey", "type": "string"},
        {"name": "sequenceNumber", "type": "int"},
        {"name": "commitTimestamp", "type": "long"},
        {"name": "commitNumber", "type": "long"},
        {"name": "commitUser", "type": "string"},
        {"name": "nulledFields", "type": {"type": "array", "items": "string"}},
        {"name": "diffFields", "type": {"type": "array", "items": "string"}},
        {"name": "changedFields", "type": {"type": "array", "items": "string"}},
    ]}
    fields: list[dict[str, Any]] = [{"name": "ChangeEventHeader", "type": header}]
    address: dict[str, Any] | None = None  # one Address record type, named once, referenced after
    seen: set[str] = set()
    for f in obj.fields.values():
        if f.name == "Id":
            continue  # record ids travel in the header
        if f.compound:
            if f.compound not in seen:
                seen.add(f.compound)
                if address is None:
                    address = {"type": "record", "name": "Address", "namespace": NAMESPACE, "fields": [
                        {"name": part, "type": _optional("string"), "default": None} for part in ADDRESS_PARTS]}
                    nested: Any = address
                else:
                    nested = f"{NAMESPACE}.Address"
                fields.append({"name": f.compound, "type": _optional(nested), "default": None})
            continue
        fields.append({"name": f.name, "type": _optional(AVRO_TYPES[f.type]), "default": None})
    return {"type": "record", "name": obj.cdc_topic.rsplit("/", 1)[1], "namespace": NAMESPACE, "fields": fields}


def platform_event_schema(obj: SObjectDef) -> dict[str, Any]:
    """A platform event's schema: CreatedDate and CreatedById required, the rest optional."""
    fields = []
    for f in obj.fields.values():
        if f.name in ("CreatedDate", "CreatedById"):
            fields.append({"name": f.name, "type": AVRO_TYPES[f.type]})
        else:
            fields.append({"name": f.name, "type": _optional(AVRO_TYPES[f.type]), "default": None})
    return {"type": "record", "name": obj.name, "namespace": NAMESPACE, "fields": fields}


def schema_id(schema: dict[str, Any]) -> str:
    """A schema's fingerprint as an opaque id: MD5 of its parsing canonical form, URL-safe base64."""
    canonical = fastavro.schema.to_parsing_canonical_form(fastavro.parse_schema(schema, _write_hint=False))
    return base64.urlsafe_b64encode(hashlib.md5(canonical.encode()).digest()).decode().rstrip("=")


def schema_json(schema: dict[str, Any]) -> str:
    return json.dumps(schema, separators=(",", ":"))
