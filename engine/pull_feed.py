"""Feeding a durable JetStream consumer's messages into a flow, the fast way (MEASURED.md).

The flow's own pull requests arrive in a subscription callback that only buffers (no task and no
`wait_for` per message, as `fetch()` costs). Credits track what was asked and not yet delivered;
a request is sent whenever the room under the window reaches half a batch. The window is this
runner's share of the flow's `max_in_flight` (see `runner_window`), shrunk to nothing while the
circuit of its endpoint is open.

In a cluster pull requests die with the consumer leader that held them, silently when its node is
killed or frozen. Credit is never left counted for a request that is gone: a 503 (no consumer leader
right now) drops all of it and asks again after a short pause; every request asks for idle
heartbeats, and `SILENCE` without a message, a heartbeat or a status while credit is outstanding
drops it too. Without that a flow stalled until the requests' expiry (15 s after a node's restart).

Held messages get an in-progress ack once they are older than a quarter of `ack_wait`, so a live
runner keeps them however long they wait, and a dead runner's messages go to the others `ack_wait`
after its last sign of life (the bound in docs/deploy.md). The same round refreshes their
idempotency claims (`on_kept_alive`, engine/idempotency.py), so a claim lives exactly as long as its
holder shows signs of life.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from typing import Any, Awaitable, Callable

from engine.pull_credit import PullCredit
from engine.tasks import cancel_and_wait

PULL_EXPIRES = 10.0   # seconds a pull request waits on the server
HEARTBEAT = 1.0       # the server's idle heartbeat for each waiting pull request
SILENCE = 3 * HEARTBEAT  # credit outstanding and nothing heard for this long: the requests are gone
PAUSE_MAX = 2.0       # longest pause between pull requests while the consumer has no leader
CALL_WINDOW_PER_WORKER = 4  # a flow with calls holds this many messages per worker at most
HAND_BACK_DELAY = 1.0
DRAIN_TIMEOUT = 2.0   # a stop on a broken connection must not wait for a flush that cannot come
# A handed-back message is redelivered after HAND_BACK_DELAY, not at once: at once, JetStream would
# give it straight back to this runner's own pull requests, which stay open until it unsubscribes.


def runner_window(max_in_flight: int, workers: int | None = None) -> int:
    """How many unacked messages one runner holds at most. `max_in_flight` is the flow's bound across
    all runners (the consumer's max_ack_pending); one runner takes at most half of it, so a runner
    that dies holding its share leaves the rest for the others while its messages wait out ack_wait.
    A flow with calls holds a few messages per worker: more would only wait in the buffer."""
    share = max(1, max_in_flight // 2)
    return min(share, max(1, workers * CALL_WINDOW_PER_WORKER)) if workers else share


class PullFeed:
    def __init__(self, nc: Any, stream: str, durable: str, *, batch: int, max_in_flight: int,
                 ack_wait: float, log: Any, stats: Any, workers: int | None = None) -> None:
        self.nc = nc
        self.max_in_flight = runner_window(max_in_flight, workers)
        self.batch = min(batch, self.max_in_flight)
        self.ack_wait = ack_wait
        self.log = log
        self.buffer: deque[Any] = deque()       # delivered, not started
        self.held: dict[int, Any] = {}           # delivered, not yet acked/naked/termed
        self._touched: dict[int, float] = {}     # held message -> when it was delivered or last kept alive
        self.stats = stats                       # counts `received`
        self.stopping = False
        self._pull_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._window = self.max_in_flight
        self._credit = PullCredit(PULL_EXPIRES)
        self._last_pull = 0.0
        self._next_sweep = 0.0
        self._last_heard = 0.0                   # a message, heartbeat or status on our inbox
        self._pause_until = 0.0                  # after a 503: no consumer leader to ask
        self._pause = 0.0
        self._wake_puller = asyncio.Event()
        self._wake_keep_alive = asyncio.Event()
        self._arrived = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._sub: Any = None
        # called with the messages just kept alive: their idempotency claims are refreshed with them
        self.on_kept_alive: Callable[[list[Any]], Awaitable[None]] | None = None

    async def start(self) -> None:
        self._inbox = self.nc.new_inbox()
        self._sub = await self.nc.subscribe(self._inbox + ".*", cb=self._on_msg)  # one reply subject per request
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
        self._touched.pop(id(msg), None)
        self._wake_puller.set()

    def set_window(self, size: int) -> None:
        """At most this runner's share (`runner_window`): the breaker asks for 0, probes or the flow's bound."""
        self._window = min(size, self.max_in_flight)
        self._wake_puller.set()

    def on_reconnect(self) -> None:
        """Pull requests die with the connection: ask again. In-progress acks sent just before may
        have died too: send them again now."""
        self._credit.clear()
        self._wake_puller.set()
        self._touched = dict.fromkeys(self._touched, 0.0)
        self._wake_keep_alive.set()

    async def ready(self) -> bool:
        """Wait until something is buffered; False when stopping with nothing left."""
        while not self.buffer:
            if self.stopping:
                return False
            self._arrived.clear()
            await self._arrived.wait()
        return True

    async def _on_msg(self, msg: Any) -> None:
        now = time.monotonic()
        self._last_heard = now
        headers = msg.headers
        if headers and not msg.data and "Status" in headers:
            status = headers["Status"]
            if status == "100":
                return  # idle heartbeat: the request still waits on a live consumer leader
            if status == "503":
                self._lost_credit("no_consumer_leader")  # and every request sent before it is gone too
                self._pause = min(max(self._pause * 2, 0.1), PAUSE_MAX)
                self._pause_until = now + self._pause
            elif status == "409" and headers.get("Description") == "Leadership Change":
                self._lost_credit("leadership_change")  # every request the old leader held is gone
            else:  # 408 expired, 409 refused, 404: that request is over, owing what the server says
                owed = int(headers.get("Nats-Pending-Messages", 0) or 0)
                self._credit.closed(msg.subject.rpartition(".")[2], owed)
                if status == "409":
                    self.log.warning("pull_conflict", description=headers.get("Description"))
            self._wake_puller.set()
            return
        self._pause = 0.0
        if self.stopping:
            await quietly(msg.nak(delay=HAND_BACK_DELAY))
            return
        self._credit.delivered()
        self.held[id(msg)] = msg
        self._touched[id(msg)] = now
        self.buffer.append(msg)
        self.stats.received += 1
        self._arrived.set()

    def _lost_credit(self, why: str) -> None:
        """The outstanding pull requests are gone (their consumer leader died or is frozen): ask again."""
        gone = self._credit.clear()
        if gone:
            self.log.info("pull_credit_reset", reason=why, credit=gone)

    async def _pull_loop(self) -> None:
        request_base = {"expires": int(PULL_EXPIRES * 1e9), "idle_heartbeat": int(HEARTBEAT * 1e9)}
        low_water = max(1, self.batch // 2)
        while not self.stopping:
            now = time.monotonic()
            credit = self._credit
            if credit.total and now - max(self._last_heard, self._last_pull) > SILENCE:
                self._lost_credit("silence")
            elif now >= self._next_sweep:
                self._next_sweep = now + 0.5
                if gone := credit.expired(now):
                    self.log.info("pull_credit_reset", reason="requests_expired_unanswered", credit=gone)
            room = self._window - len(self.held) - credit.total
            if room > 0 and room >= min(low_water, self._window) and not self.nc.is_reconnecting \
                    and now >= self._pause_until:
                n = min(self.batch, room)
                if not credit.total:
                    self._last_heard = now  # silence is counted from the first request that waits
                token = credit.asked(n, now)
                try:
                    await self.nc.publish(self._pull_subject, json.dumps({**request_base, "batch": n}).encode(),
                                          reply=f"{self._inbox}.{token}")
                    self._last_pull = now
                    continue
                except Exception as exc:
                    credit.closed(token)
                    self.log.warning("pull_failed", error=repr(exc))
            self._wake_puller.clear()
            wait = HEARTBEAT if now >= self._pause_until else max(0.01, self._pause_until - now)
            try:
                await asyncio.wait_for(self._wake_puller.wait(), wait)
            except TimeoutError:
                pass

    async def _keep_alive(self) -> None:
        """Tell JetStream we still work on what we hold, so no other runner gets it meanwhile. Only
        messages held for a quarter of ack_wait need it (most are acked long before), so a message
        goes at most 3/8 of ack_wait without a sign of life; after a reconnect every held message
        gets one at once (what was sent into a dead connection did not arrive)."""
        interval = max(0.05, self.ack_wait / 4)
        while True:
            self._wake_keep_alive.clear()
            try:
                await asyncio.wait_for(self._wake_keep_alive.wait(), interval / 2)
            except TimeoutError:
                pass
            due = time.monotonic() - interval
            kept = []
            for key, msg in list(self.held.items()):
                if self._touched.get(key, 0.0) <= due and not msg._ackd:
                    self._touched[key] = time.monotonic()
                    kept.append(msg)
                    await quietly(msg.in_progress())
            if kept and self.on_kept_alive is not None:
                await quietly(self.on_kept_alive(kept))


async def quietly(coro: Any) -> None:
    """Best-effort protocol acks (nak, in-progress) while the connection may be going away."""
    try:
        await coro
    except Exception:
        pass
