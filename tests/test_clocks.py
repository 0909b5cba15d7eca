"""One clock per duration, against a real nats-server: waits, dead letters, alert lag, fallback
freshness and schedules decide on the hub's clock (or the server's alone), never the runner's clock
against nats-server's message timestamps. time-machine moves this Python process only, not
nats-server (a separate Go process): exactly a runner whose clock is off the server's."""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import time_machine

from dlq.cli import register, run
from engine.clock import ManualClock
from engine.fallback import FallbackCache
from engine.messages import event_headers
from engine.runtime import Hub
from engine.schedule import SCHEDULED_FOR
from engine.spec import Fallback
from engine.waiting import BUCKET, pending_key, pending_records
from sandbox.http_sink import HttpSink
from tests.helpers import StreamReader, project_from, started_hub, wait_until

UTC = timezone.utc


def config(sink_url: str = "http://127.0.0.1:9") -> str:
    return f"""
    streams:
      - {{name: WORK, subjects: ["work.>"]}}
      - {{name: OPS, subjects: ["ops.>"]}}
    endpoints:
      status_api:
        adapter: http
        base_url: {sink_url}
        method: GET
        path: /status/{{id}}
    dlq: {{stream: DLQ, max_age: 1d}}
    """


WAIT_FLOW = """
    name: wait-switch
    source: {subject: work.requested}
    steps:
      - call: {endpoint: status_api, into: answer}
      - until: {done: "answer.status == 'DONE'", every: [200ms], deadline: 48h, give_up: 7d, track: "{id}"}
      - publish: work.done
"""


async def request(js: Any, ident: str) -> None:
    await js.publish("work.requested", json.dumps({"id": ident}).encode(),
                     headers=event_headers("/test", "work.requested"))


async def record(js: Any, ident: str) -> dict[str, Any] | None:
    return next((r for r in await pending_records(js, "wait-switch") if r["key"] == ident), None)


async def checked(js: Any, ident: str, times: int) -> dict[str, Any]:
    """The wait's pending record once it has had `times` checks (a KV read: no event says so). The
    record read is the one returned: a second listing may miss a key being rewritten at that moment
    (nats-py's `keys()` lists through a watch; seen once in a full run)."""
    seen: list[dict[str, Any]] = []

    async def enough() -> bool:
        found = await record(js, ident)
        if found is not None and found["checks"] >= times:
            seen.append(found)
        return bool(seen)
    await wait_until(enough, timeout=30)
    return seen[0]


@pytest.mark.parametrize("days", [3, 8], ids=["past-the-deadline", "past-give-up"])
async def test_a_runner_clock_days_ahead_of_the_server_neither_alerts_nor_gives_up_at_once(
        tmp_path: Path, broker: Any, broker_js: Any, days: int) -> None:
    """A runner whose clock is 3 (or 8) days ahead of nats-server checks a fresh 48 h wait again and
    again without a deadline alert and without dead-lettering it (7 d give-up); it completes normally."""
    js = broker_js
    async with HttpSink() as sink:
        statuses = {"S1": {"status": "PENDING"}}
        sink.serve("/status", statuses)
        project = project_from(tmp_path, config(sink.url), WAIT_FLOW)
        with time_machine.travel(datetime.now(UTC) + timedelta(days=days), tick=True):
            runner_now = datetime.now(UTC)
            hub = await started_hub(project, broker.url)
            alerts, dead, done = [await StreamReader.open(js, s) for s in ("ops.alert.>", "dlq.>", "work.done")]
            try:
                await request(js, "S1")
                wait = await checked(js, "S1", 3)
                statuses["S1"] = {"status": "DONE"}
                await done.wait_for(1)
            finally:
                await hub.stop()
    assert not wait["alerted"] and abs(datetime.fromisoformat(wait["since"]) - runner_now) < timedelta(minutes=1)
    assert alerts.messages == [] and dead.messages == []
    assert await pending_records(js) == []


