"""The org's API allowance as Salesforce reports it (`Sforce-Limit-Info: api-usage=used/max` on every
REST answer), and the pace the hub keeps within it.

With an `allowance` configured, requests are paced to `share` x the daily limit spread over 24 hours
(a token bucket with `burst` tokens), so a backlog never eats the allowance other integrations and
the org's users need; and once fewer than `reserve` requests remain the endpoint stops calling
(Throttled: its circuit opens, messages wait in JetStream) until the rolling day frees some up.
"""

from __future__ import annotations

import asyncio
import re
import time

from adapters.salesforce.config import Allowance
from engine.errors import SlotsBusy, Throttled

USAGE = re.compile(r"api-usage=(\d+)/(\d+)")
RESERVE_WAIT = 300.0   # how long a call held back by the reserve asks to wait


class OrgLimits:
    def __init__(self, endpoint: str, allowance: Allowance | None) -> None:
        self.endpoint = endpoint
        self.allowance = allowance
        self.used: int | None = None
        self.maximum: int | None = None
        self._tokens = float(allowance.burst) if allowance else 0.0
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    def observe(self, header: str | None) -> None:
        """Read one answer's Sforce-Limit-Info."""
        match = USAGE.search(header or "")
        if match:
            self.used, self.maximum = int(match[1]), int(match[2])

    @property
    def remaining(self) -> int | None:
        return None if self.used is None or self.maximum is None else self.maximum - self.used

    def rate(self) -> float | None:
        """Requests per second the hub may make; None: not paced (no allowance, or not yet known)."""
        if self.allowance is None or self.maximum is None:
            return None
        return self.allowance.share * self.maximum / 86400.0

    async def acquire(self, deadline: float) -> None:
        """Wait for the pace to allow one request before `deadline` (monotonic), or refuse."""
        if self.allowance is None:
            return
        remaining = self.remaining
        if remaining is not None and remaining <= self.allowance.reserve:
            raise Throttled(f"{self.endpoint}: {self.used}/{self.maximum} API requests used today; the last "
                            f"{self.allowance.reserve} are kept for the org's other users", retry_after=RESERVE_WAIT)
        rate = self.rate()
        async with self._lock:
            now = time.monotonic()
            if rate is not None:
                self._tokens = min(float(self.allowance.burst), self._tokens + (now - self._stamp) * rate)
            self._stamp = now
            if self._tokens < 1.0:
                if rate is None:  # the first answers are still out: the burst is all there is
                    raise SlotsBusy(f"{self.endpoint}: the org's allowance is not known yet; {self.allowance.burst} "
                                    "requests are in flight")
                wait = (1.0 - self._tokens) / rate
                if now + wait > deadline:
                    raise SlotsBusy(f"{self.endpoint}: paced to {rate:.2f} requests/s by the org's allowance; "
                                    f"the next slot is {wait:.1f}s away, past the call's deadline")
                await asyncio.sleep(wait)
                self._tokens, self._stamp = 1.0, time.monotonic()
            self._tokens -= 1.0
