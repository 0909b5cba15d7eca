"""SOAP endpoints (the country ERPs) as flow call targets, built on zeep's AsyncClient.

The WSDL is parsed once per process (a module cache keyed by its location) when the endpoint starts,
never per call; validation lists a local WSDL's operations without starting anything. Operations go
through zeep's AsyncTransport over a pooled httpx.AsyncClient; zeep picks SOAP 1.1 or 1.2 from the
WSDL binding. The transport is wrapped so that HTTP-level failures (503 pages, HTML 500s, empty
bodies) are classified before zeep tries to read them as XML, and so that every request and answer
is logged at debug level with secrets and personal data blanked.

Every failure leaves `call()` as an engine.errors class, so retry, breaker and DLQ policies never
see a zeep, lxml or httpx exception.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import logging
import re
import ssl
import threading
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import structlog
from lxml import etree
from pydantic import BaseModel, ConfigDict, Field, field_validator
from zeep import AsyncClient, Settings
from zeep import exceptions as zx
from zeep.helpers import serialize_object
from zeep.proxy import AsyncServiceProxy
from zeep.transports import AsyncTransport, Transport
from zeep.wsdl import Document
from zeep.wsse.username import UsernameToken
from zeep.wsse.utils import WSU

from adapters.base import Adapter, CallContext, EndpointConfig
from adapters.http import parse_retry_after, snippet
from engine.durations import Duration
from engine.errors import (BusinessError, ConfigError, HubError, RoutingError, TargetRejected, TargetServerError,
                           TargetTimeout, TargetUnavailable, Throttled, UnparseablePayload, ValidationFailed)
from engine.registry import register
from engine.secrets import SecretRef, resolve_value

log = structlog.get_logger("hub.soap")

ROOT = Path(__file__).resolve().parents[1]  # relative WSDL paths are taken from the project root
_FORWARDED = ("ce-id", "ce-correlationid", "traceparent", "tracestate")
_LOG_LIMIT = 8000  # characters of a redacted body in one debug line
REDACTED = "***"


# --- config ------------------------------------------------------------------------------------


class WsSecurity(BaseModel):
    """WS-Security UsernameToken (PasswordText) put in every request's SOAP header."""

    model_config = ConfigDict(extra="forbid")

    username: str = Field(description="wsse:Username.", examples=["hub-de"])
    password: str | SecretRef = Field(description="wsse:Password; use a secret reference, resolved at start.",
                                      examples=[{"env": "ERP_DE_PASSWORD"}])
    timestamp: bool = Field(True, description="Add a wsu:Timestamp (Created, Expires 5 min later) to each request.")


