"""Schedule sources against a real nats-server: one tick per slot whatever the number of runners,
catch-up after downtime, manual triggers, and what validation says about bad schedules."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import nats
import pytest

from engine.clock import ManualClock
from engine.errors import ConfigError
from engine.kv import bucket
from engine.runtime import Hub
from engine.schedule import BUCKET, FIRED_AT, SCHEDULED_FOR, latest_slot, next_slot
from engine.spec import ScheduleSpec
from tests.helpers import StreamReader, project_from, started_hub

ROOT = Path(__file__).resolve().parents[1]


def config_for(u: str) -> str:
    return f"""
    streams:
      - {{name: OUT{u}, subjects: ["{u}.>"]}}
    """


def ticking_flow(u: str, schedule: str, each: str = "[{n: 1}, {n: 2}]") -> str:
    return f"""
        name: {u}
        source:
          schedule: {schedule}
          each: {each}
        steps:
          - publish: {u}.ran.{{n}}
    """


@pytest.fixture
async def js(nats_url: str):
    nc = await nats.connect(nats_url)
    yield nc.jetstream()
    await nc.close()


async def test_two_runners_store_one_tick_per_slot_and_the_flow_runs_once_per_tick(
        tmp_path: Path, nats_url: str, js, unique: str):
    """With two runners on a 1 s interval, every slot has exactly one tick per `each` entry and each
    tick produces exactly one output."""
    project = project_from(tmp_path, config_for(unique), ticking_flow(unique, "{every: 1s}"))
    hubs = [await started_hub(project, nats_url), await started_hub(project, nats_url)]
    ran = await StreamReader.open(js, f"{unique}.ran.>")  # ordered consumers read from the stream's start
    ticks = await StreamReader.open(js, f"hub.schedule.{unique}")
    try:
        await ran.wait_for(6)  # three slots' worth
    finally:
        for hub in hubs:
            await hub.stop()
    per_slot = Counter(m.headers[SCHEDULED_FOR] for m in ticks.messages)
    assert per_slot and set(per_slot.values()) == {2}, per_slot
    assert sum(h.schedulers[unique].fired for h in hubs) >= len(per_slot)  # both fired; JetStream kept one
    outputs = Counter(m.headers["ce-correlationid"] for m in ran.messages)
    assert set(outputs.values()) == {1} and len(outputs) == len(ran.messages)
    assert len(ran.messages) == len(ticks.messages)


async def test_a_slot_missed_while_no_runner_was_up_runs_once_when_one_starts(
        tmp_path: Path, nats_url: str, js, unique: str):
    """The last fired slot is remembered: a runner starting after a missed slot runs it at once, and
    a second runner starting later does not run it again (on a clock set to the autumn DST night)."""
    project = project_from(tmp_path, config_for(unique), ticking_flow(unique, "{every: 1h}", "[{n: 1}]"))
    kv = await bucket(js, BUCKET)
    clock = ManualClock(datetime(2027, 10, 31, 1, 40, tzinfo=timezone.utc))
    await kv.put(unique, "2027-10-30T23:00:00+00:00".encode())  # two slots before the latest, 01:00Z
    first = Hub(project, servers=[nats_url], clock=clock)
    await first.start()
    ran = await StreamReader.open(js, f"{unique}.ran.>")
    ticks = await StreamReader.open(js, f"hub.schedule.{unique}")
    try:
        await ran.wait_for(1)
        assert first.schedulers[unique].fired == 1
        [tick] = await ticks.wait_for(1)  # fired after its slot: a pull run takes the later time as its now
        assert (tick.headers[SCHEDULED_FOR], tick.headers[FIRED_AT]) == ("2027-10-31T01:00:00+00:00",
                                                                         "2027-10-31T01:40:00+00:00")
        second = Hub(project, servers=[nats_url], clock=clock)
        await second.start()
        await second.stop()
        assert second.schedulers[unique].fired == 0
    finally:
        await first.stop()
    assert len(ran.messages) == 1


async def test_trigger_stores_ticks_now_and_a_running_hub_runs_them(tmp_path: Path, nats_url: str, js, unique: str):
    """`runner.py trigger FLOW --only n=2` stores one tick for the matching entry; the hub runs it."""
    project = project_from(tmp_path, config_for(unique), ticking_flow(unique, "{cron: '0 3 1 1 *'}"))
    hub = await started_hub(project, nats_url)
    ran = await StreamReader.open(js, f"{unique}.ran.>")
    try:
        done = await asyncio.to_thread(subprocess.run, [
            sys.executable, str(ROOT / "runner.py"), "trigger", unique, "--only", "n=2", "--nats", nats_url,
            "--config", str(tmp_path / "config.yaml"), "--flows", str(tmp_path / "flows")],
            capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "stored tick" in done.stdout and '{"n": 2}' in done.stdout
        msgs = await ran.wait_for(1)
        assert msgs[0].subject == f"{unique}.ran.2" and json.loads(msgs[0].data) == {"n": 2}
    finally:
        await hub.stop()


def test_cron_slots_follow_the_time_zone_across_daylight_saving():
    """A 01:30 Brussels job runs at 00:30 UTC in winter and 23:30 UTC the day before in summer."""
    spec = ScheduleSpec(cron="30 1 * * *", timezone="Europe/Brussels")
    winter = next_slot(spec, datetime(2026, 1, 10, 12, tzinfo=timezone.utc))
    summer = next_slot(spec, datetime(2026, 7, 10, 12, tzinfo=timezone.utc))
    assert winter == datetime(2026, 1, 11, 0, 30, tzinfo=timezone.utc)
    assert summer == datetime(2026, 7, 10, 23, 30, tzinfo=timezone.utc)
    assert latest_slot(spec, summer) == summer


@pytest.mark.parametrize("schedule, message", [
    ("{cron: '61 * * * *'}", "cron '61 * * * *' is not a valid expression"),
    ("{cron: '* * *'}", "needs five fields"),
    ("{cron: '0 1 * * *', timezone: Europe/Bruxelles}", "unknown time zone 'Europe/Bruxelles'"),
    ("{cron: '0 1 * * *', every: 1h}", "exactly one of: cron, every"),
    ("{every: 30}", "expected a duration with a unit"),
])
def test_a_bad_schedule_is_refused_with_the_file_and_the_field(tmp_path: Path, schedule: str, message: str):
    """Validation names the flow file, the line and the schedule field, and says what is wrong."""
    with pytest.raises(ConfigError) as err:
        project_from(tmp_path, config_for("x"), ticking_flow("badschedule", schedule))
    text = "\n".join(err.value.issues)
    assert "flow0.yaml:4: source.schedule" in text and message in text, text
