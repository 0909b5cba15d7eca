"""zeep's AsyncTransport wrapped so each request carries the call's headers, each exchange is logged
redacted at debug level, and HTTP-level failures (503 pages, HTML 500s, empty bodies) are classified
before zeep tries to read them as XML.
"""

from __future__ import annotations

import contextvars
import logging
from typing import TYPE_CHECKING

import httpx
import structlog
from zeep.transports import AsyncTransport

from adapters.soap.redaction import LOG_LIMIT

if TYPE_CHECKING:
    from adapters.soap.adapter import SoapAdapter

log = structlog.get_logger("hub.soap")


class Exchange:
    """What the transport saw of one call: set in call(), filled in by the transport."""

    __slots__ = ("operation", "headers", "sent", "status", "body", "content_type")

    def __init__(self, operation: str, headers: dict[str, str]) -> None:
        self.operation = operation
        self.headers = headers
        self.sent = False
        self.status = 0
        self.body = b""
        self.content_type = ""


CURRENT: contextvars.ContextVar[Exchange | None] = contextvars.ContextVar("hub_soap_exchange", default=None)


class HubTransport(AsyncTransport):
    """AsyncTransport that adds the call's headers, logs redacted, and classifies non-SOAP answers."""

    def __init__(self, adapter: SoapAdapter, client: httpx.AsyncClient, wsdl_client: httpx.Client,
                 wsdl_timeout: float) -> None:
        super().__init__(client=client, wsdl_client=wsdl_client, timeout=wsdl_timeout)
        self.adapter = adapter

    async def post(self, address: str, message: bytes, headers: dict[str, str]) -> httpx.Response:
        ex = CURRENT.get()
        if ex is not None:
            headers = {**headers, **ex.headers}
            ex.sent = True
        adapter = self.adapter
        operation = ex.operation if ex else None
        if debug_enabled():
            log.debug("soap request", endpoint=adapter.endpoint, operation=operation, address=address,
                      body=adapter.redact_text(message, limit=LOG_LIMIT))
        response = await self.client.post(address, content=message, headers=headers)
        body = response.content
        ctype = response.headers.get("Content-Type", "")
        if ex is not None:
            ex.status, ex.body, ex.content_type = response.status_code, body, ctype
        if debug_enabled():
            log.debug("soap response", endpoint=adapter.endpoint, operation=operation, status=response.status_code,
                      body=adapter.redact_text(body, limit=LOG_LIMIT))
        if response.status_code >= 300:
            error = adapter.http_error(operation, response.status_code, ctype, body, response.headers)
            if error is not None:
                raise error
        return response


def debug_enabled() -> bool:
    """Whether debug lines would be kept, so bodies are only redacted when someone will read them."""
    try:
        return bool(log.is_enabled_for(logging.DEBUG))
    except AttributeError:  # a logger wrapper without level filtering
        return True
