"""The hub's wall clock, which the caller can set (principle 8).

Every date the hub decides on (schedule slots, month ends, retention edges, wait deadlines, ages in
the DLQ, fallback freshness) comes from a `Clock` handed down by the caller (`engine.runtime.Hub(clock=…)`,
`runner.py demo --at`, a test), never from `datetime.now()` directly; `SYSTEM` is the default.

Which clock measures which duration:
- inside one process: `Clock.monotonic()` (timeouts, budgets, rates);
- across processes (a wait that started on another runner, a DLQ record's age): two readings of runner
  clocks, each written by a runner's `Clock` (KV records, `Hub-Dlq-*` headers), never a runner reading
  against nats-server's message timestamps (a second clock, which time-machine or a skewed host does
  not move with the runner's);
- on the server alone: server time against server time (the consumer-info `ts` against a message's
  stored time, for alert `lag`).
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone

MAX_NAP = 60.0  # a long sleep re-reads the clock this often: a wall clock can jump (NTP, suspend, a test)


class Clock:
    """Real time. `now()` is aware UTC; `time()` is epoch seconds on the same clock."""

    def time(self) -> float:
        return time.time()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.time(), timezone.utc)

    @staticmethod
    def monotonic() -> float:
        return time.monotonic()

    async def sleep_until(self, moment: datetime) -> None:
        """Return once this clock reads `moment` or later (re-reading it at least every MAX_NAP s)."""
        while (remaining := (moment - self.now()).total_seconds()) > 0:
            await asyncio.sleep(min(remaining, MAX_NAP))


class ShiftedClock(Clock):
    """Real time moved to start at `at`: it runs on from there at the real rate (`runner.py demo --at`)."""

    def __init__(self, at: datetime) -> None:
        if at.tzinfo is None:
            raise ValueError(f"{at.isoformat()}: give the instant with its offset (e.g. Z or +01:00)")
        self.offset = at.timestamp() - time.time()

    def time(self) -> float:
        return time.time() + self.offset


class ManualClock(Clock):
    """A clock tests move by hand; it stands still otherwise. `sleep_until` wakes when it is moved."""

    def __init__(self, at: datetime) -> None:
        if at.tzinfo is None:
            raise ValueError(f"{at.isoformat()}: give the instant with its offset")
        self._t = at.timestamp()
        self._moved: asyncio.Event | None = None
        self.sleepers: list[datetime] = []  # what each `sleep_until` in progress waits for (tests read it)

    def time(self) -> float:
        return self._t

    def advance(self, seconds: float) -> None:
        self._t += seconds
        self._wake()

    def set(self, at: datetime) -> None:
        self._t = at.timestamp()
        self._wake()

    def _wake(self) -> None:
        if self._moved is not None:
            self._moved.set()

    async def sleep_until(self, moment: datetime) -> None:
        self.sleepers.append(moment)
        try:
            while self.now() < moment:
                if self._moved is None:
                    self._moved = asyncio.Event()
                self._moved.clear()
                await self._moved.wait()
        finally:
            self.sleepers.remove(moment)


SYSTEM = Clock()


def parse_instant(text: str) -> datetime:
    """An ISO 8601 instant with its offset (`Z` allowed): a clear error otherwise (for `--at`)."""
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 instant, e.g. 2027-03-28T01:30:00Z") from None
    if at.tzinfo is None:
        raise ValueError(f"{text!r} has no offset: add Z or +01:00 (the hub decides in UTC)")
    return at.astimezone(timezone.utc)
