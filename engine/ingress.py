"""Ingress sources: what arrives from outside (a mail, a file, a webhook, a vendor's push) is stored
in JetStream first and only then acknowledged to the outside world (principle 1).

An ingress gets a `Landing` for its flow and calls `store()` for each item with an id that is stable
for that item (a mail's Message-ID, a file's name and size): stored again after a crash, JetStream
drops it as a duplicate (HUB_INGRESS keeps ids for an hour). `store()` returns once the server has
confirmed; that is when the ingress may flag the mail, move the file or answer 2xx. The flow then
reads `hub.ingress.<flow>` like any subject, with its retries and DLQ.

An item whose headers + body do not fit the server's `max_payload` goes by claim check
(engine/claim_check.py): its bytes into the Object Store first, then a reference on the subject; the
flow's steps get the bytes as if they had come in one message. An item over the claim-check limit is
not stored (`Unstorable` in place of the outcome): the ingress quarantines it with an alert and goes on.
"""

from __future__ import annotations

import asyncio
import importlib
from typing import Any, Callable

import structlog

from engine.claim_check import ClaimChecks, Unstorable, fits, header_bytes, max_payload
from engine.errors import PublishFailed
from engine.messages import (CE_CORRELATION, CE_ID, CE_SOURCE, CE_SPEC, CE_TIME, CE_TYPE, MSG_ID, TRACEPARENT,
                             child_traceparent, derived_id, event_headers, now_iso)
from engine.nats_client import HubClient, finish_headers, shared_header_lines
from engine.spec import Flow

log = structlog.get_logger("hub.ingress")
Outcome = bool | PublishFailed | Unstorable  # new, duplicate, not stored now (retry), never storable