class BusinessErrorRule(BaseModel):
    """Where a successful answer says the ERP refused the request (SAP BAPI `RETURN` table style)."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="Dotted path into the answer; a list on the way matches any element.",
                      examples=["Return.Type"])
    error_values: list[str] = Field(["E", "A"], description="Values at `path` that mean a business error.")
    message_path: str | None = Field(None, description="Dotted path of the ERP's message; taken from the same "
                                     "row when it shares the row's prefix with `path`.", examples=["Return.Message"])

    @field_validator("path", "message_path")
    @classmethod
    def _dotted(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(not part for part in v.split("."))):
            raise ValueError(f"expected a dotted path like Return.Type, got {v!r}")
        return v


class SoapEndpointConfig(EndpointConfig):
    """A SOAP 1.1/1.2 target described by a WSDL; the payload is a dict of the operation's input parts."""

    wsdl: str = Field(description="WSDL location: a path (relative to the project root) or an http(s) URL. "
                      "Loaded once per process.", examples=["sandbox/erp/de.wsdl", "https://erp-de.plu.internal/ws?wsdl"])
    address: str | None = Field(None, description="Service address to call instead of the WSDL's soap:address "
                                "(a simulator on another port, a proxy).", examples=["http://127.0.0.1:8081/erp-de"])
    service: str | None = Field(None, description="Service name when the WSDL has several; the first when omitted.")
    port: str | None = Field(None, description="Port name within the service; the first when omitted.")
    wsdl_timeout: Duration = Field(10.0, description="Deadline for loading the WSDL and its imports at start.",
                                   examples=["10s"])
    timeout: Duration = Field(10.0, description="Per-call deadline when the flow step sets none.",
                              examples=["5s", "800ms"])
    ws_security: WsSecurity | None = Field(None, description="WS-Security UsernameToken; none when omitted.")
    verify_tls: bool = Field(True, description="Verify the server certificate (https only).")
    ca_bundle: str | None = Field(None, description="PEM file of CAs to trust instead of the system's.",
                                  examples=["/etc/plu/ca/erp-de.pem"])
    client_cert: str | None = Field(None, description="PEM client certificate for mutual TLS.",
                                    examples=["/etc/plu/tls/hub-erp-de.crt"])
    client_key: str | None = Field(None, description="PEM key of client_cert, when not in the same file.",
                                   examples=["/etc/plu/tls/hub-erp-de.key"])
    max_connections: int = Field(16, ge=1, le=1024, description="Size of the connection pool to this target.")
    operations: list[str] | None = Field(None, description="When given, only these WSDL operations may be called.",
                                         examples=[["CreateContract", "GetContract"]])
    business_error: BusinessErrorRule | None = Field(
        None, description="Turns error rows inside a successful answer into a BusinessError (permanent).",
        examples=[{"path": "Return.Type", "error_values": ["E", "A"], "message_path": "Return.Message"}])
    redact: list[str] = Field(["Password", "Iban", "Email", "Phone"], description="Element names (case-insensitive, "
                              "substring) whose text is blanked in debug logs and error snippets.")

    @field_validator("client_key")
    @classmethod
    def _key_needs_cert(cls, v: str | None, info: Any) -> str | None:
        if v is not None and not info.data.get("client_cert"):
            raise ValueError("client_key needs client_cert")
        return v


# --- WSDL cache (process-wide) ------------------------------------------------------------------


_DOCS: dict[str, Document] = {}
_OPS: dict[tuple[str, int, str | None, str | None], tuple[list[str], str | None]] = {}
_LOCK = threading.Lock()


def _is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def wsdl_location(wsdl: str) -> str:
    """An http(s) URL as is; a path (or file:// URL) made absolute against the project root."""
    if _is_url(wsdl):
        return wsdl
    path = Path(wsdl.removeprefix("file://")).expanduser()
    return str(path if path.is_absolute() else ROOT / path)


def _document(location: str, transport: Transport, settings: Settings) -> Document:
    """The parsed WSDL for `location`, loaded at most once per process (blocking: run it in a thread)."""
    with _LOCK:
        doc = _DOCS.get(location)
        if doc is None:
            doc = Document(location, transport, settings=settings)
            _DOCS[location] = doc
        return doc


def clear_wsdl_cache() -> None:
    """Forget every parsed WSDL (tests; a deliberate reload)."""
    with _LOCK:
        _DOCS.clear()
        _OPS.clear()


def _port(doc: Document, service: str | None, port: str | None) -> Any:
    services = doc.services
    svc = services.get(service) if service else next(iter(services.values()), None)
    if svc is None:
        raise LookupError(f"WSDL has no service {service!r} (has: {', '.join(services) or 'none'})"
                          if service else "WSDL defines no service")
    found = svc.ports.get(port) if port else next(iter(svc.ports.values()), None)
    if found is None:
        raise LookupError(f"service {svc.name!r} has no port {port!r} (has: {', '.join(svc.ports) or 'none'})"
                          if port else f"service {svc.name!r} defines no port")
    return found


# --- per-call state and the transport ------------------------------------------------------------


