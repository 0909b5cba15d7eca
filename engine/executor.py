"""The hot path of a stream flow: steps over what engine/pull_feed.py delivers, acks after confirms.

Shape (MEASURED.md): pull requests keep up to `max_in_flight` messages coming into a subscription
callback that only buffers them. Pure flows: a processor runs the compiled steps over a batch,
publishes the outputs with `publish_async`, and hands the batch to a finaliser that waits for every
publish ack before acking the sources; batches overlap. Flows with calls: `concurrency` workers
each settle their own message, so a slow call holds back no other message's ack.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NoStreamResponseError

from engine.cluster import when_settled
from engine.errors import HubError, NotYet, PublishFailed, RoutingError, classify
from engine.failures import FailureHandler, FailureHistory
from engine.idempotency import HeldElsewhere, IdempotencyStore, InFlightKeys, applies_to, business_key
from engine.keyed_state import StateConflict, commit
from engine.claim_check import CLAIM, CLAIM_HEADERS, ClaimChecks, is_claim
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
CLAIM_LEASE_FLOOR = 60.0     # ack_wait is short (a dead runner costs seconds); a live holder's call may not be


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
        self.waits = WaitHandler(self.flow, js, self.failures, pipeline.clock) if pipeline.waits else None
        self.idempotency = idempotency if idempotency and applies_to(self.flow, pipeline.is_async) else None
        self.keys_in_flight = InFlightKeys()
        # a claim older than this is a crashed holder's: past two ack_waits JetStream has long
        # redelivered that message (its redelivery takes its own claim over at once)
        self.claim_lease = max(2 * self.flow.ack_wait, CLAIM_LEASE_FLOOR)
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

    def on_reconnect(self) -> None:
        self.feed.on_reconnect()

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop pulling; hand unstarted messages back (redelivered to any runner after
        HAND_BACK_DELAY); let started ones finish and settle."""
        self.feed.stop_pulling()
        await self.feed.hand_back_buffered()
        # asyncio.wait, not wait_for(gather(...)): on a timeout that cancels, and a worker that lost
        # its cancel (engine/tasks.py) would keep the stop waiting for ever
        for tasks in (self._workers, self._finalisers):
            if tasks:
                await asyncio.wait(set(tasks), timeout=timeout)
        if not all(t.done() for t in (*self._workers, *self._finalisers)):
            self.log.warning("stop_timeout", held=len(self.feed.held))
        await cancel_and_wait([*self._workers, *self._finalisers])
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
                append((msg, env, [await publish(s, d, headers=h) for s, d, h in env.outputs], None))
            except Exception as exc:
                append((msg, env, None, classify(exc)))
        return results

    async def _worker(self) -> None:
        """Flows with calls: `concurrency` workers each take the next message and settle it on its
        own, so one slow call delays no other message's ack (and a crash repeats little)."""
        while await self.feed.ready():
            msg = self.feed.buffer.popleft()
            if self.feed.stopping:
                await self._settle(msg, None, None, HAND_BACK)
                continue
            msg, env, futures, err = await self._run_one(msg)
            done = False
            try:
                done = await self._settle(msg, env, futures, err)
            finally:
                if env is not None and env.idem_key is not None:
                    if not done and env.idem_claim is not None:
                        await self.idempotency.give_up(self.flow.name, env.idem_key, env.idem_claim)  # type: ignore[union-attr]
                    self.keys_in_flight.release(env.idem_key, done)

    async def _run_one(self, msg: Any) -> tuple[Any, Any, Any, HubError | None]:
        self.probe.begin(msg)
        env = None
        try:
            if self.limiter:
                await self.limiter.acquire()
            env = self._envelope(msg, await self._claimed(msg) if msg.headers and CLAIM in msg.headers else None)
            if env is None:
                return msg, env, None, None
            if self.idempotency is not None:
                key = business_key(self.flow, env)
                held = await self.keys_in_flight.claim(key)  # released by _worker after the settle
                if held:
                    env.idem_key = key
                    env.idem_claim = await self._claim(env, key)
                if not held or env.idem_claim is None:
                    self.log.info("duplicate_skipped", msg_id=env.msg_id, idempotency_key=key,
                                  correlation_id=env.correlation_id)
                    self.stats.skipped += 1
                    if held:
                        self.keys_in_flight.release(key, done=True)
                    return msg, None, None, None
            if not await self.pipeline.run(env):
                return msg, env, None, None
            futures = [await self.js.publish_async(s, d, headers=h) for s, d, h in env.outputs]
            if futures:
                _, late = await asyncio.wait(futures, timeout=self.publish_timeout)
                for f in late:
                    f.cancel()
            return msg, env, futures, None
        except Exception as exc:
            return msg, env, None, classify(exc)

    async def _claim(self, env: Envelope, key: str) -> int | None:
        """This message's claim on its key (None: the effect is done). While another runner's copy, or
        one that crashed, holds it, wait here (the feed keeps the message ours) until it ends."""
        assert self.idempotency is not None
        pause = 0.05
        while True:
            try:
                return await self.idempotency.claim(self.flow.name, key, env.msg_id, self.claim_lease)
            except HeldElsewhere as held:
                self.log.info("idempotency_key_busy", msg_id=env.msg_id, idempotency_key=key, error=str(held))
                await asyncio.sleep(min(pause, held.seconds_left))
                pause = min(pause * 2, 1.0)

    async def _finalise(self, results: list[tuple[Any, Any, Any, HubError | None]]) -> None:
        """Pure flows: one wait for the whole batch's publish acks, then each message is settled."""
        try:
            pending_futures = [f for _, _, futs, _ in results if futs for f in futs]
            if pending_futures:
                _, late = await asyncio.wait(pending_futures, timeout=self.publish_timeout)
                for f in late:
                    f.cancel()
            for result in results:
                await self._settle(*result)
        finally:
            self._slots.release()

    async def _settle(self, msg: Any, env: Any, futures: Any, err: HubError | None) -> bool:
        """Ack only what is done and confirmed (and its effect recorded); the rest goes to the
        failure policy. `futures` are done (or cancelled) by now. True when an effect was marked done."""
        marked = False
        try:
            if err is None and futures:
                err = _unconfirmed(futures, env)
            if err is HAND_BACK:
                await msg.nak(delay=HAND_BACK_DELAY)  # not started: for another runner
            elif isinstance(err, NotYet) and self.waits is not None:
                await self.waits.not_yet(msg, env, err)
            elif err is None:
                if env is not None and env.state_writes:
                    try:
                        for write in env.state_writes:
                            await commit(write)
                    except StateConflict as conflict:
                        conflict.step = "state"
                        self.log.info("state_conflict", msg_id=env.msg_id, error=str(conflict))
                        await msg.nak(delay=STATE_RETRY_DELAY)  # outputs are stored under stable ids
                        return False
                if futures is not None and env is not None and env.idem_key is not None:
                    await self.idempotency.mark_done(self.flow.name, env.idem_key, env.msg_id)  # type: ignore[union-attr]
                    marked = True
                await msg.ack()
                if self.waits is not None and env is not None:
                    await self.waits.forget(env)
                if futures is None:
                    if env is not None:
                        self.stats.filtered += 1
                else:
                    self.stats.acked += 1
                    self.stats.published += len(futures)
                    if env is not None and env.item_dead_letters and self.count_item_dead_letters is not None:
                        self.count_item_dead_letters(env.item_dead_letters)
            else:
                self.stats.failed += 1
                await self.failures.handle(msg, err, getattr(env, "msg_id", None),
                                           getattr(env, "correlation_id", None))
        except Exception as exc:  # connection gone: JetStream will redeliver after ack_wait
            self.log.warning("settle_failed", error=repr(exc))
        finally:
            self.feed.release(msg)
            self.probe.end(msg, futures, err)
        return marked

def _unconfirmed(futures: list[Any], env: Envelope) -> HubError | None:
    """Why an output was not stored, or None. A subject no stream captures cannot succeed by
    waiting (a payload-made subject outside the config): that is permanent and says which."""
    for f, (subject, _, _) in zip(futures, env.outputs):
        if f.cancelled():
            return PublishFailed(f"{subject}: no publish ack in time", step="publish")
        exc = f.exception()
        if isinstance(exc, NoStreamResponseError):
            return RoutingError(f"no stream captures {subject!r} (the subject came from the payload); "
                                "add it to a stream in config or fix the payload", step="publish")
        if exc is not None:
            return PublishFailed(f"{subject}: output not confirmed: {exc!r}", step="publish")
    return None
