"""Every way a SOAP call can fail, mapped onto engine.errors so retry, breaker and DLQ policies never
see a zeep, lxml or httpx exception: HTTP-level answers, SOAP faults (code, SOAP 1.2 subcode chain and
detail as text, in full up to a bound), transport errors, answers the hub cannot read. Business-error
rows inside a successful answer are adapters/soap/rules.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import httpx
from lxml import etree
from zeep import exceptions as zx

from adapters.http import parse_retry_after, snippet
from adapters.http.wire import bounded
from engine.errors import (HubError, TargetRejected, TargetServerError, TargetTimeout, TargetUnavailable, Throttled,
                           UnparseableAnswer, ValidationFailed)

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


DETAIL_LIMIT = 2000  # characters of a fault detail in an error text: ids and codes fit whole
BODY_LIMIT = 600  # characters of an answer body quoted in an error text
_WHOLE = 10**7  # "no limit" for redaction before the text is rendered and bounded here
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


def detail_text(detail: Any, redact: Redact) -> str:
    """A fault detail as text: each element with text as `Name=text`, `; ` between them, redacted and
    bounded at a boundary (not inside an identifier). zeep hands over an element, or the whole answer
    as bytes when a non-2xx XML answer holds no Fault element."""
    if detail is None:
        return ""
    if isinstance(detail, etree._Element):
        raw = etree.tostring(detail)
    elif isinstance(detail, bytes | bytearray):
        raw = bytes(detail)
    else:
        raw = str(detail).encode("utf-8")
    shown = redact(raw, limit=_WHOLE)
    try:
        root = etree.fromstring(shown.encode("utf-8"), _PARSER)
    except (etree.XMLSyntaxError, ValueError):
        return bounded(shown, DETAIL_LIMIT)
    parts = []
    for el in root.iter():
        text = " ".join((el.text or "").split()) if isinstance(el.tag, str) else ""
        if text:
            parts.append(f"{etree.QName(el).localname}={text}")
    return bounded("; ".join(parts), DETAIL_LIMIT)


def code_chain(fault: zx.Fault) -> str:
    """The fault code and, for SOAP 1.2, its Subcode chain: `soap:Sender > ContractLocked > Audit`."""
    chain = [fault.code or "(no code)"]
    for sub in fault.subcodes or ():
        chain.append(etree.QName(sub).localname if isinstance(sub, etree.QName | str) and str(sub) else str(sub))
    return " > ".join(chain)


def fault_error(where: str, fault: zx.Fault, status: int, redact: Redact) -> HubError:
    """A SOAP fault by its code: Server/Receiver is the target's failure, Client/Sender and the rest a refusal."""
    code = fault.code or ""
    kind = code.rsplit(":", 1)[-1].split(".", 1)[0].lower()
    text = f"{where}: SOAP fault {code_chain(fault)}: {fault.message or ''}".rstrip()
    if shown := detail_text(fault.detail, redact):
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
    if isinstance(exc, zx.DTDForbidden | zx.EntitiesForbidden):  # whatever the status: never retried
        return UnparseableAnswer(f"{where} -> {ex.status}: the target's answer is hostile XML ({type(exc).__name__}: "
                                 f"SOAP forbids DTDs and entity declarations): {redact(ex.body, limit=BODY_LIMIT)}")
    if isinstance(exc, TypeError | ValueError | zx.Error | etree.LxmlError):
        if not ex.sent:  # zeep could not build the request from this payload
            return ValidationFailed(f"{where}: payload does not fit the operation's input: "
                                    f"{snippet(str(exc) or type(exc).__name__)}")
        if ex.status >= 500:
            return TargetServerError(f"{where} -> {ex.status}: unreadable answer: {redact(ex.body, limit=BODY_LIMIT)}")
        return UnparseableAnswer(f"{where} -> {ex.status}: the target's answer is not a valid SOAP message "
                                 f"({snippet(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, 160)}): "
                                 f"{redact(ex.body, limit=BODY_LIMIT)}")
    return None
