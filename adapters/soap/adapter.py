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
from adapters.soap.answer_types import rule_problems, zeep_unwraps
from adapters.soap.config import SoapEndpointConfig
from adapters.soap.faults import call_error, http_error
from adapters.soap.rules import business_error
from adapters.soap.jsonable import to_jsonable
from adapters.soap.redaction import LOG_LIMIT, element_pattern, redact
from adapters.soap.security import tls_context, ws_security
from adapters.soap.transport import CURRENT, Exchange, HubTransport
from adapters.soap.wsdl import find_port, load_document, local_operations, local_port, wsdl_location
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
        self._bare: dict[str, str] = {}  # operation -> the single child zeep hands back bare
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

    def check_settings_for(self, operation: str | None) -> list[tuple[tuple[str | int, ...], str]]:
        """The business-error rule against `operation`'s answer type in a local WSDL: a table or field the
        answer can never hold is a problem at that rule key (a WSDL by URL is judged at start)."""
        rule = self.config.business_error
        operation = self.config.aliases.get(operation, operation) if operation else operation
        if rule is None or operation is None:
            return []
        port, _ = local_port(self.endpoint, self.location, self.config)
        return self._rule_problems(port, [operation]) if port is not None else []

    def _rule_problems(self, port: Any, operations: list[str]) -> list[tuple[tuple[str | int, ...], str]]:
        rule = self.config.business_error
        assert rule is not None
        known = set(port.binding.all())
        problems: list[tuple[tuple[str | int, ...], str]] = []
        for i, name in enumerate(rule.operations or ()):
            if name not in known:
                problems.append((("business_error", "operations", i), f"WSDL has no operation {name!r}"))
        for name in operations:
            if name in known and rule.applies_to(name):
                problems.extend((("business_error", *loc), why)
                                for loc, why in rule_problems(rule, name, port.binding.get(name)))
        return problems

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
        # answers: SOAP forbids a DTD in a message, and an entity declaration is how XML bombs arrive
        answers = Settings(forbid_dtd=True, forbid_entities=True, forbid_external=True)
        try:
            doc = await asyncio.wait_for(
                asyncio.to_thread(load_document, self.location, transport, settings), c.wsdl_timeout + 1)
            port = find_port(doc, c.service, c.port)
        except Exception as exc:
            await self.close()
            raise ConfigError([f"endpoint {self.endpoint!r}: cannot load WSDL {c.wsdl!r}: "
                               f"{snippet(str(exc) or type(exc).__name__)}"]) from exc
        self._client = AsyncClient(doc, wsse=wsse, transport=transport, settings=answers)
        options = dict(port.binding_options)
        if c.address:
            options["address"] = c.address
        self._service = AsyncServiceProxy(self._client, port.binding, **options)
        self._operations = sorted(port.binding.all())
        self._bare = {op: child for op in self._operations if (child := zeep_unwraps(port.binding.get(op)))}
        missing = [op for op in [*(c.operations or ()), *c.aliases.values()] if op not in self._operations]
        if missing:
            await self.close()
            raise ConfigError([f"endpoint {self.endpoint!r}: operations {', '.join(missing)} not in the WSDL "
                               f"(known: {', '.join(self._operations)})"])
        if c.business_error is not None:  # a WSDL by URL is first seen here; a local one was validated too
            named = sorted({*(c.operations or ()), *c.aliases.values(), *(c.business_error.operations or ())})
            if problems := self._rule_problems(port, named):
                await self.close()
                raise ConfigError([f"endpoint {self.endpoint!r}: {'.'.join(map(str, loc))}: {why}"
                                   for loc, why in problems])

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
        rule = self.config.business_error
        if rule is not None and rule.applies_to(operation):
            bare = self._bare.get(operation)  # the rule names the response element's children
            message = business_error({bare: data} if bare else data, rule)
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
