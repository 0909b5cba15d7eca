"""Small pure helpers for zeep-shaped data: build nested input parts from dotted paths, read answers that
zeep may or may not have unwrapped, and normalise amounts and timestamps to the canonical form.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

CENT = Decimal("0.01")


def nest(values_by_path: Mapping[str, Any]) -> dict[str, Any]:
    """{"Dados.Cursor": "x"} -> {"Dados": {"Cursor": "x"}}; None values are left out, so optional
    elements are omitted rather than sent empty."""
    out: dict[str, Any] = {}
    for path, value in values_by_path.items():
        if value is None:
            continue
        *parents, leaf = path.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def dig(data: Any, path: str) -> Any:
    """The value at a dotted path, or None when any step is missing; "" is the data itself."""
    if not path:
        return data
    for part in path.split("."):
        if not isinstance(data, Mapping):
            return None
        data = data.get(part)
    return data


def unwrap(answer: Any, wrapper: str | None) -> Any:
    """The content of a one-child answer whether or not zeep already stripped the wrapper element."""
    if wrapper and isinstance(answer, Mapping) and wrapper in answer:
        return answer[wrapper]
    return answer


def as_list(value: Any) -> list[Any]:
    """A repeated element as a list: None (zeep's empty list wrapper) is [], one mapping is [it]."""
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


def amount_text(value: Any, minor_units: bool = False) -> str:
    """A decimal string in major units with at least two decimals; integer pence/cents are divided by 100."""
    if value is None or isinstance(value, bool):
        raise ValueError(f"not an amount: {value!r}")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"not an amount: {value!r}") from None
    if not amount.is_finite():
        raise ValueError(f"not an amount: {value!r}")
    if minor_units:
        if amount != amount.to_integral_value():
            raise ValueError(f"amount in minor units must be whole: {value!r}")
        amount = amount.scaleb(-2)
    exponent = amount.as_tuple().exponent
    return str(amount.quantize(CENT) if isinstance(exponent, int) and exponent > -2 else amount)


def utc_iso(value: Any) -> str:
    """ISO-8601 in UTC with a 'Z' ('...+00:00' and naive values are read as UTC)."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str) and value.strip():
        try:
            dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ValueError(f"not an ISO-8601 timestamp: {value!r}") from None
    else:
        raise ValueError(f"not an ISO-8601 timestamp: {value!r}")
    dt = dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)
    return dt.isoformat().replace("+00:00", "Z")


def iso_date(value: Any) -> str | None:
    """A calendar date as YYYY-MM-DD (a date, a datetime or ISO text); None stays None."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    text = str(value).strip()
    try:
        return date.fromisoformat(text[:10]).isoformat()
    except ValueError:
        raise ValueError(f"not an ISO date: {value!r}") from None


def short(data: Any, limit: int = 300) -> str:
    """A bounded repr for error messages, so a DLQ record names what the ERP actually said."""
    text = repr(data)
    return text if len(text) <= limit else text[:limit] + "…"
