"""Alerts as events: each flow's thresholds (lag, pending, dead letters, call latency) are checked
on a timer; crossing one publishes `ops.alert.<flow>` (state `firing`), coming back under it
publishes `resolved`. Events, not pages: whatever watches `ops.alert.>` decides who is woken.

Clocks: an event's `at` is the runner's `Clock`; `lag` (how old the oldest unprocessed message is) is
measured on nats-server's clock alone, the consumer-info answer's `ts` (nats-server 2.10+) against the
message's stored time, so a runner whose clock is off (or faked) neither invents nor hides a lag (in a
cluster these may be two servers' clocks, which NTP keeps within milliseconds, not hours)."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any

import structlog
from nats.js.errors import NotFoundError

from engine.clock import SYSTEM, Clock
from engine.messages import event_headers
from engine.tasks import cancel_and_wait

log = structlog.get_logger("hub.alerts")


async def publish_alert(js: Any, flow: str, alert: str, state: str, *, clock: Clock = SYSTEM,
                        **fields: Any) -> dict[str, Any]:
    """Publish one alert event on `ops.alert.<flow>` (confirmed) and log it; returns the event."""
    event = {"flow": flow, "alert": alert, "state": state, **fields,
             "at": clock.now().isoformat(timespec="seconds")}
    (log.warning if state == "firing" else log.info)("alert", **event)
    subject = f"ops.alert.{flow}"
    await js.publish(subject, json.dumps(event, default=str).encode(),
                     headers=event_headers(f"/plu-hub/flows/{flow}", subject))
    return event


class FlowAlerts:
    """The checks of one flow; remembers what is firing so each change is reported once."""

    def __init__(self, runner: Any, js: Any, dlq_stream: str, clock: Clock = SYSTEM) -> None:
        self.runner = runner
        self.clock = clock
        self.flow = runner.flow
        self.spec = runner.flow.alerts
        self.js = js
        self.dlq_stream = dlq_stream
        self.firing: dict[str, bool] = {}
        self._calls = (0, 0.0)

    async def measure(self) -> dict[str, tuple[float, float]]:
        """kind -> (value, threshold) for every configured threshold."""
        spec, out = self.spec, {}
        assert spec is not None
        if spec.pending is not None or spec.lag is not None:
            info = await self.js.consumer_info(self.runner.stream, self.flow.name)
            waiting = info.num_pending + info.num_ack_pending
            if spec.pending is not None:
                out["pending"] = (float(waiting), float(spec.pending))
            if spec.lag is not None:
                out["lag"] = (await self._oldest_age(info.ack_floor.stream_seq) if waiting else 0.0, spec.lag)
        if spec.dead_letters is not None:
            count = 0
            try:
                state = (await self.js.stream_info(self.dlq_stream, subjects_filter=f"dlq.{self.flow.name}")).state
                count = (state.subjects or {}).get(f"dlq.{self.flow.name}", 0)
            except NotFoundError:
                pass
            out["dead_letters"] = (float(count), float(spec.dead_letters))
        if spec.latency is not None:
            calls, total = self.runner.pipeline.call_count, self.runner.pipeline.call_seconds
            n, t = calls - self._calls[0], total - self._calls[1]
            self._calls = (calls, total)
            out["latency"] = ((t / n) if n else 0.0, spec.latency)
        return out

    async def _oldest_age(self, ack_floor: int) -> float:
        """Age of the first message after the ack floor (how far behind the flow is), on the server's
        clock: the consumer-info answer's `ts` minus that message's stored time (0 when unknown)."""
        try:
            server_now = await _server_time(self.js, self.runner.stream, self.flow.name)
            msg = await self.js.get_msg(self.runner.stream, ack_floor + 1)
        except Exception:
            return 0.0
        stamp = getattr(msg, "time", None)
        if server_now is None or not isinstance(stamp, datetime):
            return 0.0
        return max(0.0, (server_now - stamp).total_seconds())

    async def check(self, nc: Any) -> list[dict[str, Any]]:
        events = []
        for kind, (value, threshold) in (await self.measure()).items():
            over = value >= threshold if kind == "dead_letters" else value > threshold
            if over == self.firing.get(kind, False):
                continue
            self.firing[kind] = over
            events.append(await publish_alert(self.js, self.flow.name, kind, "firing" if over else "resolved",
                                              clock=self.clock, value=round(value, 3), threshold=threshold))
        return events


async def _server_time(js: Any, stream: str, consumer: str) -> datetime | None:
    """nats-server's own now (`ts` of a consumer-info answer, nats-server 2.10+), or None."""
    prefix = getattr(js, "_prefix", "$JS.API")
    reply = await js._nc.request(f"{prefix}.CONSUMER.INFO.{stream}.{consumer}", b"", timeout=5)
    stamp = json.loads(reply.data).get("ts")
    if not stamp:
        return None
    head, dot, frac = stamp.rstrip("Z").partition(".")  # nanoseconds: datetime takes microseconds
    return datetime.fromisoformat(f"{head}.{frac[:6]}+00:00" if dot else f"{head}+00:00")


class AlertWatcher:
    def __init__(self, nc: Any, js: Any, runners: list[Any], dlq_stream: str, clock: Clock = SYSTEM) -> None:
        self.nc = nc
        self.checks = [FlowAlerts(r, js, dlq_stream, clock) for r in runners if r.flow.alerts is not None]
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._loop(c), name=f"alerts:{c.flow.name}") for c in self.checks]

    async def _loop(self, check: FlowAlerts) -> None:
        assert check.spec is not None
        while True:
            await asyncio.sleep(check.spec.every)
            try:
                await check.check(self.nc)
            except Exception as exc:
                log.warning("alert_check_failed", flow=check.flow.name, error=repr(exc))

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
