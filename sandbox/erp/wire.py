"""The pieces a country dialect is made of: an operation (`Op`: parse a request element, render a result)
and the `Dialect` that holds a country's namespace, SOAP version, texts and operations.

Kept apart from dialects.py so that file is only the five country tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable
from xml.sax.saxutils import escape

from lxml import etree

__all__ = ["Dialect", "Op", "Parse", "Render", "e"]

Parse = Callable[[etree._Element, "Dialect"], dict[str, Any]]
Render = Callable[[dict[str, Any], "Dialect"], str]


def e(tag: str, value: Any) -> str:
    """`<tag>value</tag>`, escaped; nothing for None."""
    if value is None:
        return ""
    if isinstance(value, bool):
        value = "true" if value else "false"
    return f"<{tag}>{escape(str(value))}</{tag}>"


@dataclass
class Op:
    kind: str  # submit | status | upsert | invoices | payments
    element: str  # the request element (first child of Body)
    response: str  # the answer element
    parse: Parse
    render: Render


@dataclass
class Dialect:
    country: str
    ns: str
    soap: int  # 11 or 12
    wsdl: str
    ops: dict[str, Op]  # by request element local name
    messages: dict[str, str]  # refusal and failure texts, str.format'ed with the refusal's fields
    ws_security: bool = False
    refusal_rows: Callable[[str, str], str] | None = None  # DE: refusals as RETURN rows (code, text) in a 200
    account_key: Callable[[int], str] = str
    switch_ref: Callable[[int], str] = str
    fault_detail: Callable[[str, str], str] = lambda code, msg: f"<code>{escape(code)}</code>"
    operation_names: dict[str, str] = field(default_factory=dict)  # kind -> WSDL operation name

    def text(self, el: etree._Element, path: str) -> str | None:
        """Text at a slash path of local names in this dialect's namespace."""
        return el.findtext("/".join(f"{{{self.ns}}}{p}" for p in path.split("/")))

    def integer(self, el: etree._Element, path: str, default: int) -> int:
        value = self.text(el, path)
        return int(value) if value not in (None, "") else default
