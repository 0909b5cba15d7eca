"""A runner's operations surface, wired into the Hub: probes on every flow, metrics, health, traces
and its answer to `runner.py status`.

The Hub makes one `Operations` and calls `attach(runner)` for each flow runner before it starts
(the probe, the pipeline's timed steps and, once, the adapters' timed calls), `start()` once every
flow runs (the ops listener, the status subject, the rate meter) and `stop()` first when it stops.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import uuid
from collections import deque
from typing import Any

import structlog

from engine.errors import ConfigError
from engine.health import OpsServer, liveness, nats_state, readiness
from engine.metrics import StoreSnapshot, consuming, in_flight, registry_for
from engine.probes import EndpointMeter, FlowProbe, instrument_adapter, instrument_pipeline
from engine.tasks import cancel_and_wait
from engine.tracing import HubTracer

log = structlog.get_logger("hub.ops")

RATE_EVERY = 5.0     # s between samples of the counters behind the rates in `status`
RATE_WINDOW = 13     # samples kept: rates over the last minute
SHUTDOWN_TIMEOUT = 5.0  # s the last spans may take to export at stop


class RateMeter:
    """Done and failed messages per flow over the last minute, from counters sampled every RATE_EVERY."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, dict[str, tuple[int, int]]]] = deque(maxlen=RATE_WINDOW)

    def sample(self, runners: dict[str, Any], now: float) -> None:
        self.samples.append((now, {name: (r.stats.acked + r.stats.filtered + r.stats.skipped, r.stats.failed)
                                   for name, r in runners.items()}))

    def rates(self, flow: str) -> tuple[float, float]:
        """(messages settled per second, failures per minute); zeros until two samples exist."""
        if len(self.samples) < 2:
            return 0.0, 0.0
        (t0, first), (t1, last) = self.samples[0], self.samples[-1]
        if t1 <= t0 or flow not in first or flow not in last:
            return 0.0, 0.0
        span = t1 - t0
        return (last[flow][0] - first[flow][0]) / span, (last[flow][1] - first[flow][1]) / span * 60


class Operations:
    def __init__(self, hub: Any) -> None:
        self.hub = hub
        self.config = hub.project.config.ops
        self.runner_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        # made now, before the Hub binds its KV buckets: once a tracer exists they report their operations
        self.tracer: HubTracer | None = _tracer_from(self.config.tracing, self.runner_id)
        self.probes: dict[str, FlowProbe] = {}
        self.endpoints: dict[str, EndpointMeter] = {}
        self.store = StoreSnapshot(hub)
        self.registry = registry_for(self)
        self.rates = RateMeter()
        self.server: OpsServer | None = None
        self.started_at: float | None = None
        self._status_sub: Any = None
        self._rate_task: asyncio.Task[None] | None = None

    def trace_to(self, exporter: Any, *, sample_ratio: float = 1.0, batch: bool = False) -> HubTracer:
        """Record traces into `exporter` (tests: the SDK's InMemorySpanExporter) instead of config's OTLP.
        Call it before the Hub starts."""
        if self.tracer is not None:
            self.tracer.shutdown()
        self.tracer = HubTracer.exporting(exporter, sample_ratio=sample_ratio, runner_id=self.runner_id, batch=batch)
        return self.tracer

    def attach(self, runner: Any) -> None:
        """Before the runner starts: its probe, its pipeline's timed steps, and (once) every adapter's calls."""
        for name, adapter in self.hub.adapters.items():
            if name not in self.endpoints:
                self.endpoints[name] = EndpointMeter(name, adapter)
                instrument_adapter(adapter, self.endpoints[name])
        tracer = self.tracer.for_flow(runner.flow.name) if self.tracer is not None else None
        probe = FlowProbe(runner.flow.name, tracer, calls=runner.pipeline.is_async)
        instrument_pipeline(runner.pipeline, probe)
        runner.probe = probe
        self.probes[runner.flow.name] = probe

    async def start(self) -> None:
        self.started_at = time.monotonic()
        http = self.config.http
        if http.port is not None:
            self.server = OpsServer(self, http.host, http.port)
            await self.server.start()
        self._status_sub = await self.hub.nc.subscribe(self.config.status_subject, cb=self._answer_status)
        self._rate_task = asyncio.create_task(self._sample_rates(), name="ops:rates")

    async def stop(self) -> None:
        """After the flows stopped (their last spans ended); never raises: the Hub's stop goes on."""
        await cancel_and_wait([self._rate_task])
        self._rate_task = None
        sub, self._status_sub = self._status_sub, None
        server, self.server = self.server, None
        tracer, self.tracer = self.tracer, None
        try:
            if sub is not None and not self.hub.nc.is_closed:
                await sub.unsubscribe()
            if server is not None:
                await server.stop()
            if tracer is not None:  # exports what is buffered: bounded, a collector may be away
                await asyncio.wait_for(asyncio.to_thread(tracer.shutdown), SHUTDOWN_TIMEOUT)
        except Exception as exc:
            log.warning("ops_stop_failed", error=repr(exc))

    async def _sample_rates(self) -> None:
        while True:
            self.rates.sample(self.hub.runners, time.monotonic())
            await asyncio.sleep(RATE_EVERY)

    # --- what `runner.py status` asks every runner -----------------------------------------------

    def report(self) -> dict[str, Any]:
        """This runner's own view: what only it knows (its counters, rates, readiness)."""
        hub = self.hub
        ready, checks = readiness(hub)
        flows = {}
        for name, runner in hub.runners.items():
            s = runner.stats
            rate, errors = self.rates.rates(name)
            failures = getattr(runner, "failures", None)
            flows[name] = {"received": s.received, "done": s.acked, "filtered": s.filtered, "duplicates": s.skipped,
                           "failed": s.failed, "dead_lettered": failures.dead_lettered if failures else 0,
                           "in_flight": in_flight(runner), "consuming": consuming(runner),
                           "rate_per_s": round(rate, 3), "errors_per_min": round(errors, 3)}
        endpoints = {name: {"state": b.state, "reason": b.reason}
                     for name, b in getattr(hub, "endpoint_breakers", {}).items() if name in hub.adapters}
        return {"runner": self.runner_id, "host": socket.gethostname(), "pid": os.getpid(),
                "uptime_s": round(time.monotonic() - (self.started_at or time.monotonic()), 1),
                "ready": ready, "checks": checks["checks"], "alive": liveness(hub)[0], "nats": nats_state(hub),
                "ops_url": self.server.url if self.server is not None else None,
                "tracing": None if self.tracer is None else {"sample_ratio": self.tracer.sample_ratio},
                "flows": flows, "endpoints": endpoints}

    async def _answer_status(self, msg: Any) -> None:
        if not msg.reply:
            return
        try:
            await self.hub.nc.publish(msg.reply, json.dumps(self.report()).encode())
        except Exception as exc:
            log.warning("status_reply_failed", error=repr(exc))


def _tracer_from(config: Any, runner_id: str) -> HubTracer | None:
    try:
        return HubTracer.from_config(config, runner_id)
    except LookupError as exc:  # a header's secret reference that does not resolve
        raise ConfigError([f"ops.tracing.otlp_headers: {exc}"]) from exc
