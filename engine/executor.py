"""The hot path of a stream flow: steps over what engine/pull_feed.py delivers, acks after confirms.

Shape (MEASURED.md): pull requests keep up to `max_in_flight` messages coming into a subscription
callback that only buffers them. Pure flows: a processor runs the compiled steps over a batch,
publishes the outputs with `publish_async`, and hands the batch to a finaliser that waits for every
publish ack before acking the sources; batches overlap. Flows with calls: `concurrency` workers
each settle their own message, so a slow call holds back no other message's ack.

Broker faults are outages (DESIGN principle 9). Once a message's effect has happened, everything the
broker still has to confirm (its outputs, its state records, its done mark) is waited for in place
(engine/confirm.py) before the source is acked; the message stays held meanwhile. A lost ack then
costs a redelivery that finds the mark, never a second effect. Messages that meet an open circuit
are parked here until it lets calls through (engine/failures.py).
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

import structlog
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from engine import trace_context
from engine.cluster import when_settled
from engine.confirm import until_confirmed
from engine.errors import HubError, NotYet, classify, is_broker_fault
from engine.failures import FailureHandler, FailureHistory
from engine.held import Parking, RecentAcks
from engine.claim_stage import ClaimStage
from engine.idempotency import ClaimLost, HeldElsewhere, IdempotencyStore, InFlightKeys, applies_to, business_key
from engine.keyed_state import StateConflict
from engine.claim_check import CLAIM, CLAIM_HEADERS, ClaimChecks, is_claim
from engine.outputs import check_sizes, commit_confirmed, store_outputs, too_large, unconfirmed
from engine.messages import REPLAY_FOR, Envelope, decode, opaque
from engine.pipeline import Pipeline
from engine.probes import NO_PROBE
from engine.pull_feed import HAND_BACK_DELAY, PullFeed
from engine.ratelimit import RateLimiter
from engine.tasks import cancel_and_wait
from engine.waiting import WaitHandler, checks_within

log = structlog.get_logger("hub.executor")

PENDING_BATCHES = 4          # batches whose publish acks may be outstanding at once
HAND_BACK = HubError("runner stopping: message not started")  # marker, never raised
EXTRA_DELIVERIES = 10
STATE_RETRY_DELAY = 0.2      # a `state` record changed by another message: run this one again soon


class FlowStats:
    __slots__ = ("received", "acked", "filtered", "skipped", "failed", "published")

    def __init__(self) -> None:
        self.received = self.acked = self.filtered = self.skipped = self.failed = self.published = 0

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__slots__}


class StreamFlowRunner:
    """Runs one flow whose source is a JetStream subject."""

    def __init__(self, pipeline: Pipeline, stream: str, nc: Any, js: Any, publish_timeout: float,
                 idempotency: IdempotencyStore | None = None, history: FailureHistory | None = None,
                 breaker_wait: Any = None) -> None:
        self.flow = pipeline.flow
        self.pipeline = pipeline
        self.stream = stream
        self.nc, self.js = nc, js
        self.claims: ClaimChecks | None = None  # claim-checked payloads are fetched through it (lazily)
        self.publish_timeout = publish_timeout
        limits = self.flow.limits
        self.batch = limits.batch
        self.max_in_flight = limits.max_in_flight
        self.concurrency = limits.concurrency
        self.limiter = RateLimiter(limits.rate) if limits.rate else None
        pipeline.guard.limiter = self.limiter  # in-process retries of a call take a token too
        self.failures = FailureHandler(self.flow, js, stream, publish_timeout, history, breaker_wait,
                                       clock=pipeline.clock)
        self.failures.alive = self.alive
        self.failures.max_payload = lambda: nc.max_payload
        self.waits = WaitHandler(self.flow, js, self.failures, pipeline.clock) if pipeline.waits else None
        self.idempotency = idempotency if idempotency and applies_to(self.flow, pipeline.is_async) else None
        self.keys_in_flight = InFlightKeys()
        # a claim lives as long as a held message: refreshed with its in-progress acks, taken over
        # once its holder has shown no sign of life for an ack_wait (engine/idempotency.py)
        self.claim_lease = self.flow.ack_wait
        # the claims of messages the workers take in one loop tick go out together (engine/claim_stage.py)
        self.claim_stage = ClaimStage(self.idempotency, self.flow.name, self.claim_lease) \
            if self.idempotency is not None else None
        self._holding: dict[int, Envelope] = {}  # id(msg) -> its envelope, while its claim is held
        self._marking: set[int] = set()           # ... and while its done mark is being written
        self._refreshing: asyncio.Future[None] | None = None  # the keep-alive's refresh in flight
        # buffered messages looked at ahead of their workers: id(msg) -> (envelope, its claim's future
        # or None when not claimed ahead); taken by the worker that takes the message (_claim_ahead)
        self._ahead: dict[int, tuple[Envelope | None, asyncio.Future[Any] | None]] = {}
        self.concurrent = pipeline.is_async or self.idempotency is not None
        self.stats = FlowStats()
        self.probe = NO_PROBE  # metrics and traces per message (engine/probes.py; set by the Hub)
        self.count_item_dead_letters: Any = None  # (flow, error class) pairs -> that flow's counts (set by the Hub)
        self.log = log.bind(flow=self.flow.name)
        self.feed = PullFeed(nc, stream, self.flow.name, batch=self.batch, max_in_flight=self.max_in_flight,
                             ack_wait=self.flow.ack_wait, log=self.log, stats=self.stats,
                             workers=self.concurrency if self.concurrent else None)
        self._finalisers: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(PENDING_BATCHES)
        self._workers: list[asyncio.Task[None]] = []
        self.parking = Parking(pipeline.breakers, self.feed, self.log)  # messages waiting for a circuit
        self.recent_acks = RecentAcks(nc, self.log)
        if self.concurrent:
            self.failures.park = self.parking.park
        if self.idempotency is not None:
            self.feed.on_kept_alive = self._refresh_claims

    def alive(self) -> bool:
        """The connection is open or can come back: a broker fault is worth waiting out."""
        return not self.nc.is_closed

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self.waits is not None:
            await self.waits.start()
        await self._ensure_consumer()
        await self.feed.start()
        if self.concurrent:
            self._workers = [asyncio.create_task(self._worker(), name=f"worker:{self.flow.name}:{i}")
                             for i in range(self.concurrency)]
        else:
            self._workers = [asyncio.create_task(self._process_loop(), name=f"process:{self.flow.name}")]
        self.log.info("flow_started", stream=self.stream, subject=self.flow.consumed_subject)

    async def _ensure_consumer(self) -> None:
        source = self.flow.source
        # `until` checks come back as deliveries too: room for every check before give_up
        checks = max((checks_within(w) for w in self.pipeline.waits), default=0)
        config = ConsumerConfig(
            durable_name=self.flow.name,
            filter_subject=self.flow.consumed_subject,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.flow.ack_wait,
            max_ack_pending=self.max_in_flight,
            # the schedule is enforced by the failure handler from the failure history; this bound
            # is the backstop for messages that crash a worker (engine/advisories.py), with room
            # for hand-backs and outage waits, which do not count against the schedule
            max_deliver=len(self.flow.on_error.redeliver) + 1 + EXTRA_DELIVERIES + checks,
            deliver_policy=DeliverPolicy.NEW if getattr(source, "deliver", "all") == "new" else DeliverPolicy.ALL,
            description=self.flow.description[:200] or None,
        )
        # creates, or updates the mutable fields; asks again while the cluster elects leaders
        await when_settled(lambda: self.js.add_consumer(self.stream, config), f"consumer {self.flow.name}")

    def watch_breaker(self, breaker: Any) -> None:
        """Stop pulling while the circuit of the flow's first endpoint is open; pull again on
        half-open (so a probe can go out) and closed. Held messages still finish or wait."""
        probes = breaker.settings.half_open_probes

        def window(state: str) -> None:
            # open: nothing; half-open: just enough for the probes, so the backlog is not pulled
            # only to be handed back; closed: the flow's own bound
            self.feed.set_window({"open": 0, "half_open": probes}.get(state, self.max_in_flight))

        def changed(state: str) -> None:
            self.log.warning("circuit_" + state, endpoint=breaker.endpoint)
            window(state)

        breaker.on_change(changed)
        window(breaker.state)

    def on_disconnect(self) -> None:
        self.recent_acks.disconnected()

    def on_reconnect(self) -> None:
        """Pull again, and ack once more what was acked just before the connection dropped."""
        self.feed.on_reconnect()
        task = asyncio.create_task(self.recent_acks.repeat(self.recent_acks.to_repeat()))
        self._finalisers.add(task)
        task.add_done_callback(self._finalisers.discard)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop pulling; hand unstarted and parked messages back (redelivered to any runner after
        HAND_BACK_DELAY); let started ones finish and settle."""
        self.feed.stop_pulling()
        self.feed.buffer.extend(self.parking.release_all())  # handed back with the unstarted ones
        ahead, self._ahead = self._ahead, {}
        for mid, (env, fut) in ahead.items():  # claimed ahead, never started: their claims are given up
            await self._drop_ahead(mid, env, fut)
        await self.feed.hand_back_buffered()
        # asyncio.wait, not wait_for(gather(...)): on a timeout that cancels, and a worker that lost
        # its cancel (engine/tasks.py) would keep the stop waiting for ever
        for tasks in (self._workers, self._finalisers):
            if tasks:
                await asyncio.wait(set(tasks), timeout=timeout)
        if not all(t.done() for t in (*self._workers, *self._finalisers)):
            self.log.warning("stop_timeout", held=len(self.feed.held))
        await cancel_and_wait([*self._workers, *self._finalisers])
        if self.claim_stage is not None:
            await self.claim_stage.close()
        await self.feed.close()
        self.log.info("flow_stopped", **self.stats.as_dict())

    # --- processing --------------------------------------------------------------------------

    async def _process_loop(self) -> None:
        buffer = self.feed.buffer
        while await self.feed.ready():
            msgs = [buffer.popleft() for _ in range(min(len(buffer), self.batch))]
            results = await self._run_sync_batch(msgs)
            await self._slots.acquire()
            task = asyncio.create_task(self._finalise(results))
            self._finalisers.add(task)
            task.add_done_callback(self._finalisers.discard)

    def _envelope(self, msg: Any, data: bytes | None = None) -> Envelope | None:
        """The message as the flow sees it; None when it is a replay meant for another flow. `data`: the
        payload fetched for a claim-checked message (engine/claim_check.py)."""
        headers = msg.headers
        if headers and headers.get(REPLAY_FOR, self.flow.name) != self.flow.name:
            return None
        fallback = ""
        if not headers or ("ce-id" not in headers and "Nats-Msg-Id" not in headers):
            fallback = f"{self.stream}:{msg.metadata.sequence.stream}"
        if not self.pipeline.reads_payload:
            env = opaque(msg.data, headers, msg.subject, fallback)
        else:
            env = decode(msg.data if data is None else data, headers, msg.subject, fallback)
        if data is not None or is_claim(headers):
            env.raw = msg.data if env.raw is not None else None  # unchanged: republished as the reference
            env.claim = {k: headers[k] for k in CLAIM_HEADERS if k in headers}
        return env

    async def _claimed(self, msg: Any) -> bytes | None:
        """The payload of a claim-checked message (fetched and checked), else None: no await on the hot path."""
        if not is_claim(msg.headers) or not self.pipeline.reads_payload:
            return None
        if self.claims is None:
            self.claims = ClaimChecks(self.js)
        return await self.claims.fetch(msg.headers)

    async def _run_sync_batch(self, msgs: list[Any]) -> list[tuple[Any, Any, Any, HubError | None]]:
        """Pure pipelines: one coroutine for the whole batch (no task or coroutine per message)."""
        results: list[tuple[Any, Any, Any, HubError | None]] = []
        append = results.append
        publish = self.js.publish_async
        run_sync = self.pipeline.run_sync
        limiter = self.limiter
        limit = self.nc.max_payload
        for msg in msgs:
            self.probe.begin(msg)
            env = None
            try:
                if limiter:
                    await limiter.acquire()
                env = self._envelope(msg, await self._claimed(msg) if msg.headers and CLAIM in msg.headers else None)
                if env is None or not run_sync(env):
                    append((msg, env, None, None))
                    continue
                outputs = env.outputs
                for s, d, h in outputs:
                    if len(d) + len(h) > limit:
                        raise too_large(s, d, h, limit)
                append((msg, env, [await publish(s, d, headers=h) for s, d, h in outputs], None))
            except Exception as exc:
                append((msg, env, None, classify(exc)))
        return results

    async def _worker(self) -> None:
        """Flows with calls: `concurrency` workers each take the next message and settle it on its
        own, so one slow call delays no other message's ack (and a crash repeats little)."""
        while await self.feed.ready():
            msg = self.feed.buffer.popleft()
            if self.feed.stopping:
                if (entry := self._ahead.pop(id(msg), None)) is not None:
                    await self._drop_ahead(id(msg), *entry)
                await self._settle(msg, None, None, HAND_BACK)
                continue
            if self.claim_stage is not None and self.feed.buffer and not trace_context._kv_traced[0]:
                self._claim_ahead()
            msg, env, published, err = await self._run_one(msg)
            done = False
            try:
                done = await self._settle(msg, env, published, err)
            finally:
                if env is not None and env.idem_key is not None:
                    await self._let_go(id(msg), env, done)

    async def _run_one(self, msg: Any) -> tuple[Any, Any, int | None, HubError | None]:
        """Claim, steps, outputs stored: (msg, envelope, outputs published or None when there is
        nothing to ack for, error)."""
        self.probe.begin(msg)
        env = None
        try:
            if self.limiter:
                await self.limiter.acquire()
            ahead = self._ahead.pop(id(msg), None) if self._ahead else None
            if ahead is None:
                env = self._envelope(msg, await self._claimed(msg) if msg.headers and CLAIM in msg.headers else None)
            else:
                env = ahead[0]
            if env is None:
                return msg, env, None, None
            if self.idempotency is not None:
                if ahead is not None and ahead[1] is not None:  # held and claimed by _claim_ahead
                    key, held = env.idem_key, True
                    env.idem_claim = await self._claimed_ahead(env, ahead[1])
                else:
                    key = business_key(self.flow, env)
                    if self._ahead and self.keys_in_flight.busy(key) and await self._take_ahead(env, key):
                        held = True
                    else:
                        held = await self.keys_in_flight.claim(key)  # released by _worker after the settle
                        if held:
                            env.idem_key = key
                            env.idem_claim = await self._claim(env, key)
                if held:
                    if env.idem_claim is not None:
                        self._holding[id(msg)] = env  # refreshed by the feed's keep-alive from now on
                if not held or env.idem_claim is None:
                    self.log.info("duplicate_skipped", msg_id=env.msg_id, idempotency_key=key,
                                  correlation_id=env.correlation_id)
                    self.stats.skipped += 1
                    if held:
                        self.keys_in_flight.release(key, done=True)
                    return msg, None, None, None
            if self.pipeline.has_unsafe_calls:
                env.prior = await self.failures.prior_outcomes(msg)
            if not await self.pipeline.run(env):
                return msg, env, None, None
            return msg, env, await self._store_outputs(env), None
        except Exception as exc:
            return msg, env, None, classify(exc)

    def _claim_ahead(self) -> None:
        """The claims of the buffered messages go out now, in one batch with the taking worker's own
        (engine/claim_stage.py), instead of one small batch per worker as each comes round: their
        workers then find them decided. A claim taken ahead is held like any other (in the keys in
        flight, refreshed while its message is held, given up if the message goes back unstarted).
        Not while KV writes are traced: a claim's span belongs under its own message's span.
        Deliveries join the buffer's right end: only those after the last message already looked at are
        new (one put back at the left end is claimed by its worker, or takes the claim, see _take_ahead)."""
        ahead, flow, stage, keys = self._ahead, self.flow, self.claim_stage, self.keys_in_flight
        new = []
        for m in reversed(self.feed.buffer):
            if id(m) in ahead:
                break
            new.append(m)
        for m in reversed(new):
            mid = id(m)
            if m.headers and CLAIM in m.headers:  # a claim check is fetched by its worker
                continue
            try:
                env = self._envelope(m)
                key = business_key(flow, env) if env is not None else None
            except Exception:  # noqa: BLE001 - its worker meets the error itself
                continue
            fut = None
            if key is not None and keys.try_hold(key):
                env.idem_key = key  # type: ignore[union-attr]
                fut = stage.claim_soon(key, env.msg_id)  # type: ignore[union-attr]
                fut.add_done_callback(partial(self._hold_ahead, mid, env))
            ahead[mid] = (env, fut)

    def _hold_ahead(self, mid: int, env: Envelope, fut: asyncio.Future[Any]) -> None:
        """A claim taken ahead is refreshed from the moment it exists, while its message waits in the
        buffer (once a worker has it, or another message took the claim over, the worker holds it)."""
        entry = self._ahead.get(mid)
        if entry is None or entry[1] is not fut:
            return
        if not fut.cancelled() and fut.exception() is None and (claim := fut.result()) is not None:
            env.idem_claim = claim
            self._holding[mid] = env

    async def _take_ahead(self, env: Envelope, key: str) -> bool:
        """A message still in the buffer holds `key`'s claim, taken ahead: this message, started first,
        takes that claim over (True), and the buffered one waits for it like any copy. Waiting instead
        would never end when the buffered one can only run after it (one worker: a stuck flow)."""
        for mid, (other, fut) in self._ahead.items():
            if fut is not None and other is not None and other.idem_key == key:
                break
        else:
            return False
        self._ahead[mid] = (other, None)  # its worker claims as usual (and finds the done mark)
        known, other.idem_key, other.idem_claim = other.idem_claim, None, None
        if self._holding.pop(mid, None) is not None and self._refreshing is not None:
            await asyncio.shield(self._refreshing)  # the claim's revision may be changing right now
            known = other.idem_claim if other.idem_claim is not None else known
            other.idem_claim = None
        env.idem_key = key
        env.idem_claim = known if known is not None else await self._claimed_ahead(env, fut)
        return True

    async def _claimed_ahead(self, env: Envelope, fut: asyncio.Future[Any]) -> int | None:
        """The outcome of a claim taken ahead; held elsewhere or not confirmed: claimed as usual."""
        try:
            return await fut  # type: ignore[no-any-return]
        except HeldElsewhere:
            pass
        except Exception as exc:
            if not is_broker_fault(exc):
                raise
        return await self._claim(env, env.idem_key)  # type: ignore[arg-type]

    async def _drop_ahead(self, mid: int, env: Envelope | None, fut: asyncio.Future[Any] | None) -> None:
        """A message claimed ahead goes back unstarted: its claim is given up and its key freed."""
        if env is None or fut is None:
            return
        try:
            claim = await fut
        except Exception:  # noqa: BLE001 - not claimed (an unconfirmed claim ends with its lease)
            done = False
        else:
            done = claim is None  # None: the done mark was there
            env.idem_claim = claim  # (a future already done returns before _hold_ahead has run)
        await self._let_go(mid, env, done)

    async def _let_go(self, mid: int, env: Envelope, done: bool) -> None:
        """The message's hold on its key ends: a claim whose effect did not happen is given up (for
        its retry, replay or copy), and the key is freed in this runner (remembered as done if so)."""
        self._holding.pop(mid, None)
        if not done and env.idem_claim is not None:
            if self._refreshing is not None:  # its revision may be changing right now
                await asyncio.shield(self._refreshing)
            await self.idempotency.give_up(self.flow.name, env.idem_key, env.idem_claim)  # type: ignore[union-attr,arg-type]
        self.keys_in_flight.release(env.idem_key, done)  # type: ignore[arg-type]

    async def _claim(self, env: Envelope, key: str) -> int | None:
        """This message's claim on its key (None: the effect is done). While another runner's copy, or
        one that crashed, holds it, wait here (the feed keeps the message ours) until it ends; while
        the broker restarts, wait for it."""
        assert self.claim_stage is not None
        stage, pause = self.claim_stage, 0.05
        while True:
            try:
                return await until_confirmed(lambda: stage.claim(key, env.msg_id),
                                             what="idempotency claim", alive=self.alive, log=self.log,
                                             msg_id=env.msg_id)
            except HeldElsewhere as held:
                self.log.info("idempotency_key_busy", msg_id=env.msg_id, idempotency_key=key, error=str(held))
                await asyncio.sleep(min(pause, held.seconds_left))
                pause = min(pause * 2, 1.0)

    async def _refresh_claims(self, msgs: list[Any]) -> None:
        """The feed kept these messages alive: so are their claims (a fresh time, compare-and-set).
        A broker fault skips a round (the next comes within a quarter of ack_wait, or at once after
        a reconnect); a claim found changed was taken over by a copy that judged this runner dead."""
        held = [(id(m), env) for m in msgs if (env := self._holding.get(id(m))) is not None]
        if not held or self.idempotency is None:
            return
        store, flow = self.idempotency, self.flow.name
        done = self._refreshing = asyncio.get_running_loop().create_future()
        try:
            results = await store.refresh_many(flow, [(env.idem_key, env.msg_id, env.idem_claim)  # type: ignore[misc]
                                                      for _, env in held])
            for (key, env), result in zip(held, results):
                if isinstance(result, int):
                    env.idem_claim = result
                elif isinstance(result, ClaimLost):
                    if key in self._holding and key not in self._marking:
                        self.log.warning("idempotency_claim_lost", msg_id=env.msg_id, idempotency_key=env.idem_key)
                elif isinstance(result, Exception) and not is_broker_fault(result):
                    self.log.warning("idempotency_refresh_failed", msg_id=env.msg_id, error=repr(result))
        finally:
            done.set_result(None)
            self._refreshing = None

    async def _store_outputs(self, env: Envelope) -> int:
        """The outputs, stored (engine/outputs.py): the effect has happened, so broker faults are waited out."""
        if not env.outputs:
            return 0
        check_sizes(env.outputs, self.nc.max_payload)
        return await store_outputs(self.js, env.outputs, self.publish_timeout, self.alive, self.log, env.msg_id)

    async def _finalise(self, results: list[tuple[Any, Any, Any, HubError | None]]) -> None:
        """Pure flows: one wait for the whole batch's publish acks, then each message is settled."""
        try:
            pending_futures = [f for _, _, futs, _ in results if futs for f in futs]
            if pending_futures:
                _, late = await asyncio.wait(pending_futures, timeout=self.publish_timeout)
                for f in late:
                    f.cancel()
            for msg, env, futures, err in results:
                if err is None and futures:
                    err = unconfirmed(futures, env.outputs)
                await self._settle(msg, env, None if futures is None else len(futures), err)
        finally:
            self._slots.release()

    async def _settle(self, msg: Any, env: Any, published: int | None, err: HubError | None) -> bool:
        """Ack only what is done and confirmed (and its effect recorded); the rest goes to the
        failure policy. `published`: outputs stored, None when the message ran no further than a filter.
        True when an effect was marked done."""
        marked = held = False
        try:
            if err is HAND_BACK:
                await msg.nak(delay=HAND_BACK_DELAY)  # not started: for another runner
            elif isinstance(err, NotYet) and self.waits is not None:
                await self.waits.not_yet(msg, env, err)
            elif err is None:
                if env is not None and env.state_writes:
                    try:
                        for write in env.state_writes:
                            await commit_confirmed(write, self.alive, self.log, env.msg_id)
                    except StateConflict as conflict:
                        conflict.step = "state"
                        self.log.info("state_conflict", msg_id=env.msg_id, error=str(conflict))
                        await msg.nak(delay=STATE_RETRY_DELAY)  # outputs are stored under stable ids
                        return False
                if published is not None and env is not None and env.idem_key is not None:
                    store, key, msg_id = self.idempotency, env.idem_key, env.msg_id
                    self._marking.add(id(msg))  # still refreshed while the broker takes its time
                    try:
                        await until_confirmed(lambda: store.mark_done(self.flow.name, key, msg_id),  # type: ignore[union-attr]
                                              what="done mark", alive=self.alive, log=self.log, msg_id=msg_id)
                    finally:
                        self._marking.discard(id(msg))
                    marked = True
                await msg.ack()
                self.recent_acks.acked(msg.reply)
                if self.waits is not None and env is not None:
                    await self.waits.forget(env)
                if published is None:
                    if env is not None:
                        self.stats.filtered += 1
                else:
                    self.stats.acked += 1
                    self.stats.published += published
                    if env is not None and env.item_dead_letters and self.count_item_dead_letters is not None:
                        self.count_item_dead_letters(env.item_dead_letters)
            else:
                self.stats.failed += 1
                held = await self.failures.handle(msg, err, env)
        except Exception as exc:  # the connection closed for good: JetStream redelivers after ack_wait
            self.log.warning("settle_failed", error=repr(exc), msg_id=getattr(env, "msg_id", None))
        finally:
            if not held:
                self.feed.release(msg)
            self.probe.end(msg, published, err)
        return marked