class Landing:
    """Stores one flow's inbound items on `hub.ingress.<flow>`, confirmed."""

    def __init__(self, flow: Flow, js: Any, publish_timeout: float, kind: str) -> None:
        self.flow = flow
        self.subject = flow.consumed_subject
        self.js = js
        self.publish_timeout = publish_timeout
        self.source = f"/plu-hub/ingress/{kind}/{flow.name}"
        self.stored = 0
        self.duplicates = 0
        self.claimed = 0  # items that went by claim check
        self.claims = ClaimChecks(js)
        self._bytes_headers = isinstance(getattr(js, "_nc", None), HubClient)  # pre-encoded blocks need it

    def message_id(self, identity: str) -> str:
        """The Nats-Msg-Id of an outside item: stable, whatever runner stores it."""
        return derived_id("ingress", self.flow.name, identity)

    def _headers(self, identity: str, headers: dict[str, str] | None) -> dict[str, str]:
        return {**event_headers(self.source, str(self.subject), msg_id=self.message_id(identity)),
                "content-type": "application/octet-stream", **(headers or {})}

    def _shared_lines(self, when: str, headers: dict[str, str] | None) -> str | None:
        """The header lines every item of a batch with these `headers` shares, encoded once (the ids
        follow per item); None when a value is not one clean line."""
        shared = {CE_SOURCE: self.source, CE_TYPE: str(self.subject), CE_TIME: when, CE_SPEC: "1.0",
                  "content-type": "application/octet-stream", **(headers or {})}
        if any(k in shared for k in (CE_ID, CE_CORRELATION, TRACEPARENT, MSG_ID)) or any(
                "\r" in f"{k}{v}" or "\n" in f"{k}{v}" or ":" in k for k, v in shared.items()):
            return None
        return shared_header_lines(shared)

    def _counted(self, ack: Any, identity: str) -> bool:
        if ack.duplicate:
            self.duplicates += 1
            log.info("ingress_duplicate", flow=self.flow.name, identity=identity)
            return False
        self.stored += 1
        return True

    async def _claim_checked(self, data: bytes, identity: str,
                             headers: dict[str, str] | None) -> tuple[bytes, dict[str, str]]:
        """The item's bytes into the Object Store; the empty body and headers that reference them."""
        reference = await self.claims.put(f"{self.flow.name}/{self.message_id(identity)}", data)
        self.claimed += 1
        log.info("ingress_claim_check", flow=self.flow.name, identity=identity[:200], size=len(data),
                 object=reference["Hub-Claim-Check"])
        return b"", self._headers(identity, {**(headers or {}), **reference})

    async def store(self, data: bytes, identity: str, headers: dict[str, str] | None = None) -> bool:
        """Store one item (by claim check when too big for one message); True when new, False when
        JetStream already had it. Raises PublishFailed when the server did not confirm (the caller must
        leave the item where it is) and Unstorable when it never can be stored (quarantine it)."""
        block = self._headers(identity, headers)
        if not fits(self.js, data, block):
            data, block = await self._claim_checked(data, identity, headers)
        try:
            ack = await self.js.publish(self.subject, data, headers=block, timeout=self.publish_timeout)
        except Exception as exc:
            raise PublishFailed(f"{self.subject}: not stored: {exc!r}") from exc
        return self._counted(ack, identity)

    async def store_many(self, items: list[tuple[bytes, str, dict[str, str] | None]]) -> list[Outcome]:
        """Store a batch with one wait for all acks (MEASURED.md: publish_async per batch is ~13x one
        publish at a time). Per item: True new, False duplicate, the PublishFailed that left it
        unstored (the caller leaves exactly those where they are), or Unstorable (quarantine it). An
        item too big for one message goes by claim check first."""
        sent: list[Any] = []
        when = now_iso()
        fixed: dict[int, str | None] = {}  # id(an item's headers dict) -> the batch's shared header lines
        publish = self.js.publish_async
        limit = max_payload(self.js)
        for data, identity, headers in items:
            # the CloudEvents and id headers add < 600 bytes: only an item near the limit is measured exactly
            if len(data) + header_bytes(headers) + 600 > limit and not fits(self.js, data, self._headers(identity, headers)):
                try:
                    data, block = await self._claim_checked(data, identity, headers)
                    sent.append(await publish(self.subject, data, headers=block))
                except (PublishFailed, Unstorable) as exc:
                    sent.append(exc)
                except Exception as exc:
                    sent.append(PublishFailed(f"{self.subject}: not stored: {exc!r}"))
                continue
            lines = fixed.get(id(headers), "") if self._bytes_headers else None
            if lines == "":
                lines = fixed[id(headers)] = self._shared_lines(when, headers)
            if lines is None:  # a value nats-py must sanitise: its own (slower) path
                block: Any = self._headers(identity, headers)
            else:
                msg_id = self.message_id(identity)
                block = finish_headers(lines, (CE_ID, msg_id), (CE_CORRELATION, msg_id),
                                       (TRACEPARENT, child_traceparent(None)), (MSG_ID, msg_id))
            try:
                sent.append(await publish(self.subject, data, headers=block))
            except Exception as exc:
                sent.append(PublishFailed(f"{self.subject}: not stored: {exc!r}"))
        futures = [f for f in sent if isinstance(f, asyncio.Future)]
        if futures:
            await asyncio.wait(futures, timeout=self.publish_timeout)
        results: list[Outcome] = []
        for f, (_, identity, _) in zip(sent, items):
            if isinstance(f, PublishFailed | Unstorable):
                results.append(f)
            elif not f.done():
                f.cancel()
                results.append(PublishFailed(f"{self.subject}: no publish ack in {self.publish_timeout:g}s"))
            elif f.exception() is not None:
                results.append(PublishFailed(f"{self.subject}: not stored: {f.exception()!r}"))
            else:
                results.append(self._counted(f.result(), identity))
        return results


class Ingress:
    """One running source. Subclasses receive from outside and call `self.landing.store()`, and say
    what they are doing with `_set_state` (connecting, idle, down, …) so tests and drills can await a
    state instead of sleeping."""

    def __init__(self, flow: Flow, spec: Any, endpoint: Any, landing: Landing, services: Any) -> None:
        self.flow = flow
        self.spec = spec
        self.endpoint = endpoint
        self.landing = landing
        self.services = services
        self.state = "new"
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[Any], bool], timeout: float = 10.0) -> None:
        """Until `predicate(self)` holds (TimeoutError after `timeout`), woken by every change."""
        async with asyncio.timeout(timeout):
            while not predicate(self):
                self._changed.clear()
                await self._changed.wait()

    def _set_state(self, state: str) -> None:
        self.state = state
        self._changed.set()

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError


def ingress_for(flow: Flow, project: Any, js: Any, publish_timeout: float, services: Any) -> Ingress:
    """Build the ingress a flow's source names (its `implementation`), with its endpoint from config."""
    source = flow.ingress
    assert source is not None
    module_name, _, cls_name = source.implementation.partition(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    name = source.endpoint_name()
    endpoint = project.endpoints[name] if name else None
    kind = next(iter(type(source).model_fields))
    return cls(flow, getattr(source, kind), endpoint, Landing(flow, js, publish_timeout, kind), services)
