"""The `webhook:` flow source: authenticated POSTs are stored in JetStream, and only then answered 202.

A request goes through, in order: POST only (405), `max_body` (413), authentication (HMAC: 401 for a
missing, malformed, stale or wrong signature, 409 for a replayed one; token: 401), JSON (400 with the
parser's reason), then the `items` list (each element its own message, its Nats-Msg-Id from `item_id`
or a hash of the element) is stored with one wait for all publish acks; an element too big for one
message goes by claim check (engine/claim_check.py), one over the claim-check limit is refused (413). Any refusal stores nothing.
If JetStream did not confirm every item the answer is 503 with Retry-After: the sender retries the
whole batch and the items that did land come back as duplicates, which JetStream drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from typing import Any

import jmespath
import orjson
import structlog
from aiohttp import web

from adapters.webhook import server as shared_server
from adapters.webhook.auth import HmacCheck, Refused, TokenCheck
from adapters.webhook.identity import compile_identity
from engine.errors import ConfigError, PublishFailed
from engine.alerts import publish_alert
from engine.claim_check import Unstorable
from engine.ingress import Ingress, Landing
from engine.sources import WebhookEndpoint
from engine.spec import Flow

log = structlog.get_logger("hub.webhook")

RETRY_AFTER = 5       # seconds a sender is asked to wait after a 503
STOP_GRACE = 10.0     # stop() waits this long for requests still being stored


class WebhookIngress(Ingress):
    """Serves one flow's path on the runner's shared ingress server; counters show what it did."""

    spec: WebhookEndpoint
    clock = staticmethod(time.time)

    def __init__(self, flow: Flow, spec: WebhookEndpoint, endpoint: Any, landing: Landing, services: Any) -> None:
        super().__init__(flow, spec, endpoint, landing, services)
        self.path = spec.path
        self.requests = self.stored = self.duplicates = self.failed = 0
        self.refused: Counter[str] = Counter()
        self.server: shared_server.IngressServer | None = None
        self._items = jmespath.compile(spec.items) if spec.items else None
        self._identity_of = compile_identity(spec.item_id)
        self._hmac: HmacCheck | None = None
        self._token: TokenCheck | None = None
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def url(self) -> str:
        """Where to POST (for tests, benchmarks and the demo)."""
        assert self.server is not None, "not started"
        return self.server.url + self.path

    async def start(self) -> None:
        try:
            if self.spec.hmac is not None:
                self._hmac = HmacCheck(self.spec.hmac.secret.resolve(), self.spec.hmac.header,
                                       self.spec.hmac.max_age, self.clock)
            else:
                assert self.spec.token is not None  # the model demands one of the two
                self._token = TokenCheck(self.spec.token.resolve())
        except LookupError as exc:
            raise ConfigError([f"flow {self.flow.name!r}: webhook {'hmac secret' if self.spec.hmac else 'token'}: "
                               f"{exc}"]) from exc
        self.server = await shared_server.acquire(self.services, self.path, self.handle, self.flow.name)
        log.info("webhook_listening", flow=self.flow.name, url=self.url)

    async def stop(self) -> None:
        """Stop taking requests (503 meanwhile), let those being stored finish, then give the path back."""
        if self.server is None:
            return
        self.server.closing(self.path)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), STOP_GRACE)
        await shared_server.release(self.services, self.path)
        self.server = None

    # --- one request ---------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self._inflight += 1
        self._idle.clear()
        try:
            return await self._handle(request)
        except Refused as refusal:
            self.refused[refusal.reason] += 1
            log.warning("webhook_refused", flow=self.flow.name, path=self.path, status=refusal.status,
                        reason=refusal.reason, detail=refusal.text, remote=request.remote)
            return web.json_response({"error": refusal.reason, "detail": refusal.text}, status=refusal.status,
                                     headers=refusal.headers)
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            raise Refused(405, "method", f"{request.method} is not allowed; POST", {"Allow": "POST"})
        body = await self._read(request)
        reserved = self._authorize(request, body)
        stored = False
        try:
            outcomes = await self.landing.store_many(self._parse(body))
            if unstorable := [o for o in outcomes if isinstance(o, Unstorable)]:
                with contextlib.suppress(Exception):  # the 413 is the answer that matters; the alert is for ops
                    await publish_alert(self.landing.js, self.flow.name, "payload_too_large", "firing",
                                        path=self.path, reason=unstorable[0].reason, remote=request.remote)
                raise Refused(413, "item_too_large", unstorable[0].reason)
            failures = [o for o in outcomes if isinstance(o, PublishFailed)]
            new = sum(1 for o in outcomes if o is True)
            dup = sum(1 for o in outcomes if o is False)
            self.stored, self.duplicates, self.failed = self.stored + new, self.duplicates + dup, self.failed + len(failures)
            if failures:
                self.refused["not_stored"] += 1
                log.warning("webhook_store_failed", flow=self.flow.name, path=self.path, items=len(outcomes),
                            failed=len(failures), error=str(failures[0])[:300], then=f"503, retry after {RETRY_AFTER}s")
                return web.json_response({"error": "not_stored", "stored": new, "duplicates": dup,
                                          "failed": len(failures)}, status=503,
                                         headers={"Retry-After": str(RETRY_AFTER)})
            stored = True
            return web.json_response({"stored": new, "duplicates": dup}, status=202)
        finally:
            if not stored and reserved is not None and self._hmac is not None:
                self._hmac.release(reserved)  # the byte-identical retry of a request we did not store must pass

    async def _read(self, request: web.Request) -> bytes:
        limit = self.spec.max_body
        if request.content_length is not None and request.content_length > limit:
            raise Refused(413, "too_large", f"body of {request.content_length} bytes exceeds {limit}")
        chunks, size = [], 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise Refused(413, "too_large", f"body exceeds {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _authorize(self, request: web.Request, body: bytes) -> tuple[int, str] | None:
        if self._hmac is not None:
            return self._hmac.verify(request.headers.get(self._hmac.header), body)
        assert self._token is not None
        self._token.verify(request.headers.get("Authorization"))
        return None

    def _parse(self, body: bytes) -> list[tuple[bytes, str, dict[str, str]]]:
        """The body as (bytes, identity, headers) per item; Refused (400/413) when any item is unusable."""
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise Refused(400, "invalid_json", f"body is not JSON: {exc}") from None
        if self._items is not None:
            found = self._items.search(document)
            if not isinstance(found, list):
                raise Refused(400, "no_items", f"items {self.spec.items!r}: expected a list, "
                              f"found {type(found).__name__ if found is not None else 'nothing'}")
        else:
            found = [document]
        headers = {"content-type": "application/json", "Hub-Webhook-Path": self.path}
        items = []
        for i, item in enumerate(found):
            data = orjson.dumps(item)  # an item too big for one message goes by claim check (Landing)
            items.append((data, self._identity(i, item), headers))
        return items

    def _identity(self, i: int, item: Any) -> str:
        try:
            return self._identity_of(item)
        except KeyError as exc:
            raise Refused(400, "item_id", f"item {i}: item_id field {exc.args[0]!r} is missing") from None