class _Exchange:
    """What the transport saw of one call: set in call(), filled in by the transport."""

    __slots__ = ("operation", "headers", "sent", "status", "body", "content_type")

    def __init__(self, operation: str, headers: dict[str, str]) -> None:
        self.operation = operation
        self.headers = headers
        self.sent = False
        self.status = 0
        self.body = b""
        self.content_type = ""


_CURRENT: contextvars.ContextVar[_Exchange | None] = contextvars.ContextVar("hub_soap_exchange", default=None)


class _HubTransport(AsyncTransport):
    """AsyncTransport that adds the call's headers, logs redacted, and classifies non-SOAP answers."""

    def __init__(self, adapter: "SoapAdapter", client: httpx.AsyncClient, wsdl_client: httpx.Client,
                 wsdl_timeout: float) -> None:
        super().__init__(client=client, wsdl_client=wsdl_client, timeout=wsdl_timeout)
        self.adapter = adapter

    async def post(self, address: str, message: bytes, headers: dict[str, str]) -> httpx.Response:
        ex = _CURRENT.get()
        if ex is not None:
            headers = {**headers, **ex.headers}
            ex.sent = True
        adapter = self.adapter
        operation = ex.operation if ex else None
        if _debug_enabled():
            log.debug("soap request", endpoint=adapter.endpoint, operation=operation, address=address,
                      body=adapter.redact_text(message, limit=_LOG_LIMIT))
        response = await self.client.post(address, content=message, headers=headers)
        body = response.content
        ctype = response.headers.get("Content-Type", "")
        if ex is not None:
            ex.status, ex.body, ex.content_type = response.status_code, body, ctype
        if _debug_enabled():
            log.debug("soap response", endpoint=adapter.endpoint, operation=operation, status=response.status_code,
                      body=adapter.redact_text(body, limit=_LOG_LIMIT))
        if response.status_code >= 300:
            error = adapter.http_error(operation, response.status_code, ctype, body, response.headers)
            if error is not None:
                raise error
        return response


class _UsernameToken(UsernameToken):
    """UsernameToken with a fresh wsu:Timestamp per message (zeep's would reuse one element)."""

    def __init__(self, username: str, password: str, timestamp: bool, ttl: float = 300.0) -> None:
        super().__init__(username, password)
        self._stamp = timestamp
        self._ttl = ttl

    def apply(self, envelope: Any, headers: Any) -> Any:
        if self._stamp:  # apply() is synchronous: no other call can interleave here
            now = datetime.now(timezone.utc).replace(microsecond=0)
            fmt = "%Y-%m-%dT%H:%M:%SZ"
            self.timestamp_token = WSU.Timestamp(
                WSU.Created(now.strftime(fmt)), WSU.Expires((now + timedelta(seconds=self._ttl)).strftime(fmt)))
        return super().apply(envelope, headers)


def _debug_enabled() -> bool:
    try:
        return bool(log.is_enabled_for(logging.DEBUG))
    except AttributeError:  # a logger wrapper without level filtering
        return True


# --- the adapter ---------------------------------------------------------------------------------


