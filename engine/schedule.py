"""Schedule sources: ticks stored in JetStream, then consumed like any message.

Every runner computes the same slots and publishes each slot's ticks under the same message id, so
JetStream keeps one tick per slot however many runners there are; the tick then has a durable
consumer's guarantees (one runner at a time, retries, DLQ). The last slot fired is kept in KV so a
runner starting after a missed slot (all runners were down at 01:30) runs it once, late.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import structlog
from croniter import croniter
from nats.js.errors import KeyNotFoundError

from engine.clock import SYSTEM, Clock
from engine.kv import bucket
from engine.messages import derived_id, encode, event_headers
from engine.months import gap_end, wall_instants
from engine.spec import SCHEDULE_SUBJECT_PREFIX, Flow, ScheduleSource, ScheduleSpec
from engine.tasks import cancel_and_wait

log = structlog.get_logger("hub.schedule")

BUCKET = "hub_schedule"
SCHEDULED_FOR = "Hub-Scheduled-For"
FIRED_AT = "Hub-Fired-At"  # when a runner stored a scheduled tick: later than its slot on a catch-up


def check_schedule(cron: str | None, tz: str) -> str | None:
    """Why a cron expression or time zone is unusable, or None."""
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {tz!r} (an IANA name like Europe/Brussels)"
    if cron is not None:
        if len(cron.split()) != 5:
            return f"cron {cron!r} needs five fields: minute hour day-of-month month day-of-week"
        if not croniter.is_valid(cron):
            return f"cron {cron!r} is not a valid expression"
    return None


SLACK = timedelta(hours=3)  # more than any zone's clock change: how far wall time and UTC order may differ
SEARCH_LIMIT = 2000         # slots looked at per question (an every-minute cron needs ~360)


def is_fixed_time(cron: str) -> bool:
    """A cron at a particular time of day (no `*` in its minute or hour field). As Vixie cron does,
    such a job runs once when its time falls in the autumn's repeated hour (at the first, summer-time
    copy) and at the moment the clocks jump when its time falls in the spring gap; a job with `*` in
    its minute or hour runs at the wall times that occur (twice in the repeated hour, none in the gap)."""
    minute, hour = cron.split()[:2]
    return "*" not in minute and "*" not in hour


def _instants(naive: datetime, tz: ZoneInfo, fixed: bool) -> list[datetime]:
    """The instants (UTC) a cron's local wall time `naive` fires at, by the rule of `is_fixed_time`."""
    instants = wall_instants(naive, tz)
    if fixed:
        return instants[:1] if instants else [gap_end(naive, tz)]
    return instants


def latest_slot(spec: ScheduleSpec, now: datetime) -> datetime:
    """The most recent scheduled moment at or before `now` (UTC). An `every` interval counts from the
    epoch in UTC (elapsed time: DST does not move it); a cron is read in its time zone."""
    if spec.every is not None:
        epoch = now.timestamp()
        return datetime.fromtimestamp(epoch - epoch % spec.every, timezone.utc)
    tz, fixed, best = ZoneInfo(spec.timezone), is_fixed_time(spec.cron), None
    walk = croniter(spec.cron, now.astimezone(tz).replace(tzinfo=None) + SLACK)
    for _ in range(SEARCH_LIMIT):
        naive = walk.get_prev(datetime)
        if best is not None and naive.replace(tzinfo=tz).astimezone(timezone.utc) + SLACK < best:
            return best
        for moment in _instants(naive, tz, fixed):
            if moment <= now and (best is None or moment > best):
                best = moment
    if best is None:
        raise ValueError(f"cron {spec.cron!r}: no slot found before {now.isoformat()}")
    return best


def next_slot(spec: ScheduleSpec, now: datetime) -> datetime:
    """The first scheduled moment after `now` (UTC), by the same rules as `latest_slot`."""
    if spec.every is not None:
        return latest_slot(spec, now) + timedelta(seconds=spec.every)
    tz, fixed, best = ZoneInfo(spec.timezone), is_fixed_time(spec.cron), None
    walk = croniter(spec.cron, now.astimezone(tz).replace(tzinfo=None) - SLACK)
    for _ in range(SEARCH_LIMIT):
        naive = walk.get_next(datetime)
        if best is not None and naive.replace(tzinfo=tz).astimezone(timezone.utc) - SLACK > best:
            return best
        for moment in _instants(naive, tz, fixed):
            if moment > now and (best is None or moment < best):
                best = moment
    if best is None:
        raise ValueError(f"cron {spec.cron!r}: no slot found after {now.isoformat()}")
    return best


