"""The hub process: connect (or start the embedded broker), declare streams, start adapters and
flows; stop in reverse order so in-flight work finishes and nothing is left running."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import nats.errors
import structlog

from engine.adapter import Adapter, Services
from engine.executor import StreamFlowRunner
from engine.failures import FailureHistory
from engine.idempotency import IdempotencyStore
from engine.advisories import MaxDeliveriesWatcher
from engine.alerts import AlertWatcher
from engine.breaker import BreakerBoard
from engine.clock import SYSTEM, Clock
from engine.fallback import FallbackCache
from engine.connection import URL_FILE, connect_options
from engine.nats_client import connect
from engine.operations import Operations
from engine.pipeline import Pipeline
from engine.registry import load_adapters
from engine.ingress import ingress_for
from engine.schedule import Scheduler
from engine.service import RequestFlowRunner
from engine.streams import ensure_streams
from engine.validation import Project, endpoint_candidates, stream_for

log = structlog.get_logger("hub.runtime")
REFUSALS_BEFORE_EXIT = 5  # about 2.5 s of reconnects refused for credentials


def used_endpoints(project: Project) -> set[str]:
    """Endpoints a call or pull step of a loaded flow can resolve to (templates count every match)."""
    names = list(project.endpoints)
    used: set[str] = set()
    for lf in project.flows:
        for step in lf.flow.steps:
            target = getattr(step, "call", None) or getattr(step, "pull", None)
            if target is not None and hasattr(target, "endpoint"):
                used.update(endpoint_candidates(target.endpoint, names))
    return used


class Hub:
    """One runner process. Nothing here assumes it is alone: durables and queue groups are shared.

    It never runs on without its broker: the connection reconnects for as long as the server may come
    back; when nats-py closes it for good (the server refused it: credentials, a protocol violation)
    `closed_for_good` is set and `wait_closed()` returns the reason, and `runner.py run` exits
    non-zero so a supervisor starts it again. Readiness reads `broker_state`."""

    def __init__(self, project: Project, *, servers: list[str] | None = None,
                 data_dir: str | Path | None = None, clock: Clock = SYSTEM) -> None:
        self.project = project
        self.clock = clock  # schedules, waits, pulls, alerts, fallbacks, dead letters decide on it
        self.servers = servers if servers is not None else list(project.config.nats.urls)
        self.data_dir = data_dir
        self.embedded: Any = None  # engine.embedded_nats.EmbeddedNats when we started the broker
        self.nc: Any = None
        self.js: Any = None
        self.adapters: dict[str, Adapter] = {}
        self.runners: dict[str, StreamFlowRunner | RequestFlowRunner] = {}
        self.max_deliveries: MaxDeliveriesWatcher | None = None
        self.alerts: AlertWatcher | None = None
        self.breakers: BreakerBoard | None = None
        self.fallback: FallbackCache | None = None
        self.endpoint_breakers: dict[str, Any] = {}
        self.schedulers: dict[str, Scheduler] = {}
        self.ingresses: dict[str, Any] = {}
        self.closed_reason: str | None = None  # why the connection closed for good (None while it has not)
        self._closed = asyncio.Event()
        self._stopping = False
        self._refusals = 0  # authorization violations in a row while reconnecting
        self.ops = Operations(self)  # metrics, health, traces, status (engine/operations.py)

    # --- the broker connection, for readiness and the runner's exit ----------------------------

    @property
    def broker_state(self) -> str:
        """"connected", "reconnecting" (outputs and acks wait), "closed" (for good: the runner must
        exit) or "not started"."""
        if self._closed.is_set():
            return "closed"
        if self.nc is None:
            return "not started"
        if self.nc.is_connected:
            return "connected"
        return "closed" if self.nc.is_closed else "reconnecting"

    @property
    def closed_for_good(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> str:
        """Return (the reason) once the connection has closed for good; a stop() does not count."""
        await self._closed.wait()
        return self.closed_reason or "connection closed"

    async def start(self) -> None:
        """Broker, streams, shared state, adapters, then flows; stop() undoes what got started."""
        await self._connect()
        await ensure_streams(self.js, self.project.config)
        await self._open_state()
        await self._start_adapters()
        await self._start_flows()
        await self.ops.start()
        log.info("hub_started", flows=list(self.runners), endpoints=list(self.adapters))

    async def _connect(self) -> None:
        ncfg = self.project.config.nats
        if not self.servers:
            from engine.embedded_nats import EmbeddedNats

            # started from the event loop's (main) thread: the server dies with this process
            embedded = ncfg.embedded
            self.embedded = EmbeddedNats(data_dir=self.data_dir or embedded.data_dir, port=embedded.port,
                                         monitor_port=embedded.monitor_port).start()
            self.servers = [self.embedded.url]
            log.info("embedded_nats_started", url=self.embedded.url, pid=self.embedded.pid,
                     data_dir=str(self.embedded.data_dir))
            (Path(self.embedded.data_dir) / URL_FILE).write_text(self.embedded.url)
        # subjects are checked by validation and by the publish step: connect_options skips nats-py's check
        self.nc = await connect(**connect_options(
            self.project.config, self.servers, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
            reconnected_cb=self._reconnected, disconnected_cb=self._disconnected, error_cb=self._error,
            closed_cb=self._connection_closed))
        self.js = self.nc.jetstream(timeout=ncfg.publish_timeout)

    async def _open_state(self) -> None:
        """The KV buckets every runner shares: done effects, failure history, breakers, fallbacks."""
        self.idempotency = IdempotencyStore(self.js, self.project.config.state.idempotency_keep,
                                            runner_id=self.ops.runner_id, clock=self.clock)  # claims name their holder
        await self.idempotency.start()
        self.history = FailureHistory(self.js)
        await self.history.start()
        self.breakers = BreakerBoard(self.js)
        await self.breakers.start()
        self.fallback = FallbackCache(self.js, self.clock)
        await self.fallback.start()
        self.endpoint_breakers = {name: self.breakers.breaker(name, cfg.circuit_breaker)
                                  for name, cfg in self.project.endpoints.items() if cfg.circuit_breaker is not None}

    async def _start_adapters(self) -> None:
        """Start the endpoints the loaded flows call (not every endpoint in config: an unused one's
        secrets need not be there, nor its server reachable)."""
        services = Services(nc=self.nc, js=self.js, clock=self.clock)
        registry = load_adapters()
        used = used_endpoints(self.project)
        for name, cfg in self.project.endpoints.items():
            if name not in used:
                continue
            adapter = registry[cfg.adapter](name, cfg, services)
            await adapter.start()
            self.adapters[name] = adapter

    async def _start_flows(self) -> None:
        ncfg, breakers = self.project.config.nats, self.endpoint_breakers
        self.ingress_services = Services(nc=self.nc, js=self.js, config=self.project.config, clock=self.clock)
        for lf in self.project.flows:
            flow = lf.flow
            pipeline = Pipeline(flow, self.adapters, breakers=breakers, fallback=self.fallback, js=self.js,
                                publish_timeout=ncfg.publish_timeout, clock=self.clock, captured=self._captured)
            if flow.is_request:
                runner: StreamFlowRunner | RequestFlowRunner = RequestFlowRunner(
                    pipeline, self.nc, self.js, ncfg.publish_timeout)
            else:
                stream = stream_for(self.project.config, flow.consumed_subject, pattern=True)  # type: ignore[arg-type]
                assert stream is not None  # validation guarantees it
                runner = StreamFlowRunner(pipeline, stream, self.nc, self.js, ncfg.publish_timeout,
                                          self.idempotency, self.history, self.breakers.wait)
                if pipeline.first_endpoint in breakers:
                    runner.watch_breaker(breakers[pipeline.first_endpoint])
                runner.count_item_dead_letters = self._count_item_dead_letters
            self.ops.attach(runner)
            await runner.start()
            self.runners[flow.name] = runner
            if flow.is_scheduled:
                scheduler = Scheduler(flow, self.js, ncfg.publish_timeout, self.clock)
                await scheduler.start()
                self.schedulers[flow.name] = scheduler
            if flow.ingress is not None:
                ingress = ingress_for(flow, self.project, self.js, ncfg.publish_timeout, self.ingress_services)
                await ingress.start()
                self.ingresses[flow.name] = ingress
        handlers = {name: r.failures for name, r in self.runners.items() if isinstance(r, StreamFlowRunner)}
        self.max_deliveries = MaxDeliveriesWatcher(self.js, handlers, self.history)
        await self.max_deliveries.start()
        streams = [r for r in self.runners.values() if isinstance(r, StreamFlowRunner)]
        self.alerts = AlertWatcher(self.nc, self.js, streams, self.project.config.dlq.stream, self.clock)
        await self.alerts.start()

    def _captured(self, subject: str) -> bool:
        """Whether a configured stream captures a subject a flow rendered from a payload."""
        return stream_for(self.project.config, subject, pattern=False) is not None

    async def stop(self, timeout: float = 10.0) -> None:
        """Graceful: stop pulling, finish or hand back in-flight messages, close, stop the broker."""
        self._stopping = True
        try:
            if self.alerts is not None:
                await self.alerts.stop()
            if self.max_deliveries is not None:
                await self.max_deliveries.stop()
            for scheduler in self.schedulers.values():
                await scheduler.stop()
            for name, ingress in self.ingresses.items():
                try:
                    await ingress.stop()
                except Exception as exc:
                    log.warning("ingress_stop_failed", flow=name, error=repr(exc))
            if self.runners:
                await asyncio.gather(*(r.stop(timeout) for r in self.runners.values()), return_exceptions=True)
            await self.ops.stop()
            if self.breakers is not None:
                await self.breakers.stop()
            for adapter in self.adapters.values():
                try:
                    await adapter.close()
                except Exception as exc:
                    log.warning("adapter_close_failed", endpoint=adapter.endpoint, error=repr(exc))
            if self.nc is not None and not self.nc.is_closed:
                try:
                    await asyncio.wait_for(self.nc.drain(), timeout)
                except Exception:
                    try:
                        await self.nc.close()
                    except Exception as exc:  # noqa: BLE001 - the connection is gone either way
                        log.warning("nats_close_failed", error=repr(exc))
        finally:
            if self.embedded is not None:
                (Path(self.embedded.data_dir) / URL_FILE).unlink(missing_ok=True)
                self.embedded.stop()
                log.info("embedded_nats_stopped")

    def _count_item_dead_letters(self, filed: list[tuple[str, str]]) -> None:
        """Dead letters one flow filed for another's items (a Bulk job's failed rows) count as that flow's."""
        for flow, error_class in filed:
            runner = self.runners.get(flow)
            if runner is not None and hasattr(runner, "failures"):
                runner.failures.count_dead_letter(error_class)

    async def _reconnected(self) -> None:
        self._refusals = 0
        log.warning("nats_reconnected", url=str(self.nc.connected_url.netloc if self.nc.connected_url else ""))
        for runner in self.runners.values():
            runner.on_reconnect()
        if self.breakers is not None:
            await self.breakers.resync()

    async def _disconnected(self) -> None:
        log.warning("nats_disconnected")
        for runner in self.runners.values():
            if isinstance(runner, StreamFlowRunner):
                runner.on_disconnect()

    async def _error(self, exc: Exception) -> None:
        log.warning("nats_error", error=repr(exc))
        # nats-py keeps reconnecting to a server that refuses its credentials; that never heals inside
        # this process, so after a few refusals in a row it counts as closed for good
        if "authorization violation" in str(exc).lower() or isinstance(exc, nats.errors.AuthorizationError):
            self._refusals += 1
            if self._refusals >= REFUSALS_BEFORE_EXIT and not self._stopping and not self._closed.is_set():
                self._closed_for_good(f"the server refused the credentials {self._refusals} times: {exc}")
                try:
                    await self.nc.close()
                except Exception:  # noqa: BLE001 - closing a connection that is half gone
                    pass
        else:
            self._refusals = 0

    async def _connection_closed(self) -> None:
        if self._stopping or self._closed.is_set():
            return
        last = self.nc.last_error if self.nc is not None else None
        self._closed_for_good(f"{type(last).__name__}: {last}" if last is not None else "closed by the client")

    def _closed_for_good(self, reason: str) -> None:
        self.closed_reason = reason
        log.error("nats_closed_for_good", reason=reason,
                  consequence="no flow can run: the runner exits non-zero so a supervisor restarts it")
        self._closed.set()

    async def __aenter__(self) -> "Hub":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
