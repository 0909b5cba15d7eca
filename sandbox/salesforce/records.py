"""The emulator's records: upserts by external id with Salesforce's per-record errors, and the
change events Change Data Capture publishes for every committed change.

Per-record errors as the REST API reports them (`statusCode`, `message`, `fields`):
REQUIRED_FIELD_MISSING, DUPLICATE_VALUE, INVALID_FIELD_FOR_INSERT_UPDATE, STRING_TOO_LONG,
MISSING_ARGUMENT (no external id value), UNABLE_TO_LOCK_ROW (a record another transaction holds:
`lock()` simulates one). Whole-request problems (an unknown field, a value of the wrong JSON type)
raise `RequestError`, which the REST layer answers with 400 and the documented error body.
"""

from __future__ import annotations

import io
import itertools
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

import fastavro

from engine.clock import SYSTEM, Clock
from sandbox.salesforce.cdc import change_event
from sandbox.salesforce.eventbus import EventBus
from sandbox.salesforce.model import FieldDef, SObjectDef, change_event_schema, schema_id

ID_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
TEXT_TYPES = frozenset({"string", "textarea", "picklist", "id", "reference", "email", "phone"})


class RequestError(Exception):
    """The whole request is refused: `status`, `code` (errorCode) and `message` as Salesforce answers."""

    def __init__(self, status: int, code: str, message: str, fields: list[str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.fields = status, code, message, fields

    def body(self) -> list[dict[str, Any]]:
        out: dict[str, Any] = {"message": self.message, "errorCode": self.code}
        if self.fields is not None:
            out["fields"] = self.fields
        return [out]


@dataclass
class RecordError(Exception):
    status_code: str
    message: str
    fields: list[str]

    def as_json(self) -> dict[str, Any]:
        return {"statusCode": self.status_code, "message": self.message, "fields": self.fields}


def _refused(field: FieldDef, value: Any, sobject: str) -> RequestError:
    return RequestError(400, "JSON_PARSER_ERROR", f"Cannot deserialize instance of {field.type} from "
                        f"{type(value).__name__} value {str(value)[:40]} or request may be missing a required field "
                        f"at [{sobject}.{field.name}]")


def parse_value(field: FieldDef, value: Any, sobject: str) -> Any:
    """A JSON value checked against its field's type (what Salesforce's deserializer refuses is a
    JSON_PARSER_ERROR for the whole request); dates and date-times kept as ISO text."""
    if value is None:
        return None
    kind = field.type
    if kind in TEXT_TYPES:
        if isinstance(value, bool | dict | list):
            raise _refused(field, value, sobject)
        return value if isinstance(value, str) else str(value)
    if kind in ("double", "currency", "int"):
        if isinstance(value, bool):
            raise _refused(field, value, sobject)
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise _refused(field, value, sobject) from None
        if not isinstance(value, int | float):
            raise _refused(field, value, sobject)
        return int(value) if kind == "int" and float(value).is_integer() else float(value)
    if kind == "boolean":
        if not isinstance(value, bool):
            raise _refused(field, value, sobject)
        return value
    if kind == "date":
        try:
            return date.fromisoformat(value).isoformat()
        except (TypeError, ValueError):
            raise _refused(field, value, sobject) from None
    try:
        at = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise _refused(field, value, sobject) from None
    if at.tzinfo is None:
        raise _refused(field, value, sobject)
    return at.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RecordStore:
    """Records of every sObject, their external-id indexes, and CDC for objects that have it."""

    def __init__(self, objects: dict[str, SObjectDef], bus: EventBus, clock: Clock = SYSTEM,
                 org_id: str = "00D000000000001AAA", user_id: str = "005000000000001AAA") -> None:
        self.objects = objects
        self.bus = bus
        self.clock = clock
        self.org_id, self.user_id = org_id, user_id
        self.records: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in objects}
        self.unique: dict[tuple[str, str], dict[Any, str]] = {}
        self.locked: set[tuple[str, str]] = set()   # (sobject, external id value) held by "another transaction"
        self.lock_refusals = 0
        self._ids = itertools.count(1)
        self._commit = itertools.count(1000)
        self.cdc_schemas: dict[str, tuple[dict[str, Any], Any]] = {}
        for obj in objects.values():
            if obj.change_events:
                schema = change_event_schema(obj)
                parsed = fastavro.parse_schema(schema)
                self.cdc_schemas[obj.name] = (schema, parsed)
                bus.add_topic(obj.cdc_topic, schema, schema_id(schema), can_publish=False)

    # --- ids and lookups ---------------------------------------------------------------------

    def new_id(self, obj: SObjectDef) -> str:
        n = next(self._ids)
        body = ""
        for _ in range(9):
            n, r = divmod(n, 62)
            body = ID_CHARS[r] + body
        return f"{obj.key_prefix}{body}AAA"[:15] + "AAA"

    def obj(self, sobject: str) -> SObjectDef:
        obj = self.objects.get(sobject)
        if obj is None or obj.platform_event:
            raise RequestError(404, "NOT_FOUND", "The requested resource does not exist")
        return obj

    def external_field(self, obj: SObjectDef, name: str) -> FieldDef:
        f = obj.fields.get(name)
        if f is None or not f.external_id:
            raise RequestError(404, "NOT_FOUND", f"Provided external ID field does not exist or is not accessible: "
                               f"{name}")
        return f

    def find(self, sobject: str, field: str, value: Any) -> str | None:
        return self.unique.get((sobject, field), {}).get(value)

    def get(self, sobject: str, record_id: str) -> dict[str, Any] | None:
        return self.records.get(sobject, {}).get(record_id)

    def lock(self, sobject: str, external_value: str, held: bool = True) -> None:
        """Simulate another transaction holding a record: its upserts answer UNABLE_TO_LOCK_ROW."""
        (self.locked.add if held else self.locked.discard)((sobject, external_value))

    # --- writing -----------------------------------------------------------------------------

    def check_record(self, obj: SObjectDef, record: dict[str, Any]) -> dict[str, Any]:
        """The record's values parsed, or RequestError for an unknown field or a wrongly typed value."""
        values: dict[str, Any] = {}
        for name, value in record.items():
            if name == "attributes":
                continue
            f = obj.fields.get(name)
            if f is None:
                raise RequestError(400, "INVALID_FIELD", f"No such column '{name}' on sobject of type {obj.name}")
            values[name] = parse_value(f, value, obj.name)
        return values

    def upsert(self, obj: SObjectDef, ext: FieldDef, values: dict[str, Any], origin: str,
               tx: "Transaction") -> dict[str, Any]:
        """Create or update one record by its external id value; RecordError for a per-record failure."""
        key = values.get(ext.name)
        if key is None or key == "":
            raise RecordError("MISSING_ARGUMENT", f"{ext.name} not specified", [])
        if (obj.name, str(key)) in self.locked:
            self.lock_refusals += 1
            raise RecordError("UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access to this record or 1 records: "
                              f"{self.find(obj.name, ext.name, key) or key}", [])
        fixed = sorted(n for n in values if not obj.fields[n].createable)
        if fixed:
            raise RecordError("INVALID_FIELD_FOR_INSERT_UPDATE", f"Unable to create/update fields: {', '.join(fixed)}. "
                              "Please check the security settings of this field and verify that it is read/write "
                              "for your profile or permission set.", fixed)
        for name, value in values.items():
            if isinstance(value, str) and len(value) > obj.fields[name].length:
                raise RecordError("STRING_TOO_LONG", f"{obj.fields[name].name}: data value too large: "
                                  f"{value[:20]}... (max length={obj.fields[name].length})", [name])
        if (obj.name, ext.name, key) in tx.claimed:
            raise RecordError("DUPLICATE_EXTERNAL_ID", f"Duplicate external id specified: {key}", [ext.name])
        existing_id = self.find(obj.name, ext.name, key)
        current = self.records[obj.name].get(existing_id) if existing_id else None
        merged = {**(current or {}), **values}
        missing = [f.name for f in obj.fields.values() if f.required and merged.get(f.name) in (None, "")]
        if missing:
            raise RecordError("REQUIRED_FIELD_MISSING", f"Required fields are missing: [{', '.join(missing)}]", missing)
        for f in obj.fields.values():
            if f.unique and values.get(f.name) not in (None, ""):
                value = values[f.name]
                other = self.find(obj.name, f.name, value) or tx.claimed.get((obj.name, f.name, value))
                if other is not None and other != existing_id:
                    raise RecordError("DUPLICATE_VALUE", f"duplicate value found: {f.name} duplicates value on record "
                                      f"with id: {other}", [f.name])
        now = self._now_text()
        if current is None:
            record_id = self.new_id(obj)
            record = {"Id": record_id, "CreatedDate": now, "CreatedById": self.user_id, **merged,
                      "LastModifiedDate": now, "LastModifiedById": self.user_id}
            changed = None
        else:
            record_id = existing_id  # type: ignore[assignment]
            changed = [n for n, v in values.items() if current.get(n) != v]
            record = {**merged, "LastModifiedDate": now, "LastModifiedById": self.user_id}
        tx.stage(obj, record_id, record, changed, origin)
        return {"id": record_id, "success": True, "errors": [], "created": current is None}

    def apply(self, tx: "Transaction") -> None:
        """Commit a transaction's staged records and publish their change events (one transaction key)."""
        for obj, record_id, record, _, _ in tx.staged:
            self.records[obj.name][record_id] = record
            for f in obj.fields.values():
                if f.unique and record.get(f.name) not in (None, ""):
                    self.unique.setdefault((obj.name, f.name), {})[record[f.name]] = record_id
        self._publish_changes(tx)

    # --- change data capture -----------------------------------------------------------------

    def _now_text(self) -> str:
        return datetime.fromtimestamp(self.clock.time(), timezone.utc).isoformat(timespec="milliseconds").replace(
            "+00:00", "Z")

    def _publish_changes(self, tx: "Transaction") -> None:
        key, commit = str(uuid.uuid4()), next(self._commit)
        sequence = 0
        for obj, record_id, record, changed, origin in tx.staged:
            if obj.name not in self.cdc_schemas or (changed is not None and not changed):
                continue
            sequence += 1
            event = change_event(obj, self.cdc_schemas[obj.name][0], record_id, record, changed, origin, key,
                                 sequence, int(self.clock.time() * 1000), commit, self.user_id)
            self.publish_change(obj, event)

    def publish_change(self, obj: SObjectDef, event: dict[str, Any]) -> int:
        """Encode a change event with the object's CDC schema and append it to its channel."""
        schema, parsed = self.cdc_schemas[obj.name]
        out = io.BytesIO()
        fastavro.schemaless_writer(out, parsed, event)
        topic = self.bus.topics[obj.cdc_topic]
        return self.bus.publish(topic, out.getvalue(), str(uuid.uuid4()))


class Transaction:
    """Records staged by one request; `allOrNone` requests commit them only if none failed."""

    def __init__(self) -> None:
        self.staged: list[tuple[SObjectDef, str, dict[str, Any], list[str] | None, str]] = []
        self.claimed: dict[tuple[str, str, Any], str] = {}  # unique values of staged records -> their ids

    def stage(self, obj: SObjectDef, record_id: str, record: dict[str, Any], changed: list[str] | None,
              origin: str) -> None:
        self.staged.append((obj, record_id, record, changed, origin))
        for f in obj.fields.values():
            if f.unique and record.get(f.name) not in (None, ""):
                self.claimed[(obj.name, f.name, record[f.name])] = record_id
