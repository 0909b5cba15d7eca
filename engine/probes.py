"""The per-message hooks behind metrics and traces, kept to plain counters on the hot path.

A flow runner calls `probe.begin(msg)` when it starts a message and `probe.end(msg, futures, err)`
once the message is settled (acked, handed back, redelivered, dead-lettered); `NO_PROBE` does
nothing, so a runner outside a Hub (a benchmark) pays two empty calls. The compiled steps of a
pipeline and each adapter's `call` are wrapped here rather than edited: a timer per step, a timer
and an in-flight count per outside call, and a child span of the message's span when its trace is
recorded. Everything lands in `LocalHistogram`s and integers that engine/metrics.py reads at scrape
time: no lock and no label lookup per message (one event loop, one thread).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter
from contextvars import ContextVar
from typing import Any, Callable

from engine.errors import NotYet
from engine.trace_context import CURRENT

_now = time.perf_counter
FLOW: ContextVar[Any] = ContextVar("hub_flow_probe", default=None)  # the flow whose message this task runs

# seconds; a message of a call flow may take retries and a breaker's wait, a pure one a millisecond
MESSAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                   60.0, 300.0)
CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class LocalHistogram:
    """Bucket counts and a sum, observed without a lock; exposed as a Prometheus histogram."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1  # bucket i holds bounds[i-1] < v <= bounds[i]
        self.sum += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, observations <= le) pairs, +Inf last: what HistogramMetricFamily takes."""
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return out


def outcome(futures: Any, err: BaseException | None) -> str:
    if err is None:
        return "filtered" if futures is None else "done"
    return "waiting" if isinstance(err, NotYet) else "failed"


class NullProbe:
    __slots__ = ()

    def begin(self, msg: Any) -> None:
        pass

    def end(self, msg: Any, futures: Any = None, err: BaseException | None = None) -> None:
        pass


NO_PROBE = NullProbe()


class FlowProbe:
    """One flow's timings in this runner, and the spans of its recorded messages."""

    __slots__ = ("flow", "tracer", "duration", "steps", "call_attempts", "_calls", "_started", "_spans")

    def __init__(self, flow: str, tracer: Any = None, calls: bool = False) -> None:
        self.flow = flow
        self.tracer = tracer  # engine.tracing.HubTracer, or None: no traces
        self.duration = LocalHistogram(MESSAGE_BUCKETS)
        self.steps: dict[str, LocalHistogram] = {}
        self.call_attempts = 0   # tries of outside calls, first ones and in-process retries
        self._calls = calls      # only flows with calls need FLOW set (attempts are counted per flow)
        self._started: dict[int, float] = {}
        self._spans: dict[int, Any] = {}

    def begin(self, msg: Any) -> None:
        self._started[id(msg)] = _now()
        if self._calls:
            FLOW.set(self)
        if self.tracer is not None:
            headers = msg.headers
            value = headers.get("traceparent") if headers else None
            # the tracer's cheap test inlined (most messages of a busy hub are not recorded)
            span = None if value is not None and len(value) == 55 and value[2] == "-" and \
                value[19:35] >= self.tracer.bound_hex else self.tracer.message_span(self.flow, msg)
            if span is not None:
                self._spans[id(msg)] = span
                CURRENT.set(span)
            elif CURRENT.get() is not None:
                CURRENT.set(None)  # the previous message's span must not adopt this one's work

    def end(self, msg: Any, futures: Any = None, err: BaseException | None = None) -> None:
        started = self._started.pop(id(msg), None)
        if started is not None:
            elapsed = _now() - started
            h = self.duration
            h.counts[bisect_left(h.bounds, elapsed)] += 1
            h.sum += elapsed
        if self._spans:
            span = self._spans.pop(id(msg), None)
            if span is not None:
                from engine.tracing import finish_message

                finish_message(span, outcome(futures, err), err)
                if CURRENT.get() is span:  # a worker's next message must not start inside this one
                    CURRENT.set(None)

    def step(self, label: str) -> LocalHistogram:
        return self.steps.setdefault(label, LocalHistogram(MESSAGE_BUCKETS))


# --- steps ---------------------------------------------------------------------------------------

def _span_kind(label: str) -> str:
    return "producer" if label.endswith(".publish") else "internal"


def _timed_sync(func: Callable[[Any], bool], hist: LocalHistogram, label: str) -> Callable[[Any], bool]:
    observe, counts, bounds = hist.observe, hist.counts, hist.bounds
    kind = _span_kind(label)
    current, now, bucket = CURRENT.get, _now, bisect_left

    def run(env: Any) -> bool:
        if current() is not None:
            return _traced_sync(func, env, current(), observe, label, kind)
        started = now()
        try:
            return func(env)
        finally:
            elapsed = now() - started  # LocalHistogram.observe, inlined: this runs per step per message
            counts[bucket(bounds, elapsed)] += 1
            hist.sum += elapsed

    return run


