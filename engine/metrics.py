"""Prometheus metrics of one runner, collected at scrape time from what the engine already counts.

Nothing here runs per message: a custom collector reads the flow runners' FlowStats, the failure
handlers, the pipelines' call counts, the probes' histograms (engine/probes.py), the breakers and
the ingresses when Prometheus scrapes, and the store's view (backlog, lag, dead letters, waits:
engine/store_view.py) is refreshed by the scrape itself, at most every STORE_MAX_AGE seconds.

Names follow Prometheus conventions: `hub_` prefix, base units (`_seconds`, `_bytes`), `_total` on
counters, and labels with bounded values only (flow, step, endpoint, operation, error class, state;
never a message id). JetStream gauges are the same from every runner: aggregate them with max().
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Iterator

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.store_view import Backlog, consumer_backlog, dead_letter_depths, flow_sources, pending_waits, wait_ages

STORE_MAX_AGE = 2.0     # s: scrapes closer together than this share one read of the store
WAITS_MAX_AGE = 15.0    # s: the pending waits are a scan of a KV bucket: read less often
STORE_TIMEOUT = 2.0     # s: a scrape never waits longer than this for the store
BREAKER_STATES = ("closed", "open", "half_open")

# name -> (type, help, labels): the one list of what a runner exposes (docs and the dashboard use it)
CATALOGUE: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "hub_flow_messages_received_total": ("counter", "Deliveries of the flow's messages to this runner (a redelivery counts again).", ("flow",)),
    "hub_flow_messages_done_total": ("counter", "Messages done: every step ran, outputs confirmed, acknowledged.", ("flow",)),
    "hub_flow_messages_filtered_total": ("counter", "Messages a filter dropped (acknowledged, nothing published).", ("flow",)),
    "hub_flow_messages_duplicate_total": ("counter", "Messages skipped because their effect was already done (idempotency key).", ("flow",)),
    "hub_flow_messages_published_total": ("counter", "Messages the flow published, confirmed by JetStream.", ("flow",)),
    "hub_flow_message_failures_total": ("counter", "Deliveries whose steps failed, whatever came next (retry later, outage wait, DLQ).", ("flow",)),
    "hub_flow_messages_waited_total": ("counter", "Deliveries handed back to wait: an `until` check found it not done, or a circuit was open.", ("flow", "reason")),
    "hub_flow_redeliveries_total": ("counter", "Failed deliveries given back to JetStream for a later attempt (the redeliver schedule).", ("flow",)),
    "hub_flow_dead_letters_total": ("counter", "Messages this runner dead-lettered, by error class.", ("flow", "error_class")),
    "hub_flow_calls_total": ("counter", "Calls the flow's steps made, each with its in-process retries.", ("flow",)),
    "hub_flow_call_attempts_total": ("counter", "Tries of outside calls: first tries plus in-process retries.", ("flow",)),
    "hub_flow_in_flight_messages": ("gauge", "Messages this runner holds for the flow and has not settled.", ("flow",)),
    "hub_flow_consuming": ("gauge", "1 while the flow takes messages in this runner (its pull or subscription is live).", ("flow",)),
    "hub_flow_message_duration_seconds": ("histogram", "From the start of a message's steps to its settlement (ack, redelivery, DLQ), in this runner.", ("flow",)),
    "hub_flow_step_duration_seconds": ("histogram", "Time of one step of a flow (steps[i].kind; `schema` is the source check).", ("flow", "step")),
    "hub_consumer_pending_messages": ("gauge", "Messages in the stream the flow's consumer has not delivered yet.", ("flow",)),
    "hub_consumer_ack_pending_messages": ("gauge", "Messages delivered to the flow and not acknowledged yet (in work or waiting to come back).", ("flow",)),
    "hub_consumer_redelivered_messages": ("gauge", "Unacknowledged messages delivered more than once.", ("flow",)),
    "hub_consumer_lag_seconds": ("gauge", "Age of the oldest message the flow has not acknowledged (server clock).", ("flow",)),
    "hub_dead_letter_messages": ("gauge", "Records in dlq.<flow> waiting for ops.", ("flow",)),
    "hub_until_waits": ("gauge", "Messages waiting in an `until` step (pending records).", ("flow",)),
    "hub_until_oldest_wait_seconds": ("gauge", "Age of the oldest `until` wait.", ("flow",)),
    "hub_store_up": ("gauge", "1 when the last read of the JetStream store for these metrics succeeded.", ()),
    "hub_endpoint_circuit_state": ("gauge", "1 for the endpoint's current circuit state (closed, open, half_open).", ("endpoint", "state")),
    "hub_endpoint_calls_in_flight": ("gauge", "Calls to the endpoint running now in this runner.", ("endpoint",)),
    "hub_endpoint_slots_busy": ("gauge", "Of the endpoint's max_concurrency slots, how many are taken in this runner.", ("endpoint",)),
    "hub_endpoint_slots": ("gauge", "The endpoint's max_concurrency (per runner).", ("endpoint",)),
    "hub_call_duration_seconds": ("histogram", "One try of an outside call, by endpoint and operation.", ("endpoint", "operation")),
    "hub_call_errors_total": ("counter", "Outside call tries that failed, by error class.", ("endpoint", "operation", "error_class")),
    "hub_ingress_items_stored_total": ("counter", "Items an ingress source stored in JetStream (new ones).", ("flow",)),
    "hub_ingress_duplicates_total": ("counter", "Items an ingress source received again and JetStream already had.", ("flow",)),
    "hub_ingress_stored_bytes_total": ("counter", "Bytes of the items an ingress source stored (a file's size for SFTP).", ("flow",)),
    "hub_ingress_quarantined_total": ("counter", "Items an ingress source refused and set aside with the reason.", ("flow",)),
    "hub_runner_ready": ("gauge", "1 when the runner is ready (/readyz): streams ensured, every flow consuming, NATS connected.", ()),
    "hub_nats_connected": ("gauge", "1 while the runner's NATS connection is up.", ()),
    "hub_nats_reconnects_total": ("counter", "Times the runner's NATS connection was re-established.", ()),
}


def _family(name: str) -> Metric:
    kind, doc, labels = CATALOGUE[name]
    if kind == "counter":
        return CounterMetricFamily(name.removesuffix("_total"), doc, labels=labels)
    if kind == "gauge":
        return GaugeMetricFamily(name, doc, labels=labels)
    return HistogramMetricFamily(name, doc, labels=labels)


class StoreSnapshot:
    """The store's view of this runner's flows, read when a scrape asks and at most every STORE_MAX_AGE."""

    def __init__(self, hub: Any) -> None:
        self.hub = hub
        self.backlogs: dict[str, Backlog] = {}
        self.dead_letters: dict[str, int] = {}
        self.waits: dict[str, tuple[int, float]] = {}
        self.up = False
        self._read_at = self._waits_at = -1e9
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        async with self._lock:  # concurrent scrapes share one read
            if time.monotonic() - self._read_at < STORE_MAX_AGE:
                return
            try:
                async with asyncio.timeout(STORE_TIMEOUT):
                    await self._read()
                self.up = True
            except Exception:  # NATS down or slow: the last values stay, hub_store_up says so
                self.up = False
            self._read_at = time.monotonic()

    async def _read(self) -> None:
        hub = self.hub
        sources = [s for s in flow_sources(hub.project) if s.flow in hub.runners]
        found = await asyncio.gather(*(consumer_backlog(hub.nc, s, STORE_TIMEOUT) for s in sources))
        self.backlogs = {s.flow: b for s, b in zip(sources, found) if b is not None}
        self.dead_letters = await dead_letter_depths(hub.js, hub.project.config.dlq.stream)
        if any(getattr(r, "waits", None) is not None for r in hub.runners.values()) \
                and time.monotonic() - self._waits_at >= WAITS_MAX_AGE:
            clock = getattr(hub, "clock", None)
            now = clock.now() if clock is not None else _utc_now()
            self.waits = wait_ages(await pending_waits(hub.js), now)
            self._waits_at = time.monotonic()


def _utc_now() -> Any:
    from engine.clock import SYSTEM

    return SYSTEM.now()


class HubCollector(Collector):
    """Reads one Hub's counters when scraped; `ops` is its engine.operations.Operations."""

    def __init__(self, ops: Any) -> None:
        self.ops = ops

    def collect(self) -> Iterator[Metric]:
        fam = {name: _family(name) for name in CATALOGUE}
        self._flows(fam)
        self._store(fam)
        self._endpoints(fam)
        self._ingress(fam)
        self._runner(fam)
        yield from fam.values()

    def _flows(self, fam: dict[str, Any]) -> None:
        hub, ops = self.ops.hub, self.ops
        for name, runner in hub.runners.items():
            s, lab = runner.stats, [name]
            for metric, value in (("received", s.received), ("done", s.acked), ("filtered", s.filtered),
                                  ("duplicate", s.skipped), ("published", s.published)):
                fam[f"hub_flow_messages_{metric}_total"].add_metric(lab, value)
            fam["hub_flow_message_failures_total"].add_metric(lab, s.failed)
            failures = getattr(runner, "failures", None)
            waits = getattr(runner, "waits", None)
            fam["hub_flow_messages_waited_total"].add_metric([name, "until"], waits.waiting if waits else 0)
            fam["hub_flow_messages_waited_total"].add_metric(
                [name, "outage"], getattr(failures, "outage_waits", 0) if failures else 0)
            fam["hub_flow_redeliveries_total"].add_metric(lab, failures.redelivered if failures else 0)
            if failures is not None:
                for error_class, n in sorted(getattr(failures, "dead_lettered_by_class", {}).items()):
                    fam["hub_flow_dead_letters_total"].add_metric([name, error_class], n)
            fam["hub_flow_calls_total"].add_metric(lab, runner.pipeline.call_count)
            probe = ops.probes.get(name)
            fam["hub_flow_call_attempts_total"].add_metric(lab, probe.call_attempts if probe else 0)
            fam["hub_flow_in_flight_messages"].add_metric(lab, in_flight(runner))
            fam["hub_flow_consuming"].add_metric(lab, 1 if consuming(runner) else 0)
            if probe is not None:
                h = probe.duration
                fam["hub_flow_message_duration_seconds"].add_metric(lab, h.cumulative(), h.sum)
                for step, h in probe.steps.items():
                    fam["hub_flow_step_duration_seconds"].add_metric([name, step], h.cumulative(), h.sum)

    def _store(self, fam: dict[str, Any]) -> None:
        store = self.ops.store
        for flow, b in sorted(store.backlogs.items()):
            fam["hub_consumer_pending_messages"].add_metric([flow], b.pending)
            fam["hub_consumer_ack_pending_messages"].add_metric([flow], b.ack_pending)
            fam["hub_consumer_redelivered_messages"].add_metric([flow], b.redelivered)
            fam["hub_consumer_lag_seconds"].add_metric([flow], b.lag_seconds)
        for flow in self.ops.hub.runners:  # 0 for a flow without dead letters: a series that exists
            fam["hub_dead_letter_messages"].add_metric([flow], store.dead_letters.get(flow, 0))
        for flow, runner in self.ops.hub.runners.items():
            if getattr(runner, "waits", None) is not None:
                count, oldest = store.waits.get(flow, (0, 0.0))
                fam["hub_until_waits"].add_metric([flow], count)
                fam["hub_until_oldest_wait_seconds"].add_metric([flow], oldest)
        fam["hub_store_up"].add_metric([], 1 if store.up else 0)

    def _endpoints(self, fam: dict[str, Any]) -> None:
        hub = self.ops.hub
        for name, breaker in sorted(getattr(hub, "endpoint_breakers", {}).items()):
            if name in hub.adapters:
                for state in BREAKER_STATES:
                    fam["hub_endpoint_circuit_state"].add_metric([name, state], 1 if breaker.state == state else 0)
        for name, meter in sorted(self.ops.endpoints.items()):
            fam["hub_endpoint_calls_in_flight"].add_metric([name], meter.in_flight)
            slots = meter.slots()
            if slots is not None:
                fam["hub_endpoint_slots_busy"].add_metric([name], slots[0])
                fam["hub_endpoint_slots"].add_metric([name], slots[1])
            for op, h in sorted(meter.latency.items()):
                fam["hub_call_duration_seconds"].add_metric([name, op], h.cumulative(), h.sum)
            for (op, error_class), n in sorted(meter.errors.items()):
                fam["hub_call_errors_total"].add_metric([name, op, error_class], n)

    def _ingress(self, fam: dict[str, Any]) -> None:
        for name, ingress in sorted(self.ops.hub.ingresses.items()):
            landing = getattr(ingress, "landing", None)
            if landing is None:
                continue
            own_bytes = getattr(ingress, "bytes", None)  # a file drop counts the files, not their notices
            fam["hub_ingress_items_stored_total"].add_metric([name], landing.stored)
            fam["hub_ingress_duplicates_total"].add_metric([name], landing.duplicates)
            fam["hub_ingress_stored_bytes_total"].add_metric(
                [name], own_bytes if isinstance(own_bytes, int) else getattr(landing, "stored_bytes", 0))
            fam["hub_ingress_quarantined_total"].add_metric([name], getattr(ingress, "quarantined", 0))

    def _runner(self, fam: dict[str, Any]) -> None:
        from engine.health import readiness

        nc = self.ops.hub.nc
        fam["hub_runner_ready"].add_metric([], 1 if readiness(self.ops.hub)[0] else 0)
        fam["hub_nats_connected"].add_metric([], 1 if nc is not None and nc.is_connected else 0)
        fam["hub_nats_reconnects_total"].add_metric([], (nc.stats.get("reconnects", 0) if nc is not None else 0))


def in_flight(runner: Any) -> int:
    feed = getattr(runner, "feed", None)
    if feed is not None:
        return len(feed.held)
    return len(getattr(runner, "_inflight", ()))


def consuming(runner: Any) -> bool:
    """The flow takes messages: its pull subscription (or request subscription) is live and its workers run."""
    feed = getattr(runner, "feed", None)
    if feed is None:
        return getattr(runner, "_sub", None) is not None
    workers = getattr(runner, "_workers", [])
    return getattr(feed, "_sub", None) is not None and not feed.stopping and bool(workers) \
        and not any(w.done() for w in workers)


def registry_for(ops: Any) -> CollectorRegistry:
    """A registry of its own per Hub (tests run several in one process): the hub's metrics plus the
    process's CPU, memory, file descriptors and the Python runtime."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HubCollector(ops))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry
