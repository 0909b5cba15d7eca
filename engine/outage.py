"""Connection trouble of an ingress that holds a connection (IMAP, MQTT, SFTP): one bookkeeping.

One report when an outage starts (or changes kind: a server back with a new host key is refused,
not merely down), one when it ends with how long it lasted, never one per attempt; and the reconnect
backoff, `start` doubling to `maximum`, reset by a working session.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from engine.ingress import Ingress


class Outage:
    def __init__(self, start: float, maximum: float) -> None:
        self.start, self.maximum = start, maximum
        self.attempts = 0     # failed attempts in the current outage
        self.reconnects = 0   # sessions that worked after an earlier one had
        self.kind: str | None = None
        self._since: float | None = None
        self._backoff = start
        self._served = False  # a session has worked before: the next one is a reconnect

    @property
    def retry(self) -> str:
        """How the ingress retries, for the outage's log line."""
        return f"{self.start:g}s doubling to {self.maximum:g}s"

    def failed(self, kind: str = "unavailable") -> bool:
        """Count a failed attempt; True when it starts an outage or changes its kind (report it)."""
        self.attempts += 1
        report = self._since is None or kind != self.kind
        if self._since is None:
            self._since = time.monotonic()
        self.kind = kind
        return report

    def recovered(self) -> dict[str, Any] | None:
        """A session works again: the outage that ended ({attempts, down_s}), or None if there was none."""
        if self._served:
            self.reconnects += 1
        ended = None
        if self._since is not None:
            ended = {"attempts": self.attempts, "down_s": round(time.monotonic() - self._since, 1)}
        self._served, self._since, self.kind, self.attempts, self._backoff = True, None, None, 0, self.start
        return ended

    async def pause(self, stop: asyncio.Event) -> None:
        """Wait out the backoff, or until `stop` is set; the next pause is twice as long."""
        wait, self._backoff = self._backoff, min(self._backoff * 2, self.maximum)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), wait)


class ReconnectingIngress(Ingress):
    """An ingress that holds a connection to a server and reconnects after trouble (its `_run`
    loop calls `outage.failed`/`recovered` and pauses with `outage.pause`)."""

    BACKOFF_START = 0.5
    BACKOFF_MAX = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outage = Outage(self.BACKOFF_START, self.BACKOFF_MAX)

    attempts = property(lambda self: self.outage.attempts, doc="Failed attempts in the current outage.")
    reconnects = property(lambda self: self.outage.reconnects, doc="Sessions that worked after an earlier one.")

    def _where(self) -> str:
        return f"{self.endpoint.host}:{self.endpoint.port}"