def tick_subject(flow: str) -> str:
    return f"{SCHEDULE_SUBJECT_PREFIX}.{flow}"


async def publish_ticks(js: Any, flow: Flow, label: str, *, manual: bool = False,
                        payloads: list[dict[str, Any]] | None = None, timeout: float = 10.0,
                        fired_at: datetime | None = None) -> list[str]:
    """Store one tick per `each` entry (or per given payload); returns their message ids. Scheduled
    ticks of one slot get the same ids on every runner; manual ones are new each time."""
    source = flow.source
    assert isinstance(source, ScheduleSource)
    entries = payloads if payloads is not None else source.each
    run = uuid.uuid4().hex if manual else label
    ids = []
    for i, entry in enumerate(entries):
        msg_id = derived_id("tick", flow.name, run, str(i))
        headers = event_headers(f"/plu-hub/schedule/{flow.name}", tick_subject(flow.name), msg_id=msg_id)
        headers[SCHEDULED_FOR] = label
        if fired_at is not None:
            headers[FIRED_AT] = fired_at.isoformat()
        await js.publish(tick_subject(flow.name), encode(entry), headers=headers, timeout=timeout)
        ids.append(msg_id)
    return ids


class Scheduler:
    """Fires the ticks of one scheduled flow at its slots, for as long as the runner runs."""

    def __init__(self, flow: Flow, js: Any, publish_timeout: float, clock: Clock = SYSTEM) -> None:
        assert isinstance(flow.source, ScheduleSource)
        self.flow = flow
        self.clock = clock  # slots are read on it: a test or `demo --at` sets it
        self.source: ScheduleSource = flow.source
        self.js = js
        self.publish_timeout = publish_timeout
        self.kv: Any = None
        self.fired = 0
        self._missed: datetime | None = None  # a catch-up slot that could not be fired at start
        self._task: asyncio.Task[None] | None = None
        self.log = log.bind(flow=flow.name)

    async def start(self) -> None:
        """Catch up on a missed slot (before returning, so a caller sees it done), then keep time."""
        self.kv = await bucket(self.js, BUCKET)
        await self._catch_up()
        self._task = asyncio.create_task(self._run(), name=f"schedule:{self.flow.name}")

    async def stop(self) -> None:
        await cancel_and_wait([self._task])

    async def _last_fired(self) -> datetime | None:
        try:
            entry = await self.kv.get(self.flow.name)
        except KeyNotFoundError:
            return None
        return datetime.fromisoformat(entry.value.decode()) if entry.value else None

    async def _fire(self, slot: datetime) -> None:
        label = slot.isoformat()
        await publish_ticks(self.js, self.flow, label, timeout=self.publish_timeout,
                            fired_at=self.clock.now())
        await self.kv.put(self.flow.name, label.encode())
        self.fired += 1
        self.log.info("schedule_fired", slot=label, ticks=len(self.source.each))

    async def _catch_up(self) -> None:
        last, slot = await self._last_fired(), latest_slot(self.source.schedule, self.clock.now())
        if last is None:
            await self.kv.put(self.flow.name, slot.isoformat().encode())  # a new flow: nothing was missed
        elif last < slot and self.source.catch_up:
            self.log.warning("schedule_catch_up", missed=slot.isoformat(), last=last.isoformat())
            try:
                await self._fire(slot)
            except Exception as exc:  # the broker hiccups at start: keep trying in the background
                self.log.warning("schedule_catch_up_deferred", slot=slot.isoformat(), error=repr(exc))
                self._missed = slot

    async def _run(self) -> None:
        spec = self.source.schedule
        if self._missed is not None:
            await self._fire_safely(self._missed)
        while True:
            slot = next_slot(spec, self.clock.now())
            await self.clock.sleep_until(slot)
            await self._fire_safely(slot)

    async def _fire_safely(self, slot: datetime) -> None:
        """A broker hiccup at the slot must not end the schedule: retry the slot for a while."""
        for attempt in range(30):
            try:
                await self._fire(slot)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.warning("schedule_fire_failed", slot=slot.isoformat(), attempt=attempt + 1, error=repr(exc))
                await asyncio.sleep(min(30.0, 0.5 * 2 ** attempt))
        self.log.error("schedule_slot_lost", slot=slot.isoformat())
