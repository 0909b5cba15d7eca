"""Every way a SOAP call can fail, mapped onto engine.errors so retry, breaker and DLQ policies never
see a zeep, lxml or httpx exception: HTTP-level answers, SOAP faults, transport errors, business-error rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import httpx
from lxml import etree
from zeep import exceptions as zx

from adapters.http import parse_retry_after, snippet
from adapters.soap.config import BusinessErrorRule
from engine.errors import (HubError, TargetRejected, TargetServerError, TargetTimeout, TargetUnavailable, Throttled,
                           UnparseablePayload, ValidationFailed)

if TYPE_CHECKING:
    from adapters.soap.transport import Exchange


class Redact(Protocol):
    """The endpoint's redaction of a body for an error text (SoapAdapter.redact_text)."""

    def __call__(self, data: bytes | str, limit: int = ...) -> str: ...


def http_error(where: str, status: int, ctype: str, body: bytes, headers: Any, redact: Redact) -> HubError | None:
    """A non-2xx answer that is not a SOAP envelope, as a taxonomy error; None lets zeep read the fault."""
    if status in (429, 503):
        detail = f": {redact(body, limit=300)}" if body else ""
        return Throttled(f"{where}{detail}", retry_after=parse_retry_after(headers.get("Retry-After")))
    if body.strip() and "xml" in ctype.lower():
        return None  # a SOAP fault (or XML zeep will judge)
    detail = f": {redact(body, limit=300)}" if body.strip() else " (empty body)"
    if status >= 500:
        return TargetServerError(f"{where}{detail}")
    if status == 408:
        return TargetTimeout(f"{where}{detail}")
    return TargetRejected(f"{where}{detail}", status=status)


def fault_error(where: str, fault: zx.Fault, status: int, redact: Redact) -> HubError:
    """A SOAP fault by its code: Server/Receiver is the target's failure, Client/Sender and the rest a refusal."""
    code = fault.code or ""
    kind = code.rsplit(":", 1)[-1].split(".", 1)[0].lower()
    text = f"{where}: SOAP fault {code or '(no code)'}: {fault.message or ''}".rstrip()
    detail = fault.detail
    if detail is not None:
        raw = etree.tostring(detail) if isinstance(detail, etree._Element) else str(detail).encode()
        shown = redact(raw, limit=300)
        if shown:
            text = f"{text} (detail: {shown})"
    if kind in ("server", "receiver"):
        return TargetServerError(text)
    if kind in ("client", "sender", "versionmismatch", "mustunderstand", "dataencodingunknown"):
        return TargetRejected(text, status=status or None)
    if status >= 500 and not code:  # an XML error page without a Fault element
        return TargetServerError(text)
    return TargetRejected(text, status=status or None)


def call_error(where: str, exc: Exception, ex: Exchange, timeout: float, redact: Redact) -> HubError | None:
    """What an exception out of zeep's call means; None for one that is not a known call failure."""
    # no connection made (refused, DNS, TLS handshake, connect timeout): nothing was sent, a create may be resent
    sent = False if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout) or not ex.sent else None
    if isinstance(exc, TimeoutError):
        return TargetTimeout(f"{where}: no answer within {timeout:g}s", sent=sent)
    if isinstance(exc, httpx.TimeoutException):
        return TargetTimeout(f"{where}: {type(exc).__name__} after {timeout:g}s", sent=sent)
    if isinstance(exc, httpx.TransportError | OSError):  # refused, reset, DNS, TLS, protocol
        return TargetUnavailable(f"{where}: {type(exc).__name__}: {snippet(str(exc)) or 'connection failed'}",
                                 sent=sent)
    if isinstance(exc, zx.Fault):
        return fault_error(where, exc, ex.status, redact)
    if isinstance(exc, TypeError | ValueError | zx.Error | etree.LxmlError):
        if not ex.sent:  # zeep could not build the request from this payload
            return ValidationFailed(f"{where}: payload does not fit the operation's input: "
                                    f"{snippet(str(exc) or type(exc).__name__)}")
        if ex.status >= 500:
            return TargetServerError(f"{where} -> {ex.status}: unreadable answer: {redact(ex.body, limit=300)}")
        return UnparseablePayload(f"{where}: answer is not a valid SOAP message ({snippet(str(exc), 160)}): "
                                  f"{redact(ex.body, limit=300)}")
    return None


def _walk(node: Any, parts: list[str]) -> list[Any]:
    """Every value at the dotted `parts` below `node`; lists on the way fan out."""
    if isinstance(node, list):
        return [found for item in node for found in _walk(item, parts)]
    if not parts:
        return [node]
    if not isinstance(node, dict) or parts[0] not in node:
        return []
    return _walk(node[parts[0]], parts[1:])


def business_error(data: Any, rule: BusinessErrorRule) -> str | None:
    """The ERP's message when a row at `rule.path` holds an error value; None when the answer is clean."""
    parts = rule.path.split(".")
    row_path, leaf = parts[:-1], parts[-1]
    values = set(rule.error_values)
    msg_parts = rule.message_path.split(".") if rule.message_path else None
    relative = msg_parts is not None and msg_parts[:len(row_path)] == row_path and len(msg_parts) > len(row_path)
    hits: list[str] = []
    for row in _walk(data, row_path):
        for value in _walk(row, [leaf]):
            if value is None or str(value) not in values:
                continue
            if relative:
                found = [str(m) for m in _walk(row, msg_parts[len(row_path):]) if m not in (None, "")]  # type: ignore[index]
                hits.append("; ".join(found) or f"{rule.path} = {value}")
            else:
                hits.append(f"{rule.path} = {value}")
    if not hits:
        return None
    if msg_parts is not None and not relative:
        found = [str(m) for m in _walk(data, msg_parts) if m not in (None, "")]
        hits = found or hits
    return "business error: " + " | ".join(dict.fromkeys(hits))
