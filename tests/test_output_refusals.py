"""A stream that refuses an output is named, not taken for an outage (issue 17's note on engine/outputs.py).

A stream the hub does not manage may be at its limits with `discard: new` (err_code 10077) or smaller
than the message (max_msg_size, 10054). nats-py 2.16's `publish_async` never completed its future on
such an answer, so the hub waited out its publish timeout, called it a broker fault and retried the
output for ever, holding the message. Against a real nats-server: the refusal arrives on the future,
is classified StreamFull (retried on the flow's schedule, then dead-lettered) or PublishRefused
(dead-lettered at once), and the DLQ record names the stream's reason and the subject.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import nats.js.errors
import pytest
from nats.js.api import DiscardPolicy, StreamConfig

from engine.errors import PublishRefused, StreamFull, classify, is_broker_fault
from engine.nats_client import connect
from sandbox.http_sink import HttpSink
from tests.helpers import StreamReader, project_from, started_hub

# a refused future that never completes fails here instead of hanging the test
NO_ANSWER = 20.0


@pytest.fixture
async def hub_js(nats_url: str):
    nc = await connect(servers=[nats_url])
    yield nc.jetstream(timeout=NO_ANSWER + 10)
    await nc.close()


async def test_publish_async_hears_a_full_stream_and_a_too_small_one(hub_js, unique: str) -> None:
    await hub_js.add_stream(StreamConfig(name=f"FULL{unique}", subjects=[f"{unique}.full"], max_msgs=1,
                                         discard=DiscardPolicy.NEW))
    await hub_js.add_stream(StreamConfig(name=f"SMALL{unique}", subjects=[f"{unique}.small"], max_msg_size=64))
    first = await asyncio.wait_for(await hub_js.publish_async(f"{unique}.full", b"1"), NO_ANSWER)
    assert first.seq == 1

    with pytest.raises(nats.js.errors.APIError) as full:
        await asyncio.wait_for(await hub_js.publish_async(f"{unique}.full", b"2"), NO_ANSWER)
    err = classify(full.value)
    assert isinstance(err, StreamFull) and err.transient and not is_broker_fault(full.value)
    assert "maximum messages exceeded" in str(err) and "10077" in str(err)

    with pytest.raises(nats.js.errors.APIError) as small:
        await asyncio.wait_for(await hub_js.publish_async(f"{unique}.small", b"x" * 200), NO_ANSWER)
    err = classify(small.value)
    assert isinstance(err, PublishRefused) and not err.transient
    assert "message size exceeds maximum allowed" in str(err)


def test_a_store_failure_that_is_not_a_limit_stays_an_outage() -> None:
    """10077 also carries a store's own failure (a disk error): that is the broker's, waited out."""
    exc = nats.js.errors.ServiceUnavailableError(code=503, err_code=10077, description="write error: no space left")
    assert is_broker_fault(exc)


async def test_a_pure_flow_dead_letters_an_output_a_full_stream_refuses(tmp_path: Path, nats_url: str, js,
                                                                        unique: str) -> None:
    project = project_from(tmp_path, f"""
    nats: {{publish_timeout: {NO_ANSWER:g}s}}
    streams:
      - {{name: IN{unique}, subjects: ["{unique}.in.>"]}}
      - {{name: OUT{unique}, subjects: ["{unique}.out.>"]}}
    """, f"""
    name: {unique}
    source: {{subject: {unique}.in.x}}
    steps:
      - publish: {unique}.out.x
    on_error: {{retry: [], redeliver: [10ms]}}
    """)
    hub = await started_hub(project, nats_url)
    try:
        # another team made the output stream full and refusing (the hub's own streams discard old)
        info = await js.stream_info(f"OUT{unique}")
        await js.update_stream(replace(info.config, max_msgs=1, discard=DiscardPolicy.NEW))
        await js.publish(f"{unique}.out.x", b'{"already": "there"}')
        dlq = await StreamReader.open(js, f"dlq.{unique}")
        await js.publish(f"{unique}.in.x", b'{"n": 1}', headers={"ce-id": "refused-1"})
        record = (await dlq.wait_for(1, timeout=NO_ANSWER))[0]
        assert record.headers["Hub-Dlq-Error-Class"] == "StreamFull"
        error = record.headers["Hub-Dlq-Error"]
        assert "maximum messages exceeded" in error and f"{unique}.out.x" in error
        assert record.headers["Hub-Dlq-Deliveries"] == "2"  # the schedule ran: one redelivery, then the DLQ
    finally:
        await hub.stop()


async def test_a_call_flow_dead_letters_an_output_the_stream_refuses_and_goes_on(tmp_path: Path, nats_url: str, js,
                                                                                 unique: str) -> None:
    """The call's answer is too big for the output stream's max_msg_size: PublishRefused in the DLQ at
    once, the target called once; the next message's smaller answer goes through."""
    async with HttpSink() as sink:
        project = project_from(tmp_path, f"""
        nats: {{publish_timeout: {NO_ANSWER:g}s}}
        streams:
          - {{name: IN{unique}, subjects: ["{unique}.in.>"]}}
          - {{name: OUT{unique}, subjects: ["{unique}.out.>"]}}
        endpoints:
          echo: {{adapter: http, base_url: "{sink.url}", path: /echo}}
        """, f"""
        name: {unique}
        source: {{subject: {unique}.in.x}}
        steps:
          - call: {{endpoint: echo}}
          - publish: {unique}.out.x
        on_error: {{retry: [], redeliver: [10ms]}}
        """)
        hub = await started_hub(project, nats_url)
        try:
            info = await js.stream_info(f"OUT{unique}")
            await js.update_stream(replace(info.config, max_msg_size=2048))
            dlq = await StreamReader.open(js, f"dlq.{unique}")
            out = await StreamReader.open(js, f"{unique}.out.x")
            await js.publish(f"{unique}.in.x", b'{"text": "%s"}' % (b"x" * 4000), headers={"ce-id": "big"})
            await js.publish(f"{unique}.in.x", b'{"text": "short"}', headers={"ce-id": "small"})
            record = (await dlq.wait_for(1, timeout=NO_ANSWER))[0]
            assert record.headers["Hub-Dlq-Error-Class"] == "PublishRefused"
            assert "message size exceeds maximum allowed" in record.headers["Hub-Dlq-Error"]
            assert record.headers["Hub-Dlq-Deliveries"] == "1"  # permanent: no redelivery
            assert (await out.wait_for(1, timeout=NO_ANSWER))[0].headers["ce-id"] != "big"
            assert sink.applied.get("big") == 1
        finally:
            await hub.stop()
