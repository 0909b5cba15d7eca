"""Messages a runner holds on to for the broker's or a target's sake.

- Parked: a message that met an endpoint's open circuit waits here (held, kept alive by the pull feed,
  no new delivery, nothing counted) and goes back in line the moment the circuit lets calls through,
  all of them on closed, `half_open_probes` on half-open. At most half the flow's window is parked, so
  the endpoints that work keep flowing; past that the failure handler sends messages back instead.
- Recent acks: a server going down drops the acks it had not processed yet, and each would hold its
  message for a whole ack_wait (to be skipped as done, but late). The ack subjects of the last moments
  before a disconnect are sent again after the reconnect; an ack the server has seen is ignored.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, Callable

RECENT_ACKS = 8192      # acks remembered to send again after a reconnect ...
RE_ACK_WINDOW = 2.0     # ... those sent this long before the connection dropped


class Parking:
    def __init__(self, breakers: dict[str, Any], feed: Any, log: Any) -> None:
        self.breakers = breakers  # endpoint -> Breaker
        self.feed = feed
        self.log = log
        self._parked: dict[str, list[Any]] = {}
        self._unwatch: list[Callable[[], None]] = []

    def __len__(self) -> int:
        return sum(len(m) for m in self._parked.values())

    def park(self, msg: Any, endpoint: str) -> bool:
        """Hold `msg` until `endpoint`'s circuit lets calls through; False when there is no room or no
        breaker to wait for."""
        breaker = self.breakers.get(endpoint)
        if breaker is None or self.feed.stopping or len(self) >= max(1, self.feed.max_in_flight // 2):
            return False
        if endpoint not in self._parked:
            self._parked[endpoint] = []
            self._unwatch.append(breaker.on_change(lambda state: self.unpark(endpoint, state)))
        self._parked[endpoint].append(msg)
        if breaker.allow():  # it let calls through meanwhile
            self.unpark(endpoint, breaker.state)
        return True

    def unpark(self, endpoint: str, state: str) -> None:
        parked = self._parked.get(endpoint)
        if not parked or state == "open":
            return
        n = len(parked) if state == "closed" else self.breakers[endpoint].settings.half_open_probes
        ready, parked[:] = parked[:n], parked[n:]
        self.log.info("outage_unparked", endpoint=endpoint, state=state, messages=len(ready), still_parked=len(parked))
        self.feed.requeue(ready)

    def release_all(self) -> list[Any]:
        """The runner stops: every parked message, to be handed back."""
        for unwatch in self._unwatch:
            unwatch()
        msgs = [m for parked in self._parked.values() for m in parked]
        self._parked.clear()
        return msgs


class RecentAcks:
    def __init__(self, nc: Any, log: Any) -> None:
        self.nc = nc
        self.log = log
        self._acks: deque[tuple[float, str]] = deque(maxlen=RECENT_ACKS)
        self._disconnected_at = 0.0

    def acked(self, reply: str) -> None:
        self._acks.append((time.monotonic(), reply))

    def disconnected(self) -> None:
        self._disconnected_at = time.monotonic()

    def to_repeat(self) -> list[str]:
        """After a reconnect: the acks sent shortly before (or during) the disconnect."""
        since = self._disconnected_at - RE_ACK_WINDOW
        replies = [reply for at, reply in self._acks if at >= since]
        self._acks.clear()
        return replies

    async def repeat(self, replies: list[str]) -> None:
        if replies:
            self.log.info("re_ack_after_reconnect", messages=len(replies))
        for reply in replies:
            try:
                await self.nc.publish(reply, b"+ACK")
            except Exception:  # noqa: BLE001 - disconnected again: the ack_wait redelivery is the fallback
                return
            await asyncio.sleep(0)
