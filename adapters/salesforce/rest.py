"""Salesforce REST (and Bulk API 2.0) requests with the session, the allowance and the error mapping.

Salesforce answers errors as a JSON list of {"message", "errorCode"}; mapped onto the taxonomy:
    401 INVALID_SESSION_ID      log in again and send once more; a second refusal is TargetRejected
    403 REQUEST_LIMIT_EXCEEDED  Throttled (the org's daily allowance is spent)
    other 4xx                   TargetRejected, "errorCode: message"
    5xx                         TargetServerError (Retry-After kept)
    no connection / no answer   TargetUnavailable / TargetTimeout
    a body that is not what the API promises: UnparseableAnswer
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson

from adapters.salesforce.auth import OrgSession, TokenSource
from adapters.salesforce.config import SalesforceEndpointConfig
from adapters.salesforce.limits import OrgLimits
from engine.errors import (HubError, SlotsBusy, TargetRejected, TargetServerError, TargetTimeout, TargetUnavailable,
                           Throttled, UnparseableAnswer)

LIMIT_RETRY_AFTER = 60.0


def salesforce_error(status: int, text: str) -> tuple[str, str]:
    """(errorCode, message) of an error body; the raw text when it is not Salesforce's list form."""
    try:
        body = orjson.loads(text)
        first = body[0] if isinstance(body, list) and body else body
        if isinstance(first, dict):
            return str(first.get("errorCode") or first.get("error") or status), str(
                first.get("message") or first.get("error_description") or "")
    except (ValueError, TypeError):
        pass
    return str(status), " ".join(text.split())[:300]


class RestClient:
    def __init__(self, endpoint: str, config: SalesforceEndpointConfig, tokens: TokenSource,
                 limits: OrgLimits) -> None:
        self.endpoint = endpoint
        self.config = config
        self.tokens = tokens
        self.limits = limits
        self.http: aiohttp.ClientSession | None = None
        self.requests = 0
        limit = config.max_concurrency
        self._slots = asyncio.Semaphore(limit) if limit else None

    async def start(self) -> None:
        self.tokens.resolve_secrets()
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.config.max_connections),
                                          json_serialize=lambda v: orjson.dumps(v).decode())

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()

    def path(self, tail: str) -> str:
        return f"/services/data/v{self.config.api_version}{tail}"

    async def request(self, method: str, tail: str, *, timeout: float, json: Any = None, data: bytes | None = None,
                      content_type: str | None = None, expect: str = "json") -> Any:
        """One API request (the allowance, a concurrency slot, the session); the parsed answer."""
        assert self.http is not None, "start() the client first"
        deadline = time.monotonic() + timeout
        await self.limits.acquire(deadline)
        if self._slots is not None:
            try:
                await asyncio.wait_for(self._slots.acquire(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise SlotsBusy(f"{self.endpoint}: all {self.config.max_concurrency} request slots stayed busy") \
                    from None
        try:
            for attempt in (1, 2):
                session = await self.tokens.session(self.http, max(0.1, deadline - time.monotonic()))
                status, text, retry_after = await self._send(session, method, tail, json, data, content_type,
                                                              max(0.1, deadline - time.monotonic()))
                if status == 401 and attempt == 1:
                    self.tokens.invalidate(session)  # INVALID_SESSION_ID: log in once more
                    continue
                return self._answer(method, tail, status, text, retry_after, expect)
        finally:
            if self._slots is not None:
                self._slots.release()

    async def _send(self, session: OrgSession, method: str, tail: str, json: Any, data: bytes | None,
                    content_type: str | None, timeout: float) -> tuple[int, str, float | None]:
        assert self.http is not None
        headers = {"Authorization": f"Bearer {session.access_token}", "Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        url = session.instance_url + self.path(tail)
        self.requests += 1
        try:
            async with self.http.request(method, url, json=json, data=data, headers=headers,
                                         timeout=aiohttp.ClientTimeout(total=timeout)) as response:
                text = await response.text()
                self.limits.observe(response.headers.get("Sforce-Limit-Info"))
                retry = response.headers.get("Retry-After")
                return response.status, text, float(retry) if retry and retry.isdigit() else None
        except TimeoutError:
            raise TargetTimeout(f"{self.endpoint}: {method} {tail}: no answer in {timeout:.1f}s") from None
        except aiohttp.ClientError as exc:
            raise TargetUnavailable(f"{self.endpoint}: {method} {tail}: {exc}") from None

    def _answer(self, method: str, tail: str, status: int, text: str, retry_after: float | None,
                expect: str) -> Any:
        where = f"{self.endpoint}: {method} {tail}"
        if status >= 400:
            code, message = salesforce_error(status, text)
            err: HubError
            if status == 403 and code == "REQUEST_LIMIT_EXCEEDED":
                err = Throttled(f"{where}: {code}: {message}", retry_after=retry_after or LIMIT_RETRY_AFTER)
            elif status >= 500:
                err = TargetServerError(f"{where}: {status} {code}: {message}", retry_after=retry_after)
            else:
                err = TargetRejected(f"{where}: {status} {code}: {message}", status=status)
            raise err
        if expect == "text":
            return text
        if expect == "none" or not text:
            return None
        try:
            return orjson.loads(text)
        except ValueError:
            raise UnparseableAnswer(f"{where}: {status} with a body that is not JSON: {text[:120]!r}") from None
