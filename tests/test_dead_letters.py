"""Exhausted schedules and crashed workers end in the DLQ with the whole story."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from sandbox.http_sink import HttpSink
from tests.helpers import StreamReader, project_from, started_hub


def config_for(u: str, extra: str = "") -> str:
    return f"""
    streams:
      - {{name: IN{u}, subjects: ["{u}.in.>"]}}
    {extra}
    """


async def test_an_exhausted_schedule_dead_letters_with_every_failure(tmp_path: Path, nats_url: str, js, unique: str):
    """A target that keeps answering 500: in-process retries, then redeliveries, then the DLQ with
    the history of every attempt (first and last failure, error per attempt)."""
    async with HttpSink() as sink:
        sink.set_status(500)
        project = project_from(tmp_path, config_for(unique, f"""
    endpoints:
      target: {{adapter: http, base_url: "{sink.url}", circuit_breaker: null}}
        """), f"""
        name: {unique}
        source: {{subject: {unique}.in.x}}
        steps:
          - call: {{endpoint: target}}
        on_error: {{retry: [10ms], redeliver: [100ms, 200ms]}}
        """)
        hub = await started_hub(project, nats_url)
        try:
            dlq = await StreamReader.open(js, f"dlq.{unique}")
            await js.publish(f"{unique}.in.x", b'{"n": 1}', headers={"ce-id": "one"})
            record = (await dlq.wait_for(1))[0]
            h = record.headers
            assert h["Hub-Dlq-Error-Class"] == "TargetServerError" and h["Hub-Dlq-Transient"] == "true"
            history = json.loads(h["Hub-Dlq-History"])
            # one entry per call attempt, in-process retries included: what the target saw
            assert [(e["delivery"], e["attempt"]) for e in history] == [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1), (3, 2)]
            assert [e.get("final", False) for e in history] == [False, True] * 3
            assert h["Hub-Dlq-Attempts"] == "3" and h["Hub-Dlq-Deliveries"] == "3" and h["Hub-Dlq-Calls"] == "6"
            assert h["Hub-Dlq-First-Failure"] == history[0]["at"] < h["Hub-Dlq-Last-Failure"]
            assert sink.count == 6  # 3 deliveries x (1 call + 1 in-process retry)
            assert json.loads(record.data) == {"n": 1}
        finally:
            await hub.stop()


async def test_a_message_that_never_gets_an_outcome_is_caught_by_the_max_deliveries_backstop(
        tmp_path: Path, nats_url: str, js, unique: str):
    """A worker that dies on a message never reports it; JetStream's MAX_DELIVERIES advisory does,
    and the hub turns it into a DLQ record holding the original message."""
    project = project_from(tmp_path, config_for(unique), f"""
        name: {unique}
        source: {{subject: {unique}.in.x}}
        steps:
          - transform: readings.passthrough
          - publish: {unique}.in.out
        """)
    hub = await started_hub(project, nats_url)
    try:
        await hub.runners[unique].stop()  # this flow's own worker is gone; a "crashing" one takes over
        await js.add_consumer(f"IN{unique}", ConsumerConfig(
            durable_name=unique, filter_subject=f"{unique}.in.x", ack_policy=AckPolicy.EXPLICIT,
            ack_wait=0.3, max_deliver=2, max_ack_pending=2048))
        dlq = await StreamReader.open(js, f"dlq.{unique}")
        await js.publish(f"{unique}.in.x", b'{"poison": true}', headers={"ce-id": "poison"})
        crashing = await js.pull_subscribe_bind(unique, f"IN{unique}")
        for _ in range(2):  # delivered, never acked (the worker "died"), twice
            await crashing.fetch(1, timeout=5)
        with pytest.raises(TimeoutError):  # the next pull gets nothing: JetStream gave up on it
            await crashing.fetch(1, timeout=1)
        record = (await dlq.wait_for(1, timeout=20))[0]
        assert record.headers["Hub-Dlq-Error-Class"] == "MaxDeliveriesExceeded"
        assert record.headers["ce-id"] == "poison" and json.loads(record.data) == {"poison": True}
        assert record.headers["Hub-Dlq-Subject"] == f"{unique}.in.x"
    finally:
        await hub.stop()
