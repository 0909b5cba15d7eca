"""Pub/Sub API events as the hub stores them: the Avro payload decoded with its schema, and a change
event's `ChangeEventHeader` bitmaps decoded to field names.

Salesforce sends `changedFields`, `nulledFields` and `diffFields` as bitmaps (Pub/Sub API guide,
"Event Deserialization Considerations"): the first element, "0x...", has bit n set for the field at
position n of the event's Avro schema; a compound field's parts come as "p-0x...", a bitmap over the
fields of the record nested at position p (BillingAddress -> BillingAddress.City). Positions are
those of the schema the event was written with, so decoding needs that schema, fetched by its id.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import fastavro

BITMAP_FIELDS = ("changedFields", "nulledFields", "diffFields")


def positions(bitmap: str) -> list[int]:
    """Bit positions set in "0x..." (bit 0 is the lowest of the number); ValueError when not hex."""
    text = bitmap.strip()
    if not text.lower().startswith("0x"):
        raise ValueError(f"not a bitmap: {bitmap!r}")
    value = int(text[2:] or "0", 16)
    return [i for i in range(value.bit_length()) if value >> i & 1]


def _record_fields(avro_type: Any) -> list[dict[str, Any]] | None:
    """The fields of a record type, looking through an optional union ["null", record]."""
    if isinstance(avro_type, list):
        for branch in avro_type:
            found = _record_fields(branch)
            if found is not None:
                return found
        return None
    if isinstance(avro_type, dict) and avro_type.get("type") == "record":
        return avro_type.get("fields", [])
    return None


def field_names(bitmaps: list[str], schema: dict[str, Any]) -> list[str]:
    """The field names a bitmap list stands for; a position the schema does not have comes out as
    "#<n>" and an entry that is no bitmap as itself (never dropped: a field changed that this schema
    cannot name still shows)."""
    fields = schema.get("fields", [])
    names: list[str] = []
    for entry in bitmaps:
        try:
            names.extend(_names(entry, fields))
        except ValueError:
            names.append(entry)  # not a bitmap: kept as sent (a Streaming API style name, or garbage)
    return names


def _names(entry: str, fields: list[dict[str, Any]]) -> list[str]:
    if entry.lower().startswith("0x"):
        return [fields[p]["name"] if p < len(fields) else f"#{p}" for p in positions(entry)]
    parent_text, sep, nested = entry.partition("-")
    if not sep or not parent_text.isdigit():
        raise ValueError(entry)
    parent, bits = int(parent_text), positions(nested)
    if parent >= len(fields):
        return [f"#{parent}.#{p}" for p in bits]
    children = _record_fields(fields[parent]["type"]) or []
    label = fields[parent]["name"]
    return [f"{label}.{children[p]['name']}" if p < len(children) else f"{label}.#{p}" for p in bits]


def expand_header(header: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """A ChangeEventHeader with its bitmap fields as lists of field names."""
    out = dict(header)
    for key in BITMAP_FIELDS:
        if isinstance(out.get(key), list):
            out[key] = field_names(out[key], schema)
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def has_bytes(schema: Any) -> bool:
    """Whether records of this schema can hold bytes (JSON needs them as text)."""
    if isinstance(schema, dict):
        return schema.get("type") in ("bytes", "fixed") or any(has_bytes(v) for v in schema.values())
    if isinstance(schema, list):
        return any(has_bytes(v) for v in schema)
    return schema in ("bytes", "fixed")


def decode_event(payload: bytes, parsed: Any, schema: dict[str, Any], with_bytes: bool = True) -> dict[str, Any]:
    """One event's Avro payload as JSON-ready data; a change event's bitmaps as field names
    (`with_bytes`: the schema can hold bytes, turned into base64 text; `has_bytes` tells)."""
    record = fastavro.schemaless_reader(io.BytesIO(payload), parsed)
    if with_bytes:
        record = _jsonable(record)
    header = record.get("ChangeEventHeader")
    if isinstance(header, dict):
        record["ChangeEventHeader"] = expand_header(header, schema)
    return record


def encode_event(values: dict[str, Any], parsed: Any) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, parsed, values)
    return out.getvalue()
