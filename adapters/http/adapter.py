"""The http adapter itself: config model, routes, and the call (see the package docstring)."""

from __future__ import annotations

import asyncio
import ssl
from typing import Annotated, Any, Literal
from urllib.parse import quote

import aiohttp
import orjson
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from yarl import URL

from engine.adapter import Adapter, CallContext, EndpointConfig
from adapters.http.auth import Auth, AuthConfig, build_auth
from adapters.http.wire import (URL_KEY, http_url, is_xml, query, snippet, status_error, template_fields, text_of,
                                xml_text)
from engine.durations import Duration
from engine.errors import (ConfigError, RoutingError, TargetServerError, TargetTimeout, TargetUnavailable,
                           UnparseableAnswer)
from engine.messages import encode
from engine.registry import register
from engine.secrets import SecretRef, resolve_value

Method = Annotated[
    Literal["GET", "POST", "PUT", "PATCH", "DELETE"],
    BeforeValidator(lambda v: v.upper() if isinstance(v, str) else v),
]
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _valid_template(value: str) -> str:
    template_fields(value)  # raises ValueError on a malformed template
    return value


PathTemplate = Annotated[str, AfterValidator(_valid_template)]


class HttpOperation(BaseModel):
    """A named operation of an HTTP endpoint: overrides the endpoint's method and path."""

    model_config = ConfigDict(extra="forbid")

    method: Method | None = Field(None, description="HTTP method; the endpoint's when omitted.", examples=["GET"])
    path: PathTemplate | None = Field(None, description="Path template like the endpoint's `path`; the "
                                      "endpoint's when omitted.", examples=["/tariffs/{postcode}"])


class HttpEndpointConfig(EndpointConfig):
    """An HTTP/JSON target: JSON body for POST/PUT/PATCH, query parameters for GET/DELETE."""

    base_url: str = Field(description="Scheme, host, port and optional base path of the target.",
                          examples=["https://powersales.plu.internal/api/v2"])
    method: Method = Field("POST", description="HTTP method when the operation does not set one.")
    path: PathTemplate = Field("", description="Path template appended to base_url; {field} is taken from the "
                      "payload's top level and URL-encoded.", examples=["/contracts/{contract_id}"])
    headers: dict[str, str | SecretRef] = Field(
        default_factory=dict, description="Static headers; a value may be a secret reference, "
        "resolved when the endpoint starts.",
        examples=[{"Authorization": {"env": "POWERSALES_TOKEN", "prefix": "Bearer "}, "X-Client": "plu-hub"}],
    )
    timeout: Duration = Field(10.0, description="Whole-call deadline when the flow step sets none.",
                              examples=["5s", "800ms"])
    max_connections: int = Field(16, ge=1, le=1024, description="Size of the connection pool to this target.")
    operations: dict[str, HttpOperation] = Field(
        default_factory=dict, description="Named operations. A call naming an operation must name one of "
        "these; a call naming none uses the endpoint's method and path.",
        examples=[{"GetTariff": {"method": "GET", "path": "/tariffs/{postcode}"}}],
    )
    verify_tls: bool = Field(True, description="Verify the server certificate (https only).")
    ca_bundle: str | None = Field(None, description="PEM file of CAs to trust instead of the system's.",
                                  examples=["/etc/plu/ca/powersales.pem"])
    auth: AuthConfig | None = Field(None, description="One of api_key, basic, oauth2 (client credentials with "
                                    "client_secret_basic, client_secret_post or private_key_jwt; token cached and "
                                    "refreshed) or hmac_vendor4 (a signature per request).",
                                    examples=[{"basic": {"username": "plu-hub", "password": {"env": "V3_PASSWORD"}}}])

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        return http_url(v).rstrip("/")


