"""Vendor 3's webhook push: signed POSTs of reading batches to the hub, and the ways they go wrong.

    sender = WebhookSender("http://127.0.0.1:8080/webhooks/vendor3", secret)
    sent = await sender.send(records)                    # signed now -> Delivery(status, ...)
    await sender.send(records, age=600)                  # signed with a timestamp 10 minutes old
    await sender.send(records, bad_signature=True)       # a signature the secret did not make
    await sender.replay(sent)                            # the same bytes and headers again

Each POST carries `X-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`,
`X-Webhook-Id` (one per delivery, kept by a replay) and a JSON body
`{"batchId", "sentAt": <unix seconds>, "readings": [vendor-3 records]}` (sandbox/meters/vendor3.py).
The hub must verify over the raw bytes: the sender signs exactly what it sends.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import aiohttp

SIGNATURE_HEADER = "X-Signature"
ID_HEADER = "X-Webhook-Id"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Signature value for `body` sent at `timestamp`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


@dataclass
class Delivery:
    """One POST as sent and answered; `replay()` sends `body` and `headers` unchanged."""

    status: int
    text: str
    body: bytes = field(repr=False)
    headers: dict[str, str]
    timestamp: int
    readings: int


class WebhookSender:
    """Posts vendor-3 batches to one URL with one shared secret over a kept-alive aiohttp session."""

    def __init__(self, url: str, secret: str, *, clock: Callable[[], float] = time.time, timeout: float = 30) -> None:
        self.url, self.secret, self.clock = url, secret, clock
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "WebhookSender":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @staticmethod
    def batch(records: Sequence[dict[str, Any]], *, batch_id: str | None = None, sent_at: int) -> bytes:
        """The raw body of one batch."""
        return json.dumps({"batchId": batch_id or str(uuid.uuid4()), "sentAt": sent_at, "readings": list(records)},
                          separators=(",", ":")).encode()

    async def send(self, records: Sequence[dict[str, Any]], *, age: float = 0, bad_signature: bool = False,
                   batch_id: str | None = None) -> Delivery:
        """POST one signed batch; `age` backdates the signed timestamp, `bad_signature` breaks the MAC."""
        timestamp = int(self.clock() - age)
        body = self.batch(records, batch_id=batch_id, sent_at=timestamp)
        signature = sign(self.secret, timestamp, body)
        if bad_signature:
            signature = sign(self.secret + "-not-the-secret", timestamp, body)
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature, ID_HEADER: str(uuid.uuid4())}
        return await self._post(body, headers, timestamp, len(records))

    async def replay(self, delivery: Delivery) -> Delivery:
        """Send an earlier delivery again, byte for byte (what an attacker or a retrying vendor does)."""
        return await self._post(delivery.body, dict(delivery.headers), delivery.timestamp, delivery.readings)

    async def send_many(self, batches: Sequence[Sequence[dict[str, Any]]], *, concurrency: int = 8) -> list[Delivery]:
        """Send batches with at most `concurrency` POSTs in flight; answers in the batches' order."""
        gate = asyncio.Semaphore(concurrency)

        async def one(records: Sequence[dict[str, Any]]) -> Delivery:
            async with gate:
                return await self.send(records)

        return list(await asyncio.gather(*(one(b) for b in batches)))

    async def _post(self, body: bytes, headers: dict[str, str], timestamp: int, readings: int) -> Delivery:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        async with self._session.post(self.url, data=body, headers=headers) as answer:
            text = await answer.text()
            return Delivery(answer.status, text, body, headers, timestamp, readings)