async def test_a_waits_deadline_and_give_up_are_read_on_the_hubs_clock(tmp_path: Path, broker: Any,
                                                                       broker_js: Any) -> None:
    """On a clock the test moves (across the spring DST night): no alert at 47 h, one alert past 48 h
    however many checks follow, then past 7 d the DLQ (DeadlineExceeded, dead-lettered at the hub's
    time) and the alert resolved."""
    js = broker_js
    clock = ManualClock(datetime(2027, 3, 26, 12, tzinfo=UTC))
    async with HttpSink() as sink:
        sink.serve("/status", {"S2": {"status": "PENDING"}})
        hub = Hub(project_from(tmp_path, config(sink.url), WAIT_FLOW), servers=[broker.url], clock=clock)
        await hub.start()
        alerts, dead = [await StreamReader.open(js, s) for s in ("ops.alert.>", "dlq.>")]
        try:
            await request(js, "S2")
            first = await checked(js, "S2", 2)
            assert first["since"] == "2027-03-26T12:00:00+00:00" and first["deadline_at"] == "2027-03-28T12:00:00+00:00"
            clock.advance(47 * 3600)
            assert not (await checked(js, "S2", first["checks"] + 2))["alerted"]
            clock.advance(2 * 3600)
            [firing] = await alerts.wait_for(1)
            later = await checked(js, "S2", (await record(js, "S2"))["checks"] + 3)
            assert later["alerted"] and len(alerts.messages) == 1
            clock.advance(5 * 86400)
            [letter] = await dead.wait_for(1)
            await alerts.wait_for(2)
        finally:
            await hub.stop()
    event = json.loads(firing.data)
    assert (event["alert"], event["state"], event["at"]) == ("deadline", "firing", "2027-03-28T13:00:00+00:00")
    assert letter.headers["Hub-Dlq-Error-Class"] == "DeadlineExceeded"
    assert letter.headers["Hub-Dlq-Last-Failure"].startswith("2027-04-02T13:00:00")
    assert [json.loads(m.data)["state"] for m in alerts.messages] == ["firing", "resolved"]


async def test_a_wait_whose_record_is_lost_starts_again_so_its_alert_comes_late_never_early(
        tmp_path: Path, broker: Any, broker_js: Any) -> None:
    """Its pending record deleted after 40 h, the wait starts again at the next check: no alert 10 h
    later (50 h after it began), the alert 48 h after the restart."""
    js = broker_js
    clock = ManualClock(datetime(2027, 10, 30, 12, tzinfo=UTC))  # the autumn DST night falls inside
    async with HttpSink() as sink:
        sink.serve("/status", {"S3": {"status": "PENDING"}})
        hub = Hub(project_from(tmp_path, config(sink.url), WAIT_FLOW), servers=[broker.url], clock=clock)
        await hub.start()
        try:
            await request(js, "S3")
            await checked(js, "S3", 2)
            clock.advance(40 * 3600)
            await (await js.key_value(BUCKET)).delete(pending_key("wait-switch", "S3"))
            again = await checked(js, "S3", 1)
            assert again["since"] == "2027-11-01T04:00:00+00:00"
            clock.advance(10 * 3600)
            assert not (await checked(js, "S3", again["checks"] + 2))["alerted"]
            clock.advance(40 * 3600)
            await wait_until(lambda: _alerted(js, "S3"), timeout=30)
        finally:
            await hub.stop()


async def _alerted(js: Any, ident: str) -> bool:
    found = await record(js, ident)
    return bool(found and found["alerted"])


BROKEN_FLOW = """
    name: strict-intake
    source: {subject: work.contract}
    schema: ContractSigned
    steps:
      - publish: work.accepted
"""


def dlq_args(tmp: Path, url: str, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="runner.py")
    register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["dlq", argv[0], "--nats", url, "--config", str(tmp / "config.yaml"),
                              "--flows", str(tmp / "flows"), *argv[1:]])


