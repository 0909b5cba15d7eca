"""The `salesforce:` source against the emulated Pub/Sub API: store first, checkpoint after, resume
with CUSTOM replay, and the 72-hour retention edge."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

import nats
import pytest

from adapters.salesforce import read_checkpoint, write_checkpoint
from engine.clock import ManualClock
from sandbox.salesforce import SalesforceOrg
from engine.runtime import Hub
from tests.helpers import StreamReader, project_from, started_hub
from tests.salesforce_org import config, connect

FLOW = "sf-accounts"
TOPIC = "/data/AccountChangeEvent"


def flow(batch: int = 20) -> str:
    return f"""
    name: {FLOW}
    source: {{salesforce: {{endpoint: salesforce, topic: {TOPIC}, batch: {batch}}}}}
    steps:
      - publish: crm.test.account-event
    """


async def stored_events(js, expected: int) -> list[dict]:
    reader = await StreamReader.open(js, f"hub.ingress.{FLOW}")
    await reader.wait_for(expected, timeout=30)
    await asyncio.sleep(0.3)  # anything beyond `expected` would be a repeat: give it the time to show
    payloads = reader.payloads()
    await reader.sub.unsubscribe()
    return payloads


@pytest.fixture
async def org():
    org = await SalesforceOrg(keepalive=0.5).start()
    connect(org)
    yield org
    await org.stop()


@pytest.fixture
async def nc(broker):
    conn = await nats.connect(broker.url)
    yield conn
    await conn.close()


async def burst(org: SalesforceOrg, start: int, count: int) -> None:
    """Account edits in Salesforce, a few at a time, while the hub runs (and restarts)."""
    for i in range(start, start + count):
        org.change("Account", "PLU_Account_Id__c", f"A-{i}", {"Name": f"Account {i}", "BillingCity": "Gent"})
        if i % 10 == 9:
            await asyncio.sleep(0.01)


async def test_a_crash_between_store_and_checkpoint_in_a_burst_loses_and_repeats_no_event(org, broker, nc, tmp_path):
    """A hub that dies after storing a batch but before checkpointing it, in the middle of a CDC burst, and
    a graceful restart after it: every one of 600 change events is stored exactly once."""
    project = project_from(tmp_path, config(org), flow())
    producer = asyncio.create_task(burst(org, 0, 600))
    hub = await started_hub(project, broker.url)
    ingress = hub.ingresses[FLOW]
    await ingress.wait_for(lambda i: i.stored >= 150, timeout=30)

    real_save = ingress._save

    async def crash(replay_id: bytes) -> None:  # the process dies right after the store was confirmed
        raise asyncio.CancelledError

    ingress._save = crash
    await asyncio.wait({ingress._task}, timeout=30)
    assert ingress._task.done()
    ingress._save = real_save
    crashed_at = await read_checkpoint(nc.jetstream(), FLOW)
    await hub.stop()

    hub = await started_hub(project, broker.url)  # restart 1: resumes after the stale checkpoint
    second = hub.ingresses[FLOW]
    await second.wait_for(lambda i: i.stored >= 150, timeout=30)
    await hub.stop()                              # restart 2: graceful, still mid-burst
    hub = await started_hub(project, broker.url)
    await producer
    topic = org.bus.topics[TOPIC]
    payloads = await stored_events(nc.jetstream(), 600)
    try:
        ids = [p["event_id"] for p in payloads]
        assert len(ids) == 600 and set(ids) == {e.event_id for e in topic.events}
        assert second.duplicates >= 1, "the crash window was not exercised: nothing was received twice"
        assert crashed_at is not None and int(crashed_at["replay_id"], 16) < int(payloads[-1]["replay_id"], 16)
        outputs = await StreamReader.open(nc.jetstream(), "crm.test.account-event")
        await outputs.wait_for(600)
        assert len({json.loads(m.data)["event_id"] for m in outputs.messages}) == len(outputs.messages) == 600
    finally:
        await hub.stop()


async def test_a_checkpoint_older_than_the_retention_resumes_from_earliest_with_a_gap_alert(org, broker, nc,
                                                                                        tmp_path):
    """A hub that was down for four days: it resumes from the earliest retained event and ops get an
    alert naming the span whose events may be lost."""
    js = nc.jetstream()
    for i in range(5):
        org.change("Account", "PLU_Account_Id__c", f"A-{i}", {"Name": f"Account {i}"})
    four_days_ago = (datetime.now(timezone.utc) - timedelta(days=4)).replace(microsecond=0)
    project = project_from(tmp_path, config(org), flow())
    await write_checkpoint(js, FLOW, TOPIC, "00000000000000aa", four_days_ago.isoformat())
    hub = await started_hub(project, broker.url)
    try:
        alerts = await StreamReader.open(js, f"ops.alert.{FLOW}")
        events = await stored_events(js, 5)
        alert = (await alerts.wait_for(1))[0]
        body = json.loads(alert.data)
        assert body["alert"] == "replay_gap" and body["resumed"] == "earliest"
        assert body["gap_from"] == four_days_ago.isoformat()
        assert datetime.fromisoformat(body["gap_until"]) > four_days_ago + timedelta(hours=23)
        assert len(events) == 5
    finally:
        await hub.stop()


async def test_a_replay_id_the_bus_no_longer_keeps_raises_the_gap_alert(broker, nc, tmp_path):
    """The org's clock moves past the 72 h retention while the hub is stopped: Salesforce refuses the
    stored replay id, the hub alerts and takes what is still retained, nothing twice."""
    clock = ManualClock(datetime(2027, 3, 1, 8, 0, tzinfo=timezone.utc))
    org = await SalesforceOrg(clock=clock, keepalive=0.5).start()
    connect(org)
    js = nc.jetstream()
    try:
        project = project_from(tmp_path, config(org), flow())
        for i in range(3):
            org.change("Account", "PLU_Account_Id__c", f"A-{i}", {"Name": f"Account {i}"})
        hub = await started_hub(project, broker.url)
        await hub.ingresses[FLOW].wait_for(lambda i: i.stored == 3)
        await hub.stop()
        clock.advance(73 * 3600)          # the hub's events age out of the bus
        for i in range(3, 7):
            org.change("Account", "PLU_Account_Id__c", f"A-{i}", {"Name": f"Account {i}"})
        hub = await started_hub(project, broker.url)
        try:
            alerts = await StreamReader.open(js, f"ops.alert.{FLOW}")
            body = json.loads((await alerts.wait_for(1))[0].data)
            assert body["alert"] == "replay_gap" and "no longer retains" in body["reason"]
            events = await stored_events(js, 7)
            assert [e["payload"]["PLU_Account_Id__c"] for e in events] == [f"A-{i}" for i in range(7)]
        finally:
            await hub.stop()
    finally:
        await org.stop()


async def test_an_ended_session_is_renewed_and_the_subscription_goes_on(org, broker, nc, tmp_path):
    """Salesforce ends every session (an admin revoked them): the stream fails UNAUTHENTICATED, the
    hub logs in again and resumes after its checkpoint; no event is lost or repeated."""
    project = project_from(tmp_path, config(org), flow())
    hub = await started_hub(project, broker.url)
    try:
        ingress = hub.ingresses[FLOW]
        await burst(org, 0, 30)
        await ingress.wait_for(lambda i: i.stored == 30)
        logins = ingress.tokens.logins
        org.sessions.expire_all()
        await burst(org, 30, 30)
        await ingress.wait_for(lambda i: i.stored == 60, timeout=20)
        assert ingress.tokens.logins == logins + 1 and ingress.duplicates == 0
        assert len(await stored_events(nc.jetstream(), 60)) == 60
    finally:
        await hub.stop()


async def test_keep_alives_refresh_the_checkpoint_of_an_idle_channel(org, broker, nc, tmp_path):
    """With nothing happening in Salesforce, the keep-alives' latest replay id keeps the checkpoint
    young, so a quiet channel never looks older than the retention."""
    project = project_from(tmp_path, config(org), flow())
    hub = await started_hub(project, broker.url)
    try:
        ingress = hub.ingresses[FLOW]
        await ingress.wait_for(lambda i: i.keepalives >= 2, timeout=10)
        checkpoint = await read_checkpoint(nc.jetstream(), FLOW)
        assert checkpoint is not None and checkpoint["topic"] == TOPIC
        assert int(checkpoint["replay_id"], 16) == org.bus.topics[TOPIC].latest
    finally:
        await hub.stop()


async def test_the_checkpoint_age_is_read_on_the_hubs_clock(org, broker, nc, tmp_path):
    """Checkpoints are stamped on the hub's clock (Hub(clock=...), `demo --at`) and their age against
    the 72 h retention is read on it: with the hub's clock 73 h on while Salesforce still retains every
    event, the restart resumes from the earliest event with a gap alert naming the span on that clock,
    and stores nothing twice."""
    clock = ManualClock(datetime(2027, 3, 1, 8, 0, tzinfo=timezone.utc))
    project = project_from(tmp_path, config(org), flow())
    js = nc.jetstream()
    for i in range(3):
        org.change("Account", "PLU_Account_Id__c", f"A-{i}", {"Name": f"Account {i}"})
    hub = Hub(project, servers=[broker.url], clock=clock)
    await hub.start()
    try:
        await hub.ingresses[FLOW].wait_for(lambda i: i.stored == 3)
    finally:
        await hub.stop()
    assert (await read_checkpoint(js, FLOW))["at"] == "2027-03-01T08:00:00+00:00"
    clock.advance(73 * 3600)
    org.change("Account", "PLU_Account_Id__c", "A-3", {"Name": "Account 3"})
    alerts = await StreamReader.open(js, f"ops.alert.{FLOW}")
    hub = Hub(project, servers=[broker.url], clock=clock)
    await hub.start()
    try:
        body = json.loads((await alerts.wait_for(1))[0].data)
        await hub.ingresses[FLOW].wait_for(lambda i: i.stored == 1 and i.duplicates == 3)
    finally:
        await hub.stop()
    assert body["alert"] == "replay_gap" and body["reason"] == "the checkpoint is older than the retention"
    assert (body["gap_from"], body["gap_until"]) == ("2027-03-01T08:00:00+00:00", "2027-03-01T09:00:00+00:00")
    events = await stored_events(js, 4)
    assert [e["payload"]["PLU_Account_Id__c"] for e in events] == [f"A-{i}" for i in range(4)]
