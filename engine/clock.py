"""The hub's wall clock, which the caller can set (principle 8).

Every date the hub decides on (schedule slots, month ends, retention edges, wait deadlines, ages in
the DLQ) comes from a `Clock`, never from `datetime.now()` directly: tests and `runner.py demo --at`
set it. Durations inside one process are measured on `monotonic()`; a duration that spans processes
(a wait that started on another runner) is measured between two readings of runner clocks, never
runner time against nats-server's message timestamps (two clocks).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone


class Clock:
    """Real time. `now()` is aware UTC; `time()` is epoch seconds on the same clock."""

    def time(self) -> float:
        return time.time()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.time(), timezone.utc)

    @staticmethod
    def monotonic() -> float:
        return time.monotonic()


class ShiftedClock(Clock):
    """Real time moved to start at `at`: it runs on from there at the real rate (`runner.py demo --at`)."""

    def __init__(self, at: datetime) -> None:
        if at.tzinfo is None:
            raise ValueError(f"{at.isoformat()}: give the instant with its offset (e.g. Z or +01:00)")
        self.offset = at.timestamp() - time.time()

    def time(self) -> float:
        return time.time() + self.offset


class ManualClock(Clock):
    """A clock tests move by hand; it stands still otherwise."""

    def __init__(self, at: datetime) -> None:
        if at.tzinfo is None:
            raise ValueError(f"{at.isoformat()}: give the instant with its offset")
        self._t = at.timestamp()

    def time(self) -> float:
        return self._t

    def advance(self, seconds: float) -> None:
        self._t += seconds

    def set(self, at: datetime) -> None:
        self._t = at.timestamp()


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
