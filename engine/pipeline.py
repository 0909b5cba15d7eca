"""A flow's steps compiled once into plain callables, so the hot path does no lookups.

Pure steps (filter, validate, transform, publish, reply) run synchronously; a flow without `call`
steps never awaits per message until it publishes. Publishes are collected on the envelope and
sent by the executor, so nothing leaves the flow unless every step succeeded.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import jmespath
from pydantic import BaseModel, ValidationError

from engine.adapter import Adapter, CallContext
import structlog

from engine.errors import (HubError, NotYet, OutcomeUnknown, RoutingError, SlotsBusy, TransformFailed, ValidationFailed,
                           VerifyPending, classify)
from engine.failures import note_attempt
from engine.messages import Envelope, encode, output_headers
from engine.outcomes import NOT_DONE, Verifier, keep, known_outcome, needs_verdict, remembered, unknown_outcome, verdict
from engine.nats_client import encode_headers
from engine.breaker import Breaker
from engine.clock import SYSTEM, Clock
from engine.fallback import FallbackCache
from engine.item_outcomes import ItemOutcomes
from engine.resilience import CallGuard
from engine.spec import (CallStep, FilterStep, Flow, PublishSpec, PublishStep, PullStep, ReplyStep, StateStep,
                         TransformStep, UntilSpec, UntilStep, ValidateStep)
from engine.subjects import placeholders, render, subject_problem
from engine.validation import endpoint_candidates, resolve_schema, resolve_transform
from engine.yaml_lines import format_loc

SyncStep = Callable[[Envelope], bool]
log = structlog.get_logger("hub.call")


def endpoint_slots(adapter: Adapter) -> asyncio.Semaphore | None:
    """The endpoint's `max_concurrency` as one semaphore per adapter (every flow of this runner shares it);
    None when the adapter keeps the limit itself (it knows when the target's work really ends)."""
    limit = getattr(adapter.config, "max_concurrency", None)
    if limit is None or adapter.limits_itself:
        return None
    slots = getattr(adapter, "_hub_slots", None)
    if slots is None:
        slots = adapter._hub_slots = asyncio.Semaphore(limit)  # type: ignore[attr-defined]
    return slots


def _validator(model: type[BaseModel], label: str) -> SyncStep:
    validate = model.model_validate

    def run(env: Envelope) -> bool:
        try:
            validate(env.payload)
        except ValidationError as exc:
            details = "; ".join(f"{format_loc(tuple(e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)[:5])
            raise ValidationFailed(f"{model.__name__}: {details}", step=label) from None
        return True

    return run


def _filter(expression: str, label: str) -> SyncStep:
    search = jmespath.compile(expression).search

    def run(env: Envelope) -> bool:
        return bool(search(env.payload))

    return run


def _transform(ref: str, label: str) -> SyncStep:
    func = resolve_transform(ref)

    def run(env: Envelope) -> bool:
        try:
            env.payload = func(env.payload)
            env.raw = None
        except HubError:
            raise
        except KeyError as exc:
            raise TransformFailed(f"{ref}: payload has no field {exc}", step=label) from None
        except Exception as exc:  # a transform bug must not crash the runner
            raise TransformFailed(f"{ref}: {type(exc).__name__}: {exc}", step=label) from None
        return True

    return run


def _publish(spec: PublishSpec, flow: str, index: int, label: str,
             captured: Callable[[str], bool] | None = None) -> SyncStep:
    template, identity = spec.subject, spec.id
    templated = bool(placeholders(template))

    def one(env: Envelope, payload: Any, raw: bytes | None) -> None:
        subject = template
        if templated:
            try:
                subject = render(template, payload)
            except KeyError as exc:
                raise RoutingError(f"subject {template!r} needs payload field {exc}", step=label) from None
            # the connection skips nats-py's per-publish subject check: static subjects were checked
            # at validation, rendered ones are checked here
            if problem := subject_problem(subject):
                raise RoutingError(f"subject {template!r} rendered from the payload is not valid: {problem}",
                                   step=label)
            # whether a stream captures it is config's answer, not a runtime error's: a publish that
            # JetStream does not confirm is the broker's outage (engine/executor.py)
            if captured is not None and not captured(subject):
                raise RoutingError(f"no stream captures {subject!r} (rendered from {template!r}; config's streams decide); "
                                   "add it to a stream in config or fix the payload", step=label)
        ident = None
        if identity is not None:
            try:
                ident = render(identity, payload, lower=False)
            except KeyError as exc:
                raise RoutingError(f"id {identity!r} needs payload field {exc}", step=label) from None
        data = raw if raw is not None else encode(payload)
        headers = output_headers(env, flow, index, subject, ident)
        if raw is not None and env.claim is not None:  # the payload unchanged: pass the reference on, not the bytes
            data = b""
            headers.update(env.claim)
            headers["content-type"] = env.headers.get("content-type", headers["content-type"])
        env.outputs.append((subject, data, encode_headers(headers)))

    def run(env: Envelope) -> bool:
        if not spec.each:
            one(env, env.payload, env.raw)
            return True
        if not isinstance(env.payload, list):
            raise RoutingError(f"`publish: {{each: true}}` needs a list payload, got {type(env.payload).__name__}",
                               step=label)
        if identity is None and len(env.payload) > 1:
            raise RoutingError("`each: true` with several elements needs an `id` template (one id per element)",
                               step=label)
        for item in env.payload:
            one(env, item, None)
        return True

    return run


def _until(spec: UntilSpec, label: str) -> SyncStep:
    done = jmespath.compile(spec.done).search
    track = spec.track

    def run(env: Envelope) -> bool:
        if track:
            try:
                env.wait_key = render(track, env.payload, lower=False)
            except KeyError as exc:
                raise RoutingError(f"track key {track!r} needs payload field {exc}", step=label) from None
        else:
            env.wait_key = env.msg_id
        if done(env.payload):
            return True
        raise NotYet(spec, step=label)

    return run


def _reply(env: Envelope) -> bool:
    env.reply = encode(env.payload)
    return True


class Pipeline:
    """The compiled steps of one flow. `run_sync` serves flows without calls; `run` all flows."""

    def __init__(self, flow: Flow, adapters: dict[str, Adapter], guard: CallGuard | None = None,
                 breakers: dict[str, Breaker] | None = None, fallback: FallbackCache | None = None,
                 js: Any = None, publish_timeout: float = 10.0, clock: Clock = SYSTEM,
                 captured: Callable[[str], bool] | None = None) -> None:
        """`captured(subject)`: whether a configured stream captures a subject rendered from a payload."""
        from engine.keyed_state import KeyedState
        from engine.paged_pull import PagedPull

        self.flow = flow
        self.clock = clock  # the hub's: pull runs, waits and failure times read it (engine/clock.py)
        self.publish_timeout = publish_timeout
        self._refresh: dict[str, Any] = {}  # call label -> compiled `refresh_when`
        self._verifiers: dict[str, Verifier] = {}  # call label -> compiled `verify`
        self.steps: list[tuple[str, SyncStep | None, Any]] = []
        if flow.schema_:
            self.steps.append(("schema", _validator(resolve_schema(flow.schema_), "schema"), None))
        for i, step in enumerate(flow.steps):
            label = f"steps[{i}]"
            if isinstance(step, FilterStep):
                self.steps.append((label + ".filter", _filter(step.filter, label), None))
            elif isinstance(step, ValidateStep):
                self.steps.append((label + ".validate", _validator(resolve_schema(step.validate_), label), None))
            elif isinstance(step, TransformStep):
                self.steps.append((label + ".transform", _transform(step.transform, label), None))
            elif isinstance(step, PublishStep):
                self.steps.append((label + ".publish", _publish(step.publish, flow.name, i, label,
                                                                 _cached(captured)), None))
            elif isinstance(step, ReplyStep):
                self.steps.append((label + ".reply", _reply, None))
            elif isinstance(step, UntilStep):
                self.steps.append((label + ".until", _until(step.until, label), None))
            elif isinstance(step, CallStep):
                self.steps.append((label + ".call", None, step))
                if step.call.fallback is not None and step.call.fallback.refresh_when:
                    self._refresh[label + ".call"] = jmespath.compile(step.call.fallback.refresh_when).search
                if step.call.verify is not None:
                    self._verifiers[label + ".call"] = Verifier(step.call.verify)
            elif isinstance(step, PullStep):
                self.steps.append((label + ".pull", None, PagedPull(step.pull, self, js, label)))
            elif isinstance(step, StateStep):
                self.steps.append((label + ".state", None, KeyedState(step.state, js, label)))
        self.adapters = adapters
        self.guard = guard or CallGuard(flow)
        self.breakers = breakers or {}
        self.fallback = fallback
        self.is_async = any(call is not None for _, _, call in self.steps)
        # a call of this flow may be a non-idempotent operation: a redelivery first reads what earlier
        # deliveries learnt about it (engine/outcomes.py)
        self.has_unsafe_calls = any(
            not adapters[name].config.is_idempotent(s.call.operation)
            for s in flow.steps if isinstance(s, CallStep)
            for name in endpoint_candidates(s.call.endpoint, list(adapters)))
        self.call_count = 0        # for the latency alert: calls made and the seconds they took
        self.call_seconds = 0.0
        self.calls_endpoints = [s.call.endpoint if isinstance(s, CallStep) else s.pull.endpoint
                                for s in flow.steps if isinstance(s, (CallStep, PullStep))]
        self.waits = [s.until for s in flow.steps if isinstance(s, UntilStep)]
        # the endpoint a message needs first, when it does not depend on the payload: while its
        # circuit is open the flow stops pulling (engine/executor.py)
        self.first_endpoint = next((e for e in self.calls_endpoints), None)
        if self.first_endpoint and placeholders(self.first_endpoint):
            self.first_endpoint = None
        # a flow of static publishes only (a router) never needs the payload parsed
        self.reads_payload = bool(flow.schema_) or any(
            not isinstance(step, PublishStep) or placeholders(step.publish.subject) for step in flow.steps)

    def run_sync(self, env: Envelope) -> bool:
        """Run pure steps; False means a filter dropped the message. Only for flows without calls."""
        for label, func, _ in self.steps:
            try:
                if not func(env):  # type: ignore[misc]
                    return False
            except HubError as exc:
                exc.step = exc.step or label
                raise
        return True

    async def run(self, env: Envelope) -> bool:
        for label, func, call in self.steps:
            try:
                if func is not None:
                    if not func(env):
                        return False
                elif isinstance(call, CallStep):
                    await self._call(env, call, label)
                elif await call.run(env) is False:
                    return False
            except HubError as exc:
                exc.step = exc.step or label
                raise
            except Exception as exc:
                err = classify(exc)
                err.step = label
                raise err from exc
        return True

    async def call_endpoint(self, env: Envelope, template: str, operation: str | None, timeout: float | None,
                            body: Any, idem_key: str | None = None, label: str | None = None) -> Any:
        """One guarded call: endpoint from the template, the flow's retries, the endpoint's breaker.
        Raises a HubError that names the endpoint. A non-idempotent operation whose request may have
        reached the target is not resent blindly: the step's `verify` (by `label`) decides, or
        OutcomeUnknown (engine/outcomes.py)."""
        try:
            name = render(template, env.payload)
        except KeyError as exc:
            raise RoutingError(f"endpoint {template!r} needs payload field {exc}") from None
        adapter = self.adapters.get(name)
        if adapter is None:
            raise RoutingError(f"endpoint {template!r} resolved to {name!r}, which config does not define")
        timeout = timeout or getattr(adapter.config, "timeout", None) or 30.0
        # targets see the idempotency key (a replay keeps it) where adapters pass one on
        ctx = CallContext(env.headers, idem_key or env.idem_key or env.msg_id, env.correlation_id, timeout)
        breaker = self.breakers.get(name)
        slots = endpoint_slots(adapter)
        msg_key = env.msg_id
        unsafe = self.has_unsafe_calls and not adapter.config.is_idempotent(operation)

        async def through_breaker(op: str | None, payload: Any, seconds: float) -> Any:
            # the wait for a local slot is ours, not the target's: it stays outside the breaker, so a
            # queue in this runner never opens the circuit of a target that answers every call
            call_ctx = ctx if op == operation else CallContext(env.headers, ctx.msg_id, env.correlation_id, seconds)
            waited = time.monotonic()
            if slots is not None:
                try:
                    await asyncio.wait_for(slots.acquire(), seconds)
                except TimeoutError:
                    raise SlotsBusy(f"{name}: all {adapter.config.max_concurrency} call slots busy for "
                                    f"{seconds:.1f}s") from None
                call_ctx.timeout = max(0.05, seconds - (time.monotonic() - waited))  # the wait is part of the deadline

            def once() -> Any:
                return adapter.call(op, payload, call_ctx)  # adapters enforce ctx.timeout

            try:
                return await (breaker.call(once, msg_key) if breaker is not None else once())
            finally:
                if slots is not None:
                    slots.release()

        def record(err: HubError, number: int = 0) -> None:
            note_attempt(env, label, name, operation, err, self.clock)

        def attempt() -> Any:  # the coroutine itself: no extra frame on the hot path
            return through_breaker(operation, body, timeout)

        async def unsafe_attempt() -> Any:
            try:
                return await through_breaker(operation, body, timeout)
            except HubError as exc:
                if not needs_verdict(exc, unsafe):
                    raise  # answered, or nothing was sent: retried (or not) as any call
                where = f"{name}: {operation or 'call'}"
                verifier = self._verifiers.get(label or "")
                if verifier is None:
                    raise unknown_outcome(where, exc, key=ctx.msg_id) from exc
                record(exc)  # the lost create is an attempt of its own; the verdict follows
                return await self._verdict(verifier, through_breaker, env, body, where, exc, ctx.msg_id, timeout)

        started = time.monotonic()
        try:
            return await self.guard.call(name, unsafe_attempt if unsafe else attempt, record, env.msg_id, label)
        except HubError as exc:
            exc.endpoint = name
            raise
        finally:
            self.call_count += 1
            self.call_seconds += time.monotonic() - started

    async def _verdict(self, verifier: Verifier, through_breaker: Any, env: Envelope, body: Any, where: str,
                       cause: HubError, key: str, timeout: float) -> Any:
        """After a lost answer: the verify's answer when the call took effect; the cause (now known
        safe to resend) when it did not; VerifyPending when nobody can tell yet."""
        answer = await verdict(verifier, lambda op, payload, seconds: through_breaker(op, payload, seconds),
                               env, body, where, key, timeout, flow=self.flow.name)
        if answer is NOT_DONE:
            cause.sent = False  # verified: it did not happen, so it may be sent again
            raise cause
        return answer

    async def _call(self, env: Envelope, step: CallStep, label: str) -> None:
        spec = step.call
        body = env.payload
        if spec.input:
            if not isinstance(body, dict) or spec.input not in body:
                raise RoutingError(f"`input: {spec.input}` needs that key in the payload")
            body = body[spec.input]
        if env.prior is not None and label in env.prior:  # an earlier delivery's non-idempotent call
            self._store(env, spec.into, await known_outcome(self, env, spec, label, body))
            return
        cache = spec.fallback if self.fallback is not None else None
        result: Any = None
        shared = cache is not None and cache.fresh is not None  # answers reused: one call per key at a time
        refresh = bool(shared and cache.refresh_when and self._refresh[label](env.payload))  # type: ignore[union-attr]
        if shared and not refresh:
            result = await self.fallback.fresh_answer(render(spec.endpoint, env.payload), cache,  # type: ignore[union-attr]
                                                      env.payload)
        if result is None:
            try:
                if shared:
                    result = await self.fallback.once(  # type: ignore[union-attr]
                        render(spec.endpoint, env.payload), cache, env.payload, refresh=refresh,  # type: ignore[arg-type]
                        call=lambda: self.call_endpoint(env, spec.endpoint, spec.operation, spec.timeout, body))
                else:
                    result = await self.call_endpoint(env, spec.endpoint, spec.operation, spec.timeout, body,
                                                      label=label)
                    if self.has_unsafe_calls and self._unsafe(env, spec):
                        keep(env, label, remembered(result))  # a later failure must not send it again
            except HubError as exc:
                if isinstance(exc, VerifyPending | OutcomeUnknown):
                    keep(env, label, {"unknown": str(exc)[:300]})
                if cache is not None and exc.transient:
                    result = await self.fallback.stale_answer(exc.endpoint or spec.endpoint, cache,  # type: ignore[union-attr]
                                                              env.payload, exc)
                elif spec.capture_errors and not exc.transient and not isinstance(exc, OutcomeUnknown):
                    result = {"error": {"class": exc.error_class, "message": str(exc)}}
                else:
                    raise
            else:
                if cache is not None and not shared:
                    await self.fallback.remember(render(spec.endpoint, env.payload), cache, env.payload, result)  # type: ignore[union-attr]
        if isinstance(result, ItemOutcomes):  # per-item outcomes of a batch call: dead letters, retries
            result = result.settle(env, label)
        self._store(env, spec.into, result)

    @staticmethod
    def _store(env: Envelope, into: str | None, result: Any) -> None:
        if into:
            if not isinstance(env.payload, dict):
                raise RoutingError(f"`into: {into}` needs an object payload")
            env.payload = {**env.payload, into: result}
            env.raw = None
        elif result is not None:
            env.payload = result
            env.raw = None

    def _unsafe(self, env: Envelope, spec: Any) -> bool:
        adapter = self.adapters.get(render(spec.endpoint, env.payload))
        return adapter is not None and not adapter.config.is_idempotent(spec.operation)


def _cached(captured: Callable[[str], bool] | None) -> Callable[[str], bool] | None:
    """`captured` with a bounded memory: rendered subjects repeat (one per country, per meter vendor)."""
    if captured is None:
        return None
    seen: dict[str, bool] = {}

    def check(subject: str) -> bool:
        answer = seen.get(subject)
        if answer is None:
            if len(seen) > 10_000:
                seen.clear()
            answer = seen[subject] = captured(subject)
        return answer

    return check
