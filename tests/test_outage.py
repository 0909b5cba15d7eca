"""The outage bookkeeping the imap, mqtt and sftp ingresses share: what gets reported, what is counted."""

from __future__ import annotations

import asyncio

from engine.outage import Outage


def test_an_outage_is_reported_when_it_starts_and_when_its_kind_changes_not_per_attempt():
    outage = Outage(0.5, 30)
    assert outage.failed() is True                  # the server went away: report
    assert outage.failed() is False                 # still away: no second report
    assert outage.failed("refused") is True         # back with another host key: a new kind, report
    assert outage.failed("refused") is False
    ended = outage.recovered()
    assert ended is not None and ended["attempts"] == 4 and ended["down_s"] >= 0
    assert outage.attempts == 0 and outage.kind is None and outage.retry == "0.5s doubling to 30s"


def test_the_first_working_session_is_not_a_reconnect_and_a_quiet_recovery_reports_nothing():
    outage = Outage(0.5, 30)
    assert outage.recovered() is None and outage.reconnects == 0   # first connect, no outage before it
    outage.failed()
    assert outage.recovered() is not None and outage.reconnects == 1
    assert outage.recovered() is None and outage.reconnects == 2   # a new session without an outage


async def test_a_pause_ends_as_soon_as_the_ingress_is_stopped():
    outage = Outage(3600, 3600)
    stop = asyncio.Event()
    stop.set()
    async with asyncio.timeout(5):
        await outage.pause(stop)