class _Route:
    """One operation's method and path template, prepared once when the adapter is built."""

    __slots__ = ("method", "base", "template", "fields", "url", "has_body")

    def __init__(self, base: str, method: str, template: str) -> None:
        if template and not template.startswith("/"):
            template = "/" + template
        self.method = method
        self.base = base
        self.template = template
        self.fields = template_fields(template)
        self.url = None if self.fields else URL(base + template)  # parsed once when nothing varies
        self.has_body = method in _BODY_METHODS


@register
class HttpAdapter(Adapter):
    """Calls an HTTP/JSON target through a pooled aiohttp session."""

    name = "http"
    Config = HttpEndpointConfig
    operations_doc = "Keys of `operations`; each may override method and path. No operation: the endpoint's own."

    config: HttpEndpointConfig

    def __init__(self, endpoint: str, config: EndpointConfig, services: Any) -> None:
        super().__init__(endpoint, config, services)
        c = self.config
        self._origin = URL(c.base_url).origin()
        self._default = _Route(c.base_url, c.method, c.path)
        self._routes = {
            op: _Route(c.base_url, o.method or c.method, o.path if o.path is not None else c.path)
            for op, o in c.operations.items()
        }
        self._headers: dict[str, str] = {}
        self._content_type = "Content-Type"  # replaced by the configured spelling, if headers set one
        self._session: aiohttp.ClientSession | None = None
        self._auth: Auth = Auth()

    def check_operation(self, operation: str | None) -> str | None:
        if operation is None or not self.config.operations or operation in self.config.operations:
            return None
        known = ", ".join(sorted(self.config.operations))
        return f"endpoint {self.endpoint!r} has no operation {operation!r} (known: {known})"

    async def start(self) -> None:
        issues, headers = [], {"Accept": "application/json"}
        for name, value in self.config.headers.items():
            try:
                headers[name] = resolve_value(value)
            except LookupError as exc:
                issues.append(f"endpoint {self.endpoint!r}: header {name}: {exc}")
        try:
            self._auth = build_auth(self.endpoint, self.config.auth)
        except LookupError as exc:
            issues.append(f"endpoint {self.endpoint!r}: auth: {exc}")
        if issues:
            raise ConfigError(issues)
        headers.update(self._auth.static)
        self._headers = headers
        self._content_type = next((k for k in headers if k.lower() == "content-type"), "Content-Type")
        tls: ssl.SSLContext | bool = True
        if not self.config.verify_tls:
            tls = False
        elif self.config.ca_bundle:
            try:
                tls = ssl.create_default_context(cafile=self.config.ca_bundle)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError([f"endpoint {self.endpoint!r}: ca_bundle: {exc}"]) from exc
        connector = aiohttp.TCPConnector(limit=self.config.max_connections, ssl=tls)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None), raise_for_status=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- the call ------------------------------------------------------------------------------

    async def call(self, operation: str | None, payload: Any, ctx: CallContext) -> Any:
        """One request. GET/DELETE send the body's top-level scalars as query parameters, POST/PUT/PATCH
        send it as JSON. A body key `_url` (an absolute URL on the endpoint's own scheme, host and port,
        such as a vendor's next-page link) is called as given instead of base_url + path; the other
        fields still go along (query or JSON). A 401 with a refreshable credential (oauth2) gets one new
        token and one more try."""
        session = self._session
        if session is None:
            raise RuntimeError(f"http endpoint {self.endpoint!r} used before start()")
        route = self._route(operation)
        if hasattr(payload, "model_dump"):
            payload = payload.model_dump(mode="json")
        url = self._target(route, payload)
        headers = self._call_headers(ctx)
        data = None
        if route.has_body:
            if isinstance(payload, dict) and URL_KEY in payload:
                payload = {k: v for k, v in payload.items() if k != URL_KEY}
            if payload is not None:
                data = encode(payload)
                headers.setdefault(self._content_type, "application/json")
        else:
            params = query(self.endpoint, payload, route.fields)
            if params:
                url = url.extend_query(params)  # the URL is final here, so a signature covers what is sent
        timeout = ctx.timeout if ctx.timeout and ctx.timeout > 0 else self.config.timeout
        try:
            async with asyncio.timeout(timeout):
                for attempt in (1, 2):
                    auth = await self._auth.headers(session, route.method, url)
                    async with session.request(route.method, url, data=data, headers={**headers, **auth},
                                               allow_redirects=False) as resp:
                        body = await resp.read()
                        status = resp.status
                        if status == 401 and attempt == 1 and self._auth.refreshes:
                            self._auth.invalidate(auth)
                            continue
                        if status >= 300:
                            raise status_error(self._where(route, url), resp, body)
                        if not body:
                            return None
                        ctype = resp.content_type
                        if is_xml(ctype):
                            return self._xml(route, url, body, resp.charset)
                        if ctype != "application/json" and not ctype.endswith("+json"):
                            return text_of(resp, body)
                    break
            try:
                return orjson.loads(body)
            except ValueError as exc:
                raise UnparseableAnswer(f"{self._where(route, url)} -> {status}: the target's answer is not valid "
                                        f"JSON: {snippet(text_of(resp, body))}") from exc
        except TimeoutError as exc:  # asyncio.timeout, aiohttp's ServerTimeoutError are both
            raise TargetTimeout(f"{self._where(route, url)}: no answer within {timeout:g}s") from exc
        except aiohttp.ClientResponseError as exc:
            where = self._where(route, url)
            raise TargetServerError(f"{where}: malformed HTTP answer: {snippet(str(exc))}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            where = self._where(route, url)
            # no connection (refused, DNS, TLS handshake): nothing was sent, a create may be resent
            sent = False if isinstance(exc, aiohttp.ClientConnectorError) else None
            raise TargetUnavailable(f"{where}: {type(exc).__name__}: {snippet(str(exc))}", sent=sent) from exc

    def _xml(self, route: "_Route", url: URL, body: bytes, charset: str | None) -> str:
        """An XML answer (application/xml, text/xml, *+xml) as text, decoded as it declares (BOM, charset,
        XML declaration; RFC 7303) and without its declaration, ready for lxml in a transform."""
        try:
            return xml_text(body, charset)
        except (LookupError, ValueError) as exc:  # an unknown encoding name, bytes not in the encoding
            raise UnparseableAnswer(f"{self._where(route, url)}: the target's XML answer is not in the encoding "
                                    f"it declares ({type(exc).__name__}: {snippet(str(exc), 160)})") from None

    def _target(self, route: "_Route", payload: Any) -> URL:
        """The URL before query parameters: `_url` when the body gives one, else base_url + path."""
        given = payload.get(URL_KEY) if isinstance(payload, dict) else None
        if given is None:
            return route.url if route.url is not None else URL(self._url(route, payload))
        url = URL(str(given))
        if not url.is_absolute() or url.origin() != self._origin:
            raise RoutingError(f"{self.endpoint}: {URL_KEY} {snippet(str(given), 120)!r} is not on "
                               f"{self._origin} (credentials go to the endpoint's own origin only)")
        return url

    def _where(self, route: _Route, url: str | URL) -> str:
        return f"{self.endpoint}: {route.method} {URL(url).path if isinstance(url, str) else url.path}"

    def _route(self, operation: str | None) -> _Route:
        if operation is None or not self._routes:
            return self._default
        route = self._routes.get(operation)
        if route is None:
            raise RoutingError(self.check_operation(operation) or f"unknown operation {operation!r}")
        return route

    def _url(self, route: _Route, payload: Any) -> str:
        values = {}
        for name in route.fields:
            value = payload.get(name) if isinstance(payload, dict) else None
            if value is None or isinstance(value, dict | list):
                raise RoutingError(
                    f"{self.endpoint}: path {route.template!r} needs field {name!r} "
                    f"as a scalar at the payload's top level"
                )
            values[name] = quote(str(value), safe="")
        return route.base + route.template.format_map(values)

    def _call_headers(self, ctx: CallContext) -> dict[str, str]:
        return {**self._headers, **ctx.http_headers()}
