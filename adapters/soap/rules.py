"""The business-error rule applied to an answer: which rows of the ERP's result table are refusals, and
the one text that names them all (type, id, number, message per row), bounded at a row boundary.

Pure functions over the JSON-ready answer (dicts, lists, text), so they are cheap on the hot path and
property-tested without a server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adapters.http.wire import bounded
from adapters.soap.config import BusinessErrorRule

TEXT_LIMIT = 4000  # characters of the refusal text; rows past it are counted, never cut in half

_MISSING = object()


def child(node: dict[str, Any], name: str, ignore_case: bool) -> Any:
    """`node[name]`, or the first key equal to it without regard to case; _MISSING when absent."""
    if name in node:
        return node[name]
    if ignore_case:
        folded = name.casefold()
        for key, value in node.items():
            if isinstance(key, str) and key.casefold() == folded:
                return value
    return _MISSING


def walk(node: Any, parts: list[str], ignore_case: bool) -> tuple[bool, list[Any]]:
    """(found, values): every value at the dotted `parts` below `node`, lists on the way fanning out;
    `found` says whether the path exists in this answer at all (even holding null or nothing)."""
    if isinstance(node, list):
        found_any, values = False, []
        for item in node:
            found, got = walk(item, parts, ignore_case)
            found_any = found_any or found
            values.extend(got)
        return found_any, values
    if not parts:
        return True, [] if node is None else [node]
    if not isinstance(node, dict):
        return False, []
    value = child(node, parts[0], ignore_case)
    if value is _MISSING:
        return False, []
    return walk(value, parts[1:], ignore_case)


@dataclass(frozen=True)
class Refusal:
    """One row of the table whose type is an error value."""

    type: str
    id: str
    number: str
    message: str

    def __str__(self) -> str:
        code = " ".join(p for p in (self.type, self.id, self.number) if p)
        return f"{code}: {self.message}" if self.message else code


def _field(row: dict[str, Any], name: str | None, ignore_case: bool) -> str:
    if name is None:
        return ""
    value = child(row, name, ignore_case)
    return "" if value is _MISSING or value is None else str(value).strip()


def sap_rows(rows: list[Any], ignore_case: bool) -> list[Any]:
    """Rows with SAP's table wrapper taken off: zeep reads `<RETURN><item>…</item></RETURN>` as
    `{"item": [...]}` (one row: `{"item": {...}}`), so a table given as `RETURN` finds its rows too."""
    out: list[Any] = []
    for row in rows:
        if isinstance(row, dict) and len(row) == 1:
            inner = child(row, "item", ignore_case)
            if inner is not _MISSING:
                out.extend(inner if isinstance(inner, list) else [] if inner is None else [inner])
                continue
        out.append(row)
    return out


def refusals(data: Any, rule: BusinessErrorRule) -> list[Refusal] | None:
    """The refusal rows of an answer, in answer order; None when the table is not in the answer."""
    found, rows = walk(data, rule.table.split("."), rule.ignore_case)
    if not found:
        return None
    rows = sap_rows(rows, rule.ignore_case)
    fold = rule.ignore_case
    wanted = {v.strip().casefold() if fold else v.strip() for v in rule.error_values}
    hits = []
    for row in rows:
        if not isinstance(row, dict):
            continue
        kind = _field(row, rule.type_field, fold)
        if (kind.casefold() if fold else kind) in wanted:
            hits.append(Refusal(kind, _field(row, rule.id_field, fold), _field(row, rule.number_field, fold),
                                _field(row, rule.message_field, fold)))
    return hits


def business_error(data: Any, rule: BusinessErrorRule) -> str | None:
    """The refusal text of an answer (every refusal row, ` | ` between them), or None when it is clean.
    An answer without the table is clean unless `rule.when_absent` is `error`."""
    rows = refusals(data, rule)
    if rows is None:
        if rule.when_absent == "error":
            return f"refused: the answer has no {rule.table} table (business_error.when_absent: error)"
        return None
    if not rows:
        return None
    return "refused: " + join_bounded([str(r) for r in dict.fromkeys(rows)], TEXT_LIMIT)


def join_bounded(parts: list[str], limit: int, sep: str = " | ") -> str:
    """`parts` joined by `sep`, whole parts only, up to about `limit` characters; the rest counted."""
    out: list[str] = []
    used = 0
    for i, part in enumerate(parts):
        part = bounded(part, limit)
        cost = len(part) + (len(sep) if out else 0)
        if out and used + cost > limit:
            rest = len(parts) - i
            return sep.join(out) + f"{sep}… and {rest} more row{'s' if rest != 1 else ''}"
        out.append(part)
        used += cost
    return sep.join(out)