@register
class SoapAdapter(Adapter):
    """Calls a WSDL-described SOAP target through zeep's AsyncClient over a pooled httpx client."""

    name = "soap"
    Config = SoapEndpointConfig
    operations_doc = ("An operation of the WSDL's port (limited to `operations` when given); the payload is a "
                      "dict of its input parts. The answer comes back as JSON-ready data.")

    config: SoapEndpointConfig

    def __init__(self, endpoint: str, config: EndpointConfig, services: Any) -> None:
        super().__init__(endpoint, config, services)
        self.location = wsdl_location(self.config.wsdl)
        self._redact = tuple(n.lower() for n in self.config.redact if n)
        self._redact_re = _element_pattern(self._redact)
        self._secrets: tuple[str, ...] = ()
        self._client: AsyncClient | None = None
        self._service: AsyncServiceProxy | None = None
        self._operations: list[str] = []
        self._http: httpx.AsyncClient | None = None
        self._wsdl_http: httpx.Client | None = None

    # --- validation ----------------------------------------------------------------------------

    def check_operation(self, operation: str | None) -> str | None:
        allowed = self.config.operations
        if operation is None:
            known = allowed or self._wsdl_operations()[0]
            return f"endpoint {self.endpoint!r} needs an operation" + (f" (known: {', '.join(known)})" if known else "")
        if allowed is not None and operation not in allowed:
            return f"endpoint {self.endpoint!r} does not allow operation {operation!r} (allowed: {', '.join(allowed)})"
        if self._service is not None:
            names = self._operations
        else:
            names, problem = self._wsdl_operations()
            if problem:
                return problem
            if not names:  # a URL: known only once started; no complaint now
                return None
        if operation in names:
            return None
        return f"endpoint {self.endpoint!r}: WSDL has no operation {operation!r} (known: {', '.join(names) or 'none'})"

    def _wsdl_operations(self) -> tuple[list[str], str | None]:
        """Operation names of a local WSDL (cached per file version); ([], None) for a URL."""
        if _is_url(self.location):
            return [], None
        c = self.config
        try:
            mtime = Path(self.location).stat().st_mtime_ns
        except OSError as exc:
            return [], f"endpoint {self.endpoint!r}: WSDL {c.wsdl!r} cannot be read: {exc.strerror or exc}"
        key = (self.location, mtime, c.service, c.port)
        cached = _OPS.get(key)
        if cached is None:
            try:
                doc = _document(self.location, Transport(timeout=c.wsdl_timeout), Settings())
                cached = (sorted(_port(doc, c.service, c.port).binding.all()), None)
            except Exception as exc:  # noqa: BLE001 - any WSDL problem is a validation message
                cached = ([], f"endpoint {self.endpoint!r}: WSDL {c.wsdl!r} cannot be loaded: "
                              f"{snippet(str(exc) or type(exc).__name__)}")
            _OPS[key] = cached
        return cached

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        c = self.config
        wsse = None
        if c.ws_security is not None:
            try:
                password = resolve_value(c.ws_security.password)
            except LookupError as exc:
                raise ConfigError([f"endpoint {self.endpoint!r}: ws_security.password: {exc}"]) from exc
            self._secrets = (password,) if password else ()
            wsse = _UsernameToken(c.ws_security.username, password, c.ws_security.timestamp)
        tls = self._tls()
        limits = httpx.Limits(max_connections=c.max_connections, max_keepalive_connections=c.max_connections)
        # The deadline of a call is asyncio.timeout in call(); httpx only bounds connecting.
        self._http = httpx.AsyncClient(verify=tls, limits=limits, timeout=httpx.Timeout(None, connect=c.timeout))
        self._wsdl_http = httpx.Client(verify=tls, timeout=c.wsdl_timeout)
        transport = _HubTransport(self, self._http, self._wsdl_http, c.wsdl_timeout)
        settings = Settings()
        try:
            doc = await asyncio.wait_for(
                asyncio.to_thread(_document, self.location, transport, settings), c.wsdl_timeout + 1)
            port = _port(doc, c.service, c.port)
        except Exception as exc:
            await self.close()
            raise ConfigError([f"endpoint {self.endpoint!r}: cannot load WSDL {c.wsdl!r}: "
                               f"{snippet(str(exc) or type(exc).__name__)}"]) from exc
        self._client = AsyncClient(doc, wsse=wsse, transport=transport, settings=settings)
        options = dict(port.binding_options)
        if c.address:
            options["address"] = c.address
        self._service = AsyncServiceProxy(self._client, port.binding, **options)
        self._operations = sorted(port.binding.all())
        missing = [op for op in c.operations or () if op not in self._operations]
        if missing:
            await self.close()
            raise ConfigError([f"endpoint {self.endpoint!r}: operations {', '.join(missing)} not in the WSDL "
                               f"(known: {', '.join(self._operations)})"])

    def _tls(self) -> ssl.SSLContext:
        c = self.config
        try:
            context = ssl.create_default_context(cafile=c.ca_bundle)
            if not c.verify_tls:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if c.client_cert:
                context.load_cert_chain(c.client_cert, c.client_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError([f"endpoint {self.endpoint!r}: TLS files: {exc}"]) from exc
        return context

    async def close(self) -> None:
        self._service = None
        self._client = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self._wsdl_http is not None:
            self._wsdl_http.close()
            self._wsdl_http = None

    # --- the call ------------------------------------------------------------------------------

    async def call(self, operation: str | None, payload: Any, ctx: CallContext) -> Any:
        service = self._service
        if service is None:
            raise RuntimeError(f"soap endpoint {self.endpoint!r} used before start()")
        if operation is None or operation not in self._operations or (
                self.config.operations is not None and operation not in self.config.operations):
            raise RoutingError(self.check_operation(operation) or f"unknown operation {operation!r}")
        if hasattr(payload, "model_dump"):
            payload = payload.model_dump(mode="json")
        if payload is None:
            payload = {}
        if not isinstance(payload, dict):
            raise ValidationFailed(f"{self.endpoint}: {operation}: payload must be an object of the operation's "
                                   f"input parts, got {type(payload).__name__}")
        where = f"{self.endpoint}: {operation}"
        ex = _Exchange(operation, self._call_headers(ctx))
        token = _CURRENT.set(ex)
        timeout = ctx.timeout if ctx.timeout and ctx.timeout > 0 else self.config.timeout
        try:
            async with asyncio.timeout(timeout):
                result = await service[operation](**payload)
        except HubError:
            raise
        except TimeoutError as exc:
            raise TargetTimeout(f"{where}: no answer within {timeout:g}s") from exc
        except httpx.TimeoutException as exc:
            raise TargetTimeout(f"{where}: {type(exc).__name__} after {timeout:g}s") from exc
        except (httpx.TransportError, OSError) as exc:  # refused, reset, DNS, TLS, protocol
            raise TargetUnavailable(f"{where}: {type(exc).__name__}: {snippet(str(exc)) or 'connection failed'}") from exc
        except zx.Fault as exc:
            raise self._fault_error(where, exc, ex.status) from exc
        except (TypeError, ValueError, zx.Error, etree.LxmlError) as exc:
            if not ex.sent:  # zeep could not build the request from this payload
                raise ValidationFailed(f"{where}: payload does not fit the operation's input: "
                                       f"{snippet(str(exc) or type(exc).__name__)}") from exc
            if ex.status >= 500:
                raise TargetServerError(f"{where} -> {ex.status}: unreadable answer: "
                                        f"{self.redact_text(ex.body, limit=300)}") from exc
            raise UnparseablePayload(f"{where}: answer is not a valid SOAP message ({snippet(str(exc), 160)}): "
                                     f"{self.redact_text(ex.body, limit=300)}") from exc
        finally:
            _CURRENT.reset(token)
        data = to_jsonable(serialize_object(result, dict))
        if self.config.business_error is not None:
            message = business_error(data, self.config.business_error)
            if message is not None:
                raise BusinessError(f"{where}: {message}")
        return data

    def _call_headers(self, ctx: CallContext) -> dict[str, str]:
        headers: dict[str, str] = {}
        for name in _FORWARDED if ctx.headers else ():
            if value := ctx.headers.get(name):
                headers[name] = value
        if ctx.correlation_id:
            headers["X-Correlation-Id"] = ctx.correlation_id
        if ctx.msg_id:
            headers["Idempotency-Key"] = ctx.msg_id
        return headers

    # --- error mapping ---------------------------------------------------------------------------

    def http_error(self, operation: str | None, status: int, ctype: str, body: bytes,
                   headers: Any) -> HubError | None:
        """A non-2xx answer that is not a SOAP envelope, as a taxonomy error; None lets zeep read the fault."""
        where = f"{self.endpoint}: {operation} -> {status}"
        if status in (429, 503):
            detail = f": {self.redact_text(body, limit=300)}" if body else ""
            return Throttled(f"{where}{detail}", retry_after=parse_retry_after(headers.get("Retry-After")))
        if body.strip() and "xml" in ctype.lower():
            return None  # a SOAP fault (or XML zeep will judge)
        detail = f": {self.redact_text(body, limit=300)}" if body.strip() else " (empty body)"
        if status >= 500:
            return TargetServerError(f"{where}{detail}")
        if status == 408:
            return TargetTimeout(f"{where}{detail}")
        return TargetRejected(f"{where}{detail}", status=status)

    def _fault_error(self, where: str, fault: zx.Fault, status: int) -> HubError:
        code = fault.code or ""
        kind = code.rsplit(":", 1)[-1].split(".", 1)[0].lower()
        text = f"{where}: SOAP fault {code or '(no code)'}: {fault.message or ''}".rstrip()
        detail = fault.detail
        if detail is not None:
            raw = etree.tostring(detail) if isinstance(detail, etree._Element) else str(detail).encode()
            shown = self.redact_text(raw, limit=300)
            if shown:
                text = f"{text} (detail: {shown})"
        if kind in ("server", "receiver"):
            return TargetServerError(text)
        if kind in ("client", "sender", "versionmismatch", "mustunderstand", "dataencodingunknown"):
            return TargetRejected(text, status=status or None)
        if status >= 500 and not code:  # an XML error page without a Fault element
            return TargetServerError(text)
        return TargetRejected(text, status=status or None)

    # --- redaction -------------------------------------------------------------------------------

    def redact_text(self, data: bytes | str, limit: int = _LOG_LIMIT) -> str:
        """The body with configured elements and known secrets blanked, on one line, cut to `limit`."""
        return snippet(redact(data, self._redact, self._secrets, self._redact_re), limit)


# --- helpers (pure) ------------------------------------------------------------------------------


_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


def _element_pattern(names: tuple[str, ...]) -> re.Pattern[str] | None:
    if not names:
        return None
    alt = "|".join(re.escape(n) for n in names)
    return re.compile(rf"(<(?:[\w.-]+:)?[\w.-]*(?:{alt})[\w.-]*(?:\s[^>]*)?>)([^<]*)", re.IGNORECASE)


def redact(data: bytes | str, names: tuple[str, ...], secrets: tuple[str, ...] = (),
           pattern: re.Pattern[str] | None = None) -> str:
    """Blank the text of every element whose local name contains one of `names` (lowercase), and secrets.

    Well-formed XML is rewritten through lxml (nested text under a matching element is blanked too);
    anything else (HTML, broken XML) goes through a regex over start tags.
    """
    raw = data.encode() if isinstance(data, str) else data
    text: str | None = None
    if names and raw.lstrip().startswith(b"<"):
        try:
            root = etree.fromstring(raw, _PARSER)
        except etree.XMLSyntaxError:
            root = None
        if root is not None:
            for el in root.iter():
                if isinstance(el.tag, str) and any(n in etree.QName(el).localname.lower() for n in names):
                    for sub in el.iter():
                        if sub.text and sub.text.strip():
                            sub.text = REDACTED
                        if sub is not el and sub.tail and sub.tail.strip():
                            sub.tail = REDACTED
            text = etree.tostring(root, encoding="unicode")
    if text is None:
        text = raw.decode("utf-8", errors="replace")
        pattern = pattern or _element_pattern(names)
        if pattern is not None:
            text = pattern.sub(lambda m: m.group(1) + (REDACTED if m.group(2).strip() else m.group(2)), text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


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
