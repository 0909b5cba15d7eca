"""The registered `soap` adapter: SOAP endpoints (the country ERPs) as flow call targets on zeep's AsyncClient
over a pooled httpx client; every failure leaves `call()` as an engine.errors class.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from zeep import AsyncClient, Settings
from zeep.helpers import serialize_object
from zeep.proxy import AsyncServiceProxy

from engine.adapter import Adapter, CallContext, EndpointConfig
from adapters.http import snippet
from adapters.soap.config import SoapEndpointConfig
from adapters.soap.faults import business_error, call_error, http_error
from adapters.soap.jsonable import to_jsonable
from adapters.soap.redaction import LOG_LIMIT, element_pattern, redact
from adapters.soap.security import tls_context, ws_security
from adapters.soap.transport import CURRENT, Exchange, HubTransport
from adapters.soap.wsdl import find_port, load_document, local_operations, wsdl_location
from engine.errors import BusinessError, ConfigError, HubError, RoutingError, ValidationFailed
from engine.registry import register



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
        self._redact_re = element_pattern(self._redact)
        self._secrets: tuple[str, ...] = ()
        self._client: AsyncClient | None = None
        self._service: AsyncServiceProxy | None = None
        self._operations: list[str] = []
        self._http: httpx.AsyncClient | None = None
        self._wsdl_http: httpx.Client | None = None

    # --- validation ----------------------------------------------------------------------------

    def check_operation(self, operation: str | None) -> str | None:
        allowed = self.config.operations
        operation = self.config.aliases.get(operation, operation) if operation else operation
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
        return local_operations(self.endpoint, self.location, self.config)

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        c = self.config
        wsse, self._secrets = ws_security(self.endpoint, c)
        tls = tls_context(self.endpoint, c)
        limits = httpx.Limits(max_connections=c.max_connections, max_keepalive_connections=c.max_connections)
        # The deadline of a call is asyncio.timeout in call(); httpx only bounds connecting.
        self._http = httpx.AsyncClient(verify=tls, limits=limits, timeout=httpx.Timeout(None, connect=c.timeout))
        self._wsdl_http = httpx.Client(verify=tls, timeout=c.wsdl_timeout)
        transport = HubTransport(self, self._http, self._wsdl_http, c.wsdl_timeout)
        settings = Settings()
        try:
            doc = await asyncio.wait_for(
                asyncio.to_thread(load_document, self.location, transport, settings), c.wsdl_timeout + 1)
            port = find_port(doc, c.service, c.port)
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
        missing = [op for op in [*(c.operations or ()), *c.aliases.values()] if op not in self._operations]
        if missing:
            await self.close()
            raise ConfigError([f"endpoint {self.endpoint!r}: operations {', '.join(missing)} not in the WSDL "
                               f"(known: {', '.join(self._operations)})"])

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
        operation = self.config.aliases.get(operation, operation) if operation else operation
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
        ex = Exchange(operation, ctx.http_headers())
        token = CURRENT.set(ex)
        timeout = ctx.timeout if ctx.timeout and ctx.timeout > 0 else self.config.timeout
        try:
            async with asyncio.timeout(timeout):
                result = await service[operation](**payload)
        except HubError:
            raise
        except Exception as exc:
            error = call_error(where, exc, ex, timeout, self.redact_text)
            if error is None:
                raise
            raise error from exc
        finally:
            CURRENT.reset(token)
        data = to_jsonable(serialize_object(result, dict))
        if self.config.business_error is not None:
            message = business_error(data, self.config.business_error)
            if message is not None:
                raise BusinessError(f"{where}: {message}")
        return data

    # --- errors and redaction --------------------------------------------------------------------

    def http_error(self, operation: str | None, status: int, ctype: str, body: bytes,
                   headers: Any) -> HubError | None:
        """A non-2xx answer that is not a SOAP envelope, as a taxonomy error; None lets zeep read the fault."""
        return http_error(f"{self.endpoint}: {operation} -> {status}", status, ctype, body, headers, self.redact_text)

    def redact_text(self, data: bytes | str, limit: int = LOG_LIMIT) -> str:
        """The body with configured elements and known secrets blanked, on one line, cut to `limit`."""
        return snippet(redact(data, self._redact, self._secrets, self._redact_re), limit)
