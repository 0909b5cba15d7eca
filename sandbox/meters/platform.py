"""What the four vendor platform simulators share: an aiohttp server on a loopback port, the
deterministic readings, and the controls tests drive the hub's pull against.

Each request to a guarded endpoint is counted (`requests`, `responses`), tracked for concurrency
(`in_flight`, `max_concurrent`, which a per-vendor concurrency cap is checked against), delayed by
`latency` on paged endpoints, then meets injected faults (`fail_next`), the vendor's authentication
and its rate limit (`rate_limit = (requests, seconds)`, 429 with Retry-After). Errors always take the
vendor's own shape (`error()`), as the real platforms' do.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
import time
from collections import Counter, deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Awaitable, Callable, ClassVar
from zoneinfo import ZoneInfo

from aiohttp import web

from sandbox.meters.readings import DAY, ReadingSource, system_clock

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Refusal(Exception):
    """A request the platform refuses: answered with `status` in the vendor's error shape."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


@dataclass
class _Fault:
    endpoint: str | None
    status: int
    retry_after: str | None


class VendorPlatform:
    """Base of the four simulators; subclasses set the class attributes and add their routes."""

    vendor: ClassVar[str]
    seed: ClassVar[int]
    tz: ClassVar[ZoneInfo]
    meter_format: ClassVar[str]
    site_format: ClassVar[str]

    def __init__(self, meters: int = 1000, *, interval: timedelta = DAY,
                 clock: Callable[[], datetime] = system_clock, latency: float = 0.0,
                 rate_limit: tuple[int, float] | None = None) -> None:
        self.source = ReadingSource(self.seed, meters, self.tz, interval=interval, meter_format=self.meter_format,
                                    site_format=self.site_format, clock=clock)
        self.latency = latency
        self.rate_limit = rate_limit
        self.url = ""
        self.port = 0
        self.requests: Counter[str] = Counter()            # endpoint name -> requests that arrived
        self.responses: Counter[tuple[str, int]] = Counter()  # (endpoint, status) -> answers
        self.in_flight = 0
        self.max_concurrent = 0
        self._faults: list[_Fault] = []
        self._accepted: deque[float] = deque()  # monotonic times of requests inside the rate window
        self._runner: web.AppRunner | None = None
        self._wake = asyncio.Event()

    @property
    def clock(self) -> Callable[[], datetime]:
        return self.source.clock

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> "VendorPlatform":
        """Listen on host:port (0 = a free port) and set `.url`."""
        app = web.Application()
        self.add_routes(app)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port, reuse_address=True).start()
        self.port = self._runner.addresses[0][1]
        self.url = f"http://{host}:{self.port}"
        return self

    async def stop(self) -> None:
        self._wake.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> "VendorPlatform":
        return await self.start() if self._runner is None else self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- controls ------------------------------------------------------------------------------

    def fail_next(self, n: int = 1, status: int = 503, *, retry_after: str | float | None = None,
                  endpoint: str | None = None) -> None:
        """Answer the next `n` requests (to `endpoint`, or to any) with `status` in the vendor's shape."""
        ra = None if retry_after is None else str(retry_after)
        self._faults.extend(_Fault(endpoint, status, ra) for _ in range(n))

    def reset(self) -> None:
        """Forget faults, counts and the rate window; latency and rate limit stay as set."""
        self._faults.clear()
        self._accepted.clear()
        self.requests.clear()
        self.responses.clear()
        self.max_concurrent = self.in_flight

    # --- for subclasses ------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def error(self, status: int, code: str, message: str) -> web.Response:
        """The vendor's error body."""
        raise NotImplementedError

    def authorize(self, request: web.Request, endpoint: str) -> None:
        """Raise Refusal unless the request carries the vendor's credentials."""

    def check_retention(self, start: datetime, end: datetime) -> None:
        """Refuse windows the platform no longer holds, or that make no sense."""
        if end <= start:
            raise Refusal(400, "INVALID_RANGE", "the end of the range must be after its start")
        oldest = self.source.oldest()
        if start < oldest:
            raise Refusal(*self.retention_refusal(oldest))

    def retention_refusal(self, oldest: datetime) -> tuple[int, str, str]:
        return 400, "OUT_OF_RETENTION", f"readings before {oldest.isoformat()} are no longer kept"

    def guard(self, endpoint: str, handler: Handler, *, paged: bool = True) -> Handler:
        """Wrap a handler with counting, latency, faults, auth and rate limit, in that order."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            self.requests[endpoint] += 1
            self.in_flight += 1
            self.max_concurrent = max(self.max_concurrent, self.in_flight)
            try:
                answer = await self._answer(request, endpoint, handler, paged)
            finally:
                self.in_flight -= 1
            self.responses[(endpoint, answer.status)] += 1
            return answer

        return guarded

    async def _answer(self, request: web.Request, endpoint: str, handler: Handler, paged: bool) -> web.StreamResponse:
        if paged and self.latency > 0:
            try:
                await asyncio.wait_for(self._wake.wait(), self.latency)  # cut short by stop()
            except TimeoutError:
                pass
        try:
            fault = self._take_fault(endpoint)
            if fault is not None:
                headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
                raise Refusal(fault.status, "INJECTED", f"injected failure {fault.status}", headers)
            self.authorize(request, endpoint)
            if paged:
                self._throttle()
            return await handler(request)
        except Refusal as refusal:
            answer = self.error(refusal.status, refusal.code, refusal.message)
            answer.headers.update(refusal.headers or {})
            return answer

    def _take_fault(self, endpoint: str) -> _Fault | None:
        for i, fault in enumerate(self._faults):
            if fault.endpoint in (None, endpoint):
                return self._faults.pop(i)
        return None

    def _throttle(self) -> None:
        if self.rate_limit is None:
            return
        limit, per = self.rate_limit
        now = time.monotonic()
        while self._accepted and self._accepted[0] <= now - per:
            self._accepted.popleft()
        if len(self._accepted) >= limit:
            wait = max(1, math.ceil(self._accepted[0] + per - now))
            raise Refusal(429, "RATE_LIMITED", f"more than {limit} requests in {per:g} s",
                          {"Retry-After": str(wait)})
        self._accepted.append(now)


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within [low, high], or a 400 in the vendor's shape."""
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise Refusal(400, "INVALID_PARAMETER", f"{name} must be an integer") from None
    if not low <= value <= high:
        raise Refusal(400, "INVALID_PARAMETER", f"{name} must be between {low} and {high}")
    return value


def basic_credentials(header: str) -> tuple[str, str] | None:
    """(login, password) of an `Authorization: Basic ...` header, None when absent or malformed."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        login, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (login, password) if sep else None


def required(request: web.Request, name: str) -> str:
    text = request.query.get(name)
    if not text:
        raise Refusal(400, "MISSING_PARAMETER", f"query parameter {name} is required")
    return text


def parse_or_refuse(parse: Callable[[str], Any], text: str, name: str) -> Any:
    try:
        return parse(text)
    except (ValueError, OverflowError, OSError) as exc:
        raise Refusal(400, "INVALID_PARAMETER", f"{name}: {exc}") from None
