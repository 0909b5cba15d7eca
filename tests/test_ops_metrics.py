"""/metrics of a running hub, scraped over HTTP and parsed with prometheus-client's own parser: the
counts agree with what the flows did, the store's backlog and lag show up, and every name and label
follows Prometheus conventions."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client import Histogram, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from hypothesis import given, settings, strategies as st

from engine.messages import event_headers
from engine.metrics import CATALOGUE
from engine.probes import LocalHistogram, MESSAGE_BUCKETS
from sandbox.http_sink import HttpSink
from tests.helpers import project_from, settled, started_hub, wait_until


def config(u: str, sink_url: str) -> str:
    return f"""
    streams:
      - {{name: IN{u}, subjects: ["{u}.>"]}}
    endpoints:
      target: {{adapter: http, base_url: "{sink_url}", path: "/effects/{{n}}", timeout: 60s,
                circuit_breaker: {{failures: 50, window: 10s, reset: 1s}}}}
    ops: {{http: {{port: 0}}}}
    """


def flows(u: str) -> list[str]:
    return [f"""
    name: {u}-route
    source: {{subject: {u}.in.a}}
    steps:
      - filter: "keep"
      - publish: {u}.out.a
    """, f"""
    name: {u}-call
    source: {{subject: {u}.in.b}}
    steps:
      - call: {{endpoint: target, operation: post_effect}}
    on_error: {{retry: [10ms, 10ms], redeliver: [100ms]}}
    limits: {{concurrency: 1}}
    """]


async def scrape(url: str) -> dict[str, list[Any]]:
    """name -> samples, from the exposition text as Prometheus would read it."""
    async with aiohttp.ClientSession() as session:
        async with session.get(url + "/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
    out: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def value(samples: dict[str, list[Any]], name: str, **labels: str) -> float:
    found = [s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())]
    assert found, f"no sample {name}{labels}"
    return sum(found)


async def dlq_records(js: Any, flow: str) -> list[Any]:
    state = (await js.stream_info("DLQ", subjects_filter=f"dlq.{flow}")).state
    count = (state.subjects or {}).get(f"dlq.{flow}", 0)
    sub = await js.subscribe(f"dlq.{flow}", ordered_consumer=True)
    records = [await sub.next_msg(timeout=5) for _ in range(count)]
    await sub.unsubscribe()
    return records


async def test_a_scrape_counts_what_the_flows_did(tmp_path: Path, nats_url: str, js, unique: str):
    """Ten messages through a router (five filtered), five calls that succeed after two 503s, one
    unparseable payload and one refusal: the scrape shows exactly those counts, the dead letters by
    the class their DLQ records carry, the DLQ depth, and one latency observation per call try."""
    u = unique
    async with HttpSink() as sink:
        hub = await started_hub(project_from(tmp_path, config(u, sink.url), *flows(u)), nats_url)
        try:
            for i in range(10):
                await js.publish(f"{u}.in.a", json.dumps({"keep": i % 2 == 0}).encode(),
                                 headers=event_headers("/test", f"{u}.in.a"))
            sink.fail_next(2, status=503, retry_after="0")
            for n in range(5):
                await js.publish(f"{u}.in.b", json.dumps({"n": n}).encode(), headers=event_headers("/test", f"{u}.in.b"))
            await sink.wait_for(7)
            sink.fail_next(1, status=400, body="no such effect")
            await js.publish(f"{u}.in.b", json.dumps({"n": 99}).encode(), headers=event_headers("/test", f"{u}.in.b"))
            await js.publish(f"{u}.in.b", b"<not json>", headers=event_headers("/test", f"{u}.in.b"))
            await wait_until(lambda: settled(js, f"IN{u}", f"{u}-route", f"{u}-call"))

            samples = await scrape(hub.ops.server.url)
            records = await dlq_records(js, f"{u}-call")
        finally:
            await hub.stop()
    route, call = f"{u}-route", f"{u}-call"
    assert value(samples, "hub_flow_messages_received_total", flow=route) == 10
    assert value(samples, "hub_flow_messages_done_total", flow=route) == 5
    assert value(samples, "hub_flow_messages_filtered_total", flow=route) == 5
    assert value(samples, "hub_flow_messages_published_total", flow=route) == 5
    assert value(samples, "hub_flow_messages_done_total", flow=call) == 5
    classes = sorted(r.headers["Hub-Dlq-Error-Class"] for r in records)
    assert len(classes) == 2 and "UnparseablePayload" in classes
    for error_class in classes:
        assert value(samples, "hub_flow_dead_letters_total", flow=call, error_class=error_class) == 1
    assert value(samples, "hub_dead_letter_messages", flow=call) == 2
    assert value(samples, "hub_flow_calls_total", flow=call) == 6
    assert value(samples, "hub_flow_call_attempts_total", flow=call) == 8  # 5 + 2 retries + the refused one
    assert value(samples, "hub_call_duration_seconds_count", endpoint="target", operation="post_effect") == 8
    assert value(samples, "hub_call_errors_total", endpoint="target", operation="post_effect") == 3
    assert value(samples, "hub_flow_message_duration_seconds_count", flow=call) == 7
    assert value(samples, "hub_flow_step_duration_seconds_count", flow=route, step="steps[0].filter") == 10
    assert value(samples, "hub_flow_step_duration_seconds_count", flow=route, step="steps[1].publish") == 5
    assert value(samples, "hub_endpoint_circuit_state", endpoint="target", state="closed") == 1
    assert value(samples, "hub_consumer_pending_messages", flow=call) == 0
    assert value(samples, "hub_store_up") == 1 and value(samples, "hub_runner_ready") == 1


async def test_backlog_and_lag_of_a_stuck_flow_come_from_the_store(tmp_path: Path, nats_url: str, js, unique: str):
    """A flow whose target stalls holds one message and has four more waiting: the scrape shows 4
    pending, 1 unacknowledged, the one call in flight and the age of the held message as lag."""
    u = unique
    stuck = f"""
    name: {u}-call
    source: {{subject: {u}.in.b}}
    steps:
      - call: {{endpoint: target}}
    limits: {{concurrency: 1, max_in_flight: 1, batch: 1}}
    """
    async with HttpSink() as sink:
        sink.set_delay(60)
        hub = await started_hub(project_from(tmp_path, config(u, sink.url), stuck), nats_url)
        try:
            for n in range(5):
                await js.publish(f"{u}.in.b", json.dumps({"n": n}).encode(), headers=event_headers("/t", f"{u}.in.b"))
            await sink.wait_for(1)
            first = await scrape(hub.ops.server.url)
            sink.recover()
            await wait_until(lambda: settled(js, f"IN{u}", f"{u}-call"))
        finally:
            await hub.stop()
    flow = f"{u}-call"
    assert value(first, "hub_consumer_pending_messages", flow=flow) == 4
    assert value(first, "hub_consumer_ack_pending_messages", flow=flow) == 1
    assert value(first, "hub_endpoint_calls_in_flight", endpoint="target") == 1
    assert value(first, "hub_flow_in_flight_messages", flow=flow) == 1
    assert 0 < value(first, "hub_consumer_lag_seconds", flow=flow) < 30  # the first message's age, not 0


async def test_names_and_labels_follow_prometheus_conventions(tmp_path: Path, nats_url: str, js, unique: str):
    """Every family the hub exposes is in the catalogue; counters end in _total, durations in _seconds;
    labels come from a small fixed set and no label value is a message id."""
    u = unique
    async with HttpSink() as sink:
        hub = await started_hub(project_from(tmp_path, config(u, sink.url), *flows(u)), nats_url)
        try:
            headers = event_headers("/t", f"{u}.in.b", msg_id=f"id-{u}-1")
            await js.publish(f"{u}.in.b", json.dumps({"n": 1}).encode(), headers=headers)
            await wait_until(lambda: settled(js, f"IN{u}", f"{u}-call"))
            async with aiohttp.ClientSession() as session:
                async with session.get(hub.ops.server.url + "/metrics") as resp:
                    text = await resp.text()
        finally:
            await hub.stop()
    allowed = {"flow", "step", "endpoint", "operation", "error_class", "state", "reason", "le"}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("hub_"):
            assert family.name.startswith(("process_", "python_")), family.name
            continue
        exposed = family.name + ("_total" if family.type == "counter" else "")
        assert exposed in CATALOGUE, exposed
        assert re.fullmatch(r"hub_[a-z_]+", exposed)
        kind = CATALOGUE[exposed][0]
        assert family.type == kind
        if "duration" in exposed or "lag" in exposed or "wait_seconds" in exposed:
            assert exposed.endswith("_seconds")
        for sample in family.samples:
            assert set(sample.labels) <= allowed, sample
            assert not any(f"id-{u}" in v for v in sample.labels.values())
    for name, (kind, _, labels) in CATALOGUE.items():
        assert (kind == "counter") == name.endswith("_total"), name
        assert set(labels) <= allowed


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=1000, allow_nan=False), max_size=50))
def test_local_histograms_bucket_like_prometheus_client(values: list[float]):
    """The lock-free histogram the probes fill counts each value into the same buckets, with the same
    sum, as prometheus-client's own Histogram."""
    ours = LocalHistogram(MESSAGE_BUCKETS)
    theirs = Histogram("x_seconds", "x", buckets=MESSAGE_BUCKETS, registry=CollectorRegistry())
    for v in values:
        ours.observe(v)
        theirs.observe(v)
    buckets = {s.labels["le"]: s.value for s in next(iter(theirs.collect())).samples if s.name.endswith("_bucket")}
    mine = dict(ours.cumulative())
    assert {float(k): v for k, v in mine.items()} == {float(k): v for k, v in buckets.items()}
    assert abs(ours.sum - sum(values)) < 1e-6 * max(1.0, sum(values))
