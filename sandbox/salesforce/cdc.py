"""Change events as Salesforce's Change Data Capture builds them, for the emulator's records.

A create carries every set field and no changed fields; an update carries only the changed fields
(plus LastModifiedDate), their positions in the `changedFields` bitmap ("0x..." over the event
schema's fields, a compound field's parts as "p-0x..." over its nested record) and the nulled ones
in `nulledFields`; a gap event carries the header alone. Dates are epoch days, date-times epoch ms.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sandbox.salesforce.model import FieldDef, SObjectDef


def bitmap(positions: list[int]) -> str:
    """Field positions as Salesforce's bitmap text: bit n set for position n, hex with a 0x prefix."""
    value = 0
    for p in positions:
        value |= 1 << p
    digits = f"{value:X}"
    return "0x" + ("0" * (len(digits) % 2)) + digits


def _avro_value(field: FieldDef, value: Any) -> Any:
    if value is None:
        return None
    if field.type == "date":
        return (date.fromisoformat(value) - date(1970, 1, 1)).days
    if field.type == "datetime":
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
    return value


def change_event(obj: SObjectDef, schema: dict[str, Any], record_id: str, record: dict[str, Any],
                 changed: list[str] | None, origin: str, tx_key: str, sequence: int, commit_ms: int,
                 commit_number: int, user_id: str, change_type: str | None = None) -> dict[str, Any]:
    """One change event as Salesforce builds it: a create carries every set field and no changed
    fields; an update carries the changed fields only (plus LastModifiedDate), with their positions
    in the `changedFields` bitmap (compound components as `parent-bitmap`) and nulled ones in
    `nulledFields`. A gap event (change_type GAP_*) carries the header alone."""
    positions = {f["name"]: i for i, f in enumerate(schema["fields"])}
    parts = {part["name"]: i for i, part in enumerate(_address_fields(schema))}
    body: dict[str, Any] = {}
    top: list[int] = []
    nulled_top: list[int] = []
    nested: dict[int, list[int]] = {}
    gap = change_type is not None and change_type.startswith("GAP_")
    names = list(record) if changed is None else [*changed, "LastModifiedDate"]
    for name in names if not gap else ():
        f = obj.fields.get(name)
        if f is None or name == "Id":
            continue
        value = _avro_value(f, record.get(name))
        if f.compound:
            body.setdefault(f.compound, {p: None for p in parts})[f.part] = value
            if changed is not None:
                nested.setdefault(positions[f.compound], []).append(parts[f.part])
            continue
        body[name] = value
        if changed is not None:
            top.append(positions[name])
            if value is None:
                nulled_top.append(positions[name])
    changed_fields = ([bitmap(top)] if top else []) + [f"{p}-{bitmap(c)}" for p, c in sorted(nested.items())]
    header = {"entityName": obj.name, "recordIds": [record_id],
              "changeType": change_type or ("CREATE" if changed is None else "UPDATE"),
              "changeOrigin": origin, "transactionKey": tx_key, "sequenceNumber": sequence,
              "commitTimestamp": commit_ms, "commitNumber": commit_number, "commitUser": user_id,
              "nulledFields": [bitmap(nulled_top)] if nulled_top else [], "diffFields": [],
              "changedFields": changed_fields}
    return {"ChangeEventHeader": header, **body}


def _address_fields(schema: dict[str, Any]) -> list[dict[str, Any]]:
    for f in schema["fields"]:
        kind = f["type"]
        if isinstance(kind, list) and isinstance(kind[1], dict) and kind[1].get("name") == "Address":
            return kind[1]["fields"]
    return []
