"""Feeding a durable JetStream consumer's messages into a flow, the fast way (MEASURED.md).

The flow's own pull requests arrive in a subscription callback that only buffers (no task and no
`wait_for` per message, as `fetch()` costs). Credits track what was asked and not yet delivered;
a request is sent whenever the room under the window reaches half a batch. The window is the
flow's `max_in_flight`, shrunk to nothing while the circuit of its endpoint is open.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from typing import Any

from engine.tasks import cancel_and_wait

PULL_EXPIRES = 10.0   # seconds a pull request waits on the server
HAND_BACK_DELAY = 1.0
DRAIN_TIMEOUT = 2.0   # a stop on a broken connection must not wait for a flush that cannot come
# A handed-back message is redelivered after HAND_BACK_DELAY, not at once: at once, JetStream would
# give it straight back to this runner's own pull requests, which stay open until it unsubscribes.


class PullFeed:
    def __init__(self, nc: Any, stream: str, durable: str, *, batch: int, max_in_flight: int,
                 ack_wait: float, log: Any, stats: Any) -> None:
        self.nc = nc
        self.batch = batch
        self.max_in_flight = max_in_flight
        self.ack_wait = ack_wait
        self.log = log
        self.buffer: deque[Any] = deque()       # delivered, not started
        self.held: dict[int, Any] = {}           # delivered, not yet acked/naked/termed
        self.stats = stats                       # counts `received`
        self.stopping = False
        self._pull_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._window = max_in_flight
        self._requested = 0
        self._last_pull = 0.0
        self._wake_puller = asyncio.Event()
        self._arrived = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._sub: Any = None

    async def start(self) -> None:
        self._inbox = self.nc.new_inbox()
        self._sub = await self.nc.subscribe(self._inbox, cb=self._on_msg)
        self._tasks = [asyncio.create_task(self._pull_loop(), name=f"pull:{self._pull_subject}"),
                       asyncio.create_task(self._keep_alive(), name=f"keepalive:{self._pull_subject}")]

    def stop_pulling(self) -> None:
        self.stopping = True
        self._wake_puller.set()
        self._arrived.set()

    async def close(self) -> None:
        """After the flow has settled what it started: hand back the rest, stop listening."""
        await cancel_and_wait(self._tasks)
        await self.hand_back_buffered()
        if self._sub is not None and not self.nc.is_closed:
            # drain, not unsubscribe: a message the server sent before it saw the UNSUB still reaches
            # _on_msg and is handed back; dropped on the floor, it would wait out ack_wait.
            try:
                await asyncio.wait_for(self._sub.drain(), DRAIN_TIMEOUT)
            except Exception:
                await quietly(self._sub.unsubscribe())

    async def hand_back_buffered(self) -> None:
        while self.buffer:
            msg = self.buffer.popleft()
            self.release(msg)
            await quietly(msg.nak(delay=HAND_BACK_DELAY))

    def requeue(self, msgs: list[Any]) -> None:
        """Messages this runner held back (parked during an outage) go first in line again."""
        self.buffer.extendleft(reversed(msgs))
        if msgs:
            self._arrived.set()

    def release(self, msg: Any) -> None:
        """The message is settled: it no longer counts against the window."""
        self.held.pop(id(msg), None)
        self._wake_puller.set()

    def set_window(self, size: int) -> None:
        self._window = size
        self._wake_puller.set()

    def on_reconnect(self) -> None:
        """Pull requests die with the connection; ask again."""
        self._requested = 0
        self._wake_puller.set()

    async def ready(self) -> bool:
        """Wait until something is buffered; False when stopping with nothing left."""
        while not self.buffer:
            if self.stopping:
                return False
            self._arrived.clear()
            await self._arrived.wait()
        return True

    async def _on_msg(self, msg: Any) -> None:
        headers = msg.headers
        if headers and not msg.data and "Status" in headers:
            status = headers["Status"]
            if status in ("408", "409", "404"):
                self._requested = max(0, self._requested - int(headers.get("Nats-Pending-Messages", 0) or 0))
                if status == "409":
                    self.log.warning("pull_conflict", description=headers.get("Description"))
            self._wake_puller.set()
            return
        if self.stopping:
            await quietly(msg.nak(delay=HAND_BACK_DELAY))
            return
        if self._requested:
            self._requested -= 1
        self.held[id(msg)] = msg
        self.buffer.append(msg)
        self.stats.received += 1
        self._arrived.set()

    async def _pull_loop(self) -> None:
        request_base = {"expires": int(PULL_EXPIRES * 1e9)}
        low_water = max(1, self.batch // 2)
        while not self.stopping:
            room = self._window - len(self.held) - self._requested
            if room > 0 and room >= min(low_water, self._window) and not self.nc.is_reconnecting:
                n = min(self.batch, room)
                try:
                    await self.nc.publish(self._pull_subject, json.dumps({**request_base, "batch": n}).encode(),
                                          reply=self._inbox)
                    self._requested += n
                    self._last_pull = time.monotonic()
                    continue
                except Exception as exc:
                    self.log.warning("pull_failed", error=repr(exc))
            self._wake_puller.clear()
            try:
                await asyncio.wait_for(self._wake_puller.wait(), PULL_EXPIRES + 5)
            except TimeoutError:
                if self._requested and time.monotonic() - self._last_pull > PULL_EXPIRES + 5:
                    self._requested = 0  # the server's expiry notice was lost (reconnect)

    async def _keep_alive(self) -> None:
        """Tell JetStream we still work on what we hold, so no other runner gets it meanwhile."""
        interval = max(1.0, self.ack_wait / 3)
        while True:
            await asyncio.sleep(interval)
            for msg in list(self.held.values()):
                if not msg._ackd:
                    await quietly(msg.in_progress())


async def quietly(coro: Any) -> None:
    """Best-effort protocol acks (nak, in-progress) while the connection may be going away."""
    try:
        await coro
    except Exception:
        pass