def _traced_sync(func: Callable[[Any], bool], env: Any, parent: Any, observe: Callable[[float], None],
                 label: str, kind: str) -> bool:
    span = parent.child(label, kind)  # the name is the step; its parent names the flow
    token = CURRENT.set(span)  # a publish step's outputs name this span as their parent
    started = _now()
    try:
        return func(env)
    except BaseException as exc:
        span.fail(exc)
        raise
    finally:
        observe(_now() - started)
        CURRENT.reset(token)
        span.end()


class TimedStep:
    """An I/O step (`call`, `pull`, `state`) as the pipeline runs it, timed and traced."""

    def __init__(self, pipeline: Any, inner: Any, label: str, hist: LocalHistogram) -> None:
        from engine.spec import CallStep

        self.label, self.hist = label, hist
        if isinstance(inner, CallStep):  # the pipeline runs a call itself (returns None: go on)
            self.step = lambda env: pipeline._call(env, inner, label)
        else:
            self.step = inner.run

    async def run(self, env: Any) -> Any:
        if CURRENT.get() is not None:
            return await self._traced(env)
        hist = self.hist
        started = _now()
        try:
            return await self.step(env)
        finally:
            elapsed = _now() - started  # LocalHistogram.observe, inlined (per I/O step per message)
            hist.counts[bisect_left(hist.bounds, elapsed)] += 1
            hist.sum += elapsed

    async def _traced(self, env: Any) -> Any:
        span = CURRENT.get().child(self.label, "internal")
        token = CURRENT.set(span)
        started = _now()
        try:
            return await self.step(env)
        except BaseException as exc:
            span.fail(exc)
            raise
        finally:
            self.hist.observe(_now() - started)
            CURRENT.reset(token)
            span.end()


def instrument_pipeline(pipeline: Any, probe: FlowProbe) -> None:
    """Wrap every compiled step of `pipeline` (engine/pipeline.py keeps them as (label, sync
    function or None, I/O step) triples) so it reports its time and span to `probe`."""
    wrapped = []
    for entry in pipeline.steps:
        if not (isinstance(entry, tuple) and len(entry) == 3):
            raise RuntimeError("engine/probes.py: Pipeline.steps are no longer (label, func, step) triples; "
                               "update instrument_pipeline")
        label, func, step = entry
        hist = probe.step(label)
        if func is not None:
            wrapped.append((label, _timed_sync(func, hist, label), step))
        else:
            wrapped.append((label, None, TimedStep(pipeline, step, label, hist)))
    pipeline.steps = wrapped


# --- outside calls ---------------------------------------------------------------------------------

class EndpointMeter:
    """One endpoint's calls in this runner: latency per operation, errors per class, calls in flight."""

    def __init__(self, endpoint: str, adapter: Any) -> None:
        self.endpoint = endpoint
        self.adapter = adapter
        self.in_flight = 0
        self.latency: dict[str, LocalHistogram] = {}
        self.errors: Counter[tuple[str, str]] = Counter()

    def slots(self) -> tuple[int, int] | None:
        """(busy, limit) of the endpoint's `max_concurrency` in this runner, or None without one."""
        limit = getattr(self.adapter.config, "max_concurrency", None)
        if not limit:
            return None
        busy = getattr(self.adapter, "busy", None)  # an adapter that keeps its own slots says how many
        if busy is None:
            sem = getattr(self.adapter, "_hub_slots", None)  # engine/pipeline.endpoint_slots
            busy = limit - sem._value if sem is not None else 0
        return int(busy), int(limit)


def instrument_adapter(adapter: Any, meter: EndpointMeter) -> None:
    """Wrap the adapter's `call` (the adapter contract's one entry point) with the meter and a client span."""
    inner = adapter.call
    endpoint = meter.endpoint
    protocol = getattr(adapter, "name", "")
    latency, errors = meter.latency, meter.errors

    async def traced(operation: str | None, payload: Any, ctx: Any, op: str, parent: Any) -> Any:
        span = parent.child(f"{endpoint} {op}".rstrip(), "client",
                            {"hub.endpoint": endpoint, "hub.operation": op, "hub.protocol": protocol})
        ctx.headers = {**(ctx.headers or {}), "traceparent": span.traceparent}  # the target joins the trace
        try:
            return await inner(operation, payload, ctx)
        except BaseException as exc:
            span.fail(exc)
            raise
        finally:
            span.end()

    async def call(operation: str | None, payload: Any, ctx: Any) -> Any:
        op = operation or ""
        hist = latency.get(op)
        if hist is None:
            hist = latency[op] = LocalHistogram(CALL_BUCKETS)
        flow = FLOW.get()
        if flow is not None:
            flow.call_attempts += 1
        parent = CURRENT.get()
        meter.in_flight += 1
        started = _now()
        try:
            if parent is None:
                return await inner(operation, payload, ctx)
            return await traced(operation, payload, ctx, op, parent)
        except Exception as exc:
            errors[(op, getattr(exc, "error_class", None) or type(exc).__name__)] += 1
            raise
        finally:
            meter.in_flight -= 1
            elapsed = _now() - started
            hist.counts[bisect_left(hist.bounds, elapsed)] += 1
            hist.sum += elapsed

    adapter.call = call
