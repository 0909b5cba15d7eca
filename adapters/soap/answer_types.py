"""Whether a business-error rule can ever match an operation's answer, decided from the WSDL before
anything runs: the table path and the row fields are looked up in the answer's XML Schema type the way
zeep will hand the rule will meet the answer: paths start at the response element's children (zeep hands a single
child back bare; the adapter wraps it again for the rule), a repeated element is a list whose every
element is a row, and an SAP table's `item` rows are the table's rows (rules.sap_rows).

A rule that can never match would let every refusal pass as a success, so `runner.py validate` (and
the endpoint's start, for a WSDL fetched by URL) reports it with the candidates the answer does have.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zeep.xsd.elements import Any as AnyElement
from zeep.xsd.elements import Element

from adapters.soap.config import BusinessErrorRule

Loc = tuple[str | int, ...]


@dataclass
class Node:
    """A place in the answer: the complex type there (None: text), or unknown content (xsd:any)."""

    children: dict[str, Any] = field(default_factory=dict)  # name -> zeep Element
    text: bool = False
    unknown: bool = False


def _node_of(xsd_type: Any) -> Node:
    if xsd_type is None or not hasattr(xsd_type, "elements"):
        return Node(text=True)
    node = Node()
    try:
        elements = xsd_type.elements
    except Exception:  # noqa: BLE001 - a type zeep cannot flatten: do not guess
        return Node(unknown=True)
    for name, element in elements:
        if isinstance(element, AnyElement) or not isinstance(element, Element):
            node.unknown = True
            continue
        node.children[name] = element
    if not node.children and not node.unknown:
        node.text = bool(getattr(xsd_type, "_element", None) is None)
    return node


def _body(operation: Any) -> Any:
    """The output body element of a document/literal operation with one part and no output headers."""
    output = getattr(operation, "output", None)
    body = getattr(output, "body", None)
    header = getattr(output, "header", None)
    if body is None or not isinstance(body, Element) or getattr(getattr(header, "type", None), "_element", None):
        return None  # rpc style, several parts or output headers: not judged
    return body


def zeep_unwraps(operation: Any) -> str | None:
    """The child zeep hands back bare when the response element has exactly one (and no attributes),
    so a rule can still name it: the adapter wraps the answer in it again before applying the rule."""
    body = _body(operation)
    if body is None or getattr(body.type, "attributes", None):
        return None
    node = _node_of(body.type)
    if node.unknown or len(node.children) != 1:
        return None
    (only,) = node.children.values()
    return only.name


def answer_node(operation: Any) -> Node:
    """The response element's type: the rule's paths start at its children (adapter.call re-wraps what
    zeep unwraps, see zeep_unwraps)."""
    body = _body(operation)
    return Node(unknown=True) if body is None else _node_of(body.type)


def _lookup(node: Node, name: str, ignore_case: bool) -> Any:
    if name in node.children:
        return node.children[name]
    if ignore_case:
        for key, element in node.children.items():
            if key.casefold() == name.casefold():
                return element
    return None


def _near(node: Node, name: str) -> str:
    names = sorted(node.children)
    same = [n for n in names if n.casefold() == name.casefold()]
    hint = f" (names are case-sensitive: it has {same[0]}; or set ignore_case: true)" if same else ""
    return f"{hint}; there: {', '.join(names) or 'no elements'}" if not same else hint


def rule_problems(rule: BusinessErrorRule, operation_name: str, operation: Any) -> list[tuple[Loc, str]]:
    """Why `rule` can never match `operation`'s answer, each with the rule key it is about; [] when it can
    (or when the WSDL leaves the answer open, e.g. xsd:any)."""
    node = answer_node(operation)
    walked: list[str] = []
    for part in rule.table.split("."):
        if node.unknown:
            return []
        element = _lookup(node, part, rule.ignore_case)
        if element is None:
            where = ".".join(walked) or "the answer"
            return [(("table",), f"{operation_name}'s answer can never hold {rule.table}: {where} has no "
                     f"{part}{_near(node, part)}")]
        walked.append(element.name)
        node = _node_of(element.type)
    if node.unknown:
        return []
    if set(node.children) == {"item"}:  # an SAP table: its rows are the items (rules.sap_rows)
        walked.append("item")
        node = _node_of(node.children["item"].type)
        if node.unknown:
            return []
    if node.text:
        return [(("table",), f"{operation_name}'s answer has {'.'.join(walked)} as text, not rows with fields")]
    problems: list[tuple[Loc, str]] = []
    for key in ("type_field", "message_field", "id_field", "number_field"):
        name = getattr(rule, key)
        if name is None or _lookup(node, name, rule.ignore_case) is not None:
            continue
        fix = "" if key == "type_field" else f" (set {key}: null when the rows carry none)"
        problems.append(((key,), f"{operation_name}'s rows at {'.'.join(walked)} have no field {name}"
                         f"{_near(node, name)}{fix}"))
    return problems
