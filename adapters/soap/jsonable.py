"""zeep answers as JSON-ready data, so flows and transforms never see zeep objects, Decimals or lxml elements."""

from __future__ import annotations

import base64
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from lxml import etree
from zeep.helpers import serialize_object


def to_jsonable(value: Any) -> Any:
    """serialize_object output as JSON-ready data: ISO dates, Decimal as text, bytes as base64."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, etree._Element):  # xsd:any content
        return etree.tostring(value, encoding="unicode")
    if hasattr(value, "__values__"):  # a zeep CompoundValue serialize_object left alone
        return to_jsonable(serialize_object(value, dict))
    return str(value)