async def test_dlq_ages_and_since_use_the_records_failure_time_not_the_servers(
        tmp_path: Path, broker: Any, broker_js: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """Runner and CLI 3 days ahead of nats-server: a record dead-lettered just now is listed by
    `dlq list --since 1h` with an age of seconds, and `dlq stats` says the same."""
    js = broker_js
    project = project_from(tmp_path, config(), BROKEN_FLOW)
    with time_machine.travel(datetime.now(UTC) + timedelta(days=3), tick=True):
        hub = await started_hub(project, broker.url)
        dead = await StreamReader.open(js, "dlq.>")
        try:
            await js.publish("work.contract", b'{"contract_id": "C-1"}', headers=event_headers("/test", "work.contract"))
            await dead.wait_for(1)
        finally:
            await hub.stop()
        capsys.readouterr()
        assert await run(dlq_args(tmp_path, broker.url, "list", "--since", "1h", "--json")) == 0
        [listed] = json.loads(capsys.readouterr().out)
        assert await run(dlq_args(tmp_path, broker.url, "stats", "--json")) == 0
        stats = json.loads(capsys.readouterr().out)
    assert listed["error_class"] == "ValidationFailed" and 0 <= listed["age_s"] < 60
    assert listed["time"] == listed["last_failure"] and listed["stored"] < listed["time"]  # the server is 3 days behind
    assert 0 <= stats["flows"]["strict-intake"]["oldest_age_s"] < 60


LAGGING_FLOW = """
    name: slow-lookup
    source: {subject: work.lookup}
    steps:
      - call: {endpoint: status_api, into: answer}
    alerts: {lag: 1h, every: 1h}
"""


async def test_alert_lag_is_measured_on_the_servers_clock_alone(tmp_path: Path, broker: Any,
                                                                broker_js: Any) -> None:
    """A runner 3 days ahead of nats-server measures a message waiting a moment as a moment's lag,
    not 3 days (the consumer-info answer's `ts` against the message's stored time)."""
    js = broker_js
    async with HttpSink() as sink:
        sink.set_delay(30)  # the call holds the message unacknowledged while the lag is measured
        project = project_from(tmp_path, config(sink.url), LAGGING_FLOW)
        with time_machine.travel(datetime.now(UTC) + timedelta(days=3), tick=True):
            hub = await started_hub(project, broker.url)
            try:
                await js.publish("work.lookup", b'{"id": "L1"}', headers=event_headers("/test", "work.lookup"))
                await sink.wait_for(1)
                lag, threshold = (await hub.alerts.checks[0].measure())["lag"]
            finally:
                sink.recover()
                await hub.stop()
    assert 0 <= lag < 60 and threshold == 3600


async def test_a_fallback_answer_is_fresh_for_its_time_on_the_hubs_clock(js: Any, unique: str) -> None:
    """`fresh: 15m`: the answer remembered at 23:55 on 28 February 2028 is served from the cache at
    00:09 on the 29th and asked for again at 00:11."""
    clock = ManualClock(datetime(2028, 2, 28, 23, 55, tzinfo=UTC))
    cache = FallbackCache(js, clock)
    await cache.start()
    spec = Fallback(key="{postcode}", fresh="15m")
    lookup = {"postcode": unique}
    await cache.remember("powersales", spec, lookup, {"tariffs": [1, 2]})
    clock.advance(14 * 60)
    assert (await cache.fresh_answer("powersales", spec, lookup))["cached_at"] == "2028-02-28T23:55:00.000+00:00"
    clock.advance(2 * 60)
    assert await cache.fresh_answer("powersales", spec, lookup) is None


NIGHTLY_FLOW = """
    name: nightly-batch
    source:
      schedule: {cron: "30 2 * * *", timezone: Europe/Brussels}
      each: [{n: 1}]
    steps:
      - publish: work.batch
"""


async def test_the_scheduler_fires_on_the_hubs_clock_once_in_the_repeated_autumn_hour(
        tmp_path: Path, broker: Any, broker_js: Any) -> None:
    """A nightly 02:30 Brussels job on a clock the test moves through the autumn night: it fires at
    02:30 CEST, not again at 02:30 CET, then the next night."""
    js = broker_js
    clock = ManualClock(datetime(2026, 10, 25, 0, 0, tzinfo=UTC))
    hub = Hub(project_from(tmp_path, config(), NIGHTLY_FLOW), servers=[broker.url], clock=clock)
    await hub.start()
    ticks = await StreamReader.open(js, "hub.schedule.nightly-batch")
    try:
        await wait_until(lambda: _sleeping_until(clock, datetime(2026, 10, 25, 0, 30, tzinfo=UTC)))
        clock.set(datetime(2026, 10, 25, 0, 31, tzinfo=UTC))
        await ticks.wait_for(1)
        # next: the next night's 02:30 CET, not 01:30Z tonight (02:30 CET, the repeated hour)
        await wait_until(lambda: _sleeping_until(clock, datetime(2026, 10, 26, 1, 30, tzinfo=UTC)))
        clock.set(datetime(2026, 10, 26, 1, 31, tzinfo=UTC))
        await ticks.wait_for(2)
    finally:
        await hub.stop()
    assert [m.headers[SCHEDULED_FOR] for m in ticks.messages] == ["2026-10-25T00:30:00+00:00",
                                                                 "2026-10-26T01:30:00+00:00"]


async def _sleeping_until(clock: ManualClock, moment: datetime) -> bool:
    """Whether the scheduler waits for `moment` on the test's clock (its next slot)."""
    return moment in clock.sleepers
