"""Traces as a tracing backend receives them: spans per message per flow, per step, per outside call
and per KV operation, joined by `traceparent` across flows and runners (the SDK's in-memory
exporter stands in for the backend; one test sends OTLP to a real HTTP collector endpoint)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiohttp import web
from hypothesis import given, settings, strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, TraceIdRatioBased
from opentelemetry.trace import SpanKind

from engine.messages import event_headers
from engine.tracing import HubTracer
from sandbox.http_sink import HttpSink
from tests.helpers import StreamReader, project_from, settled, started_hub, wait_until

ORIGIN = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"  # the CRM's span (W3C example)


def config(u: str, sink_url: str) -> str:
    return f"""
    streams:
      - {{name: TR{u}, subjects: ["{u}.>"]}}
    endpoints:
      target: {{adapter: http, base_url: "{sink_url}", path: "/effects/{{n}}"}}
    """


def first_flow(u: str) -> str:  # runner A: a call (idempotency-checked, so KV too), then a publish
    return f"""
    name: {u}-one
    source: {{subject: {u}.in}}
    steps:
      - filter: "n"
      - call: {{endpoint: target, operation: apply, into: answer}}
      - publish: {u}.mid
    """


def second_flow(u: str) -> str:  # runner B: reads what A published
    return f"""
    name: {u}-two
    source: {{subject: {u}.mid}}
    steps:
      - publish: {u}.out
    """


def spans_of(exporter: InMemorySpanExporter) -> list[Any]:
    return list(exporter.get_finished_spans())


def hexid(n: int, width: int) -> str:
    return f"{n:0{width}x}"


async def test_a_trace_runs_across_two_flows_on_two_runners(tmp_path: Path, nats_url: str, js, unique: str):
    """A message from an outside span is one trace on both runners: runner A's flow span is the
    child of the sender's span, with a span per step, the HTTP call (the target receives that call's
    traceparent) and the KV claim; runner B's flow span is the child of A's publish step; the final
    output names B's publish step as parent."""
    u = unique
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with HttpSink() as sink:
        hub_a = hub_b = None
        try:
            from engine.runtime import Hub

            hub_a = Hub(project_from(tmp_path / "a", config(u, sink.url), first_flow(u)), servers=[nats_url])
            hub_b = Hub(project_from(tmp_path / "b", config(u, sink.url), second_flow(u)), servers=[nats_url])
            seen_a, seen_b = InMemorySpanExporter(), InMemorySpanExporter()
            hub_a.ops.trace_to(seen_a)
            hub_b.ops.trace_to(seen_b)
            await hub_a.start()
            await hub_b.start()
            out = await StreamReader.open(js, f"{u}.out")
            headers = {**event_headers("/crm", f"{u}.in"), "traceparent": ORIGIN}
            await js.publish(f"{u}.in", json.dumps({"n": 7}).encode(), headers=headers)
            await out.wait_for(1)
            await wait_until(lambda: settled(js, f"TR{u}", f"{u}-one", f"{u}-two"))
        finally:
            for hub in (hub_b, hub_a):
                if hub is not None:
                    await hub.stop()
    a, b = spans_of(seen_a), spans_of(seen_b)
    trace_id = int(ORIGIN[3:35], 16)
    assert {s.context.trace_id for s in a + b} == {trace_id}
    by_name = {s.name: s for s in a + b}
    one, two = by_name[f"{u}-one"], by_name[f"{u}-two"]
    assert one.kind == SpanKind.CONSUMER and one.parent.span_id == int(ORIGIN[36:52], 16)
    assert one.attributes["hub.outcome"] == "done" and one.attributes["messaging.destination.name"] == f"{u}.in"
    steps = {s.name: s for s in a if s.parent is not None and s.parent.span_id == one.context.span_id}
    assert {"steps[0].filter", "steps[1].call", "steps[2].publish"} <= set(steps)
    http = next(s for s in a if s.name == "target apply")
    assert http.kind == SpanKind.CLIENT and http.parent.span_id == steps["steps[1].call"].context.span_id
    sent = sink.received[0].headers["traceparent"]
    assert sent == f"00-{hexid(trace_id, 32)}-{hexid(http.context.span_id, 16)}-01"
    kv = [s for s in a if s.name.startswith("kv ") and s.parent.span_id == one.context.span_id]
    assert any(s.name == "kv create hub_idempotency" for s in kv)
    assert two.parent.span_id == steps["steps[2].publish"].context.span_id
    assert two.resource.attributes["service.instance.id"] != one.resource.attributes["service.instance.id"]
    publish_two = next(s for s in b if s.name == "steps[0].publish")
    assert out.messages[0].headers["traceparent"] == \
        f"00-{hexid(trace_id, 32)}-{hexid(publish_two.context.span_id, 16)}-01"


@settings(max_examples=300, deadline=None)
@given(trace_id=st.integers(min_value=1, max_value=2 ** 128 - 1), ratio=st.sampled_from([0.0, 0.01, 0.25, 0.5, 1.0]),
       sampled_flag=st.booleans())
def test_the_sampling_decision_is_opentelemetrys_on_the_trace_id(trace_id: int, ratio: float, sampled_flag: bool):
    """Whether a message is recorded depends only on its trace id (and the sender's sampled flag),
    exactly as OpenTelemetry's TraceIdRatioBased decides: every flow and runner keeps a trace whole."""
    tracer = HubTracer.exporting(InMemorySpanExporter(), sample_ratio=ratio, batch=False)

    class Msg:
        subject = "x.y"
        headers = {"traceparent": f"00-{trace_id:032x}-00f067aa0ba902b7-{'01' if sampled_flag else '00'}"}

    span = tracer.message_span("f", Msg())
    expected = sampled_flag and TraceIdRatioBased(ratio).should_sample(None, trace_id, "f").decision \
        == Decision.RECORD_AND_SAMPLE
    assert (span is not None) == expected
    if span is not None:
        span.end()
    tracer.shutdown()


async def test_unrecorded_traces_still_carry_the_trace_id(tmp_path: Path, nats_url: str, js, unique: str):
    """With nothing sampled no span is recorded, and the output still carries the sender's trace id
    (a backend that samples more, downstream, can join it)."""
    u = unique
    async with HttpSink() as sink:
        project = project_from(tmp_path, config(u, sink.url), second_flow(u).replace(f"{u}.mid", f"{u}.in"))
        from engine.runtime import Hub

        hub = Hub(project, servers=[nats_url])
        seen = InMemorySpanExporter()
        hub.ops.trace_to(seen, sample_ratio=0.0)
        await hub.start()
        try:
            out = await StreamReader.open(js, f"{u}.out")
            await js.publish(f"{u}.in", b"{}", headers={**event_headers("/t", f"{u}.in"), "traceparent": ORIGIN})
            await out.wait_for(1)
        finally:
            await hub.stop()
    assert spans_of(seen) == []
    tp = out.messages[0].headers["traceparent"]
    assert tp[3:35] == ORIGIN[3:35] and tp[36:52] != ORIGIN[36:52]


async def test_spans_reach_an_otlp_collector(tmp_path: Path, nats_url: str, js, unique: str):
    """With `ops.tracing.otlp_endpoint` set, the spans are exported by OTLP/HTTP (protobuf) to that
    endpoint: a real HTTP server decodes them and finds the flow's span under the sender's trace."""
    received: list[ExportTraceServiceRequest] = []

    async def collect(request: web.Request) -> web.Response:
        body = ExportTraceServiceRequest()
        body.ParseFromString(await request.read())
        received.append(body)
        return web.Response(status=200, content_type="application/x-protobuf", body=b"")

    app = web.Application()
    app.router.add_post("/v1/traces", collect)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    u = unique
    cfg = f"""
    streams:
      - {{name: TR{u}, subjects: ["{u}.>"]}}
    ops: {{tracing: {{otlp_endpoint: "http://127.0.0.1:{port}/v1/traces", sample_ratio: 1.0}}}}
    """
    try:
        hub = await started_hub(project_from(tmp_path, cfg, second_flow(u).replace(f"{u}.mid", f"{u}.in")), nats_url)
        try:
            out = await StreamReader.open(js, f"{u}.out")
            await js.publish(f"{u}.in", b"{}", headers={**event_headers("/t", f"{u}.in"), "traceparent": ORIGIN})
            await out.wait_for(1)
        finally:
            await hub.stop()  # flushes the batch
    finally:
        await runner.cleanup()
    spans = [s for req in received for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
    flow = next(s for s in spans if s.name == f"{u}-two")
    assert flow.trace_id.hex() == ORIGIN[3:35] and flow.parent_span_id.hex() == ORIGIN[36:52]
    services = {a.value.string_value for req in received for rs in req.resource_spans
                for a in rs.resource.attributes if a.key == "service.name"}
    assert services == {"plu-hub"}


def test_a_malformed_traceparent_starts_a_trace_of_its_own():
    """A sender's broken traceparent is not trusted: the message gets a new trace, nothing raises."""
    tracer = HubTracer.exporting(InMemorySpanExporter(), sample_ratio=1.0, batch=False)
    for bad in ("00-zzzz", "00-" + "0" * 32 + "-" + "0" * 16 + "-01", "xx-" + "a" * 52, "0" * 55):
        class Msg:
            subject = "x.y"
            headers = {"traceparent": bad}

        span = tracer.message_span("f", Msg())
        assert span is not None and span.span.parent is None
        span.end()
    tracer.shutdown()


async def test_a_contract_is_one_trace_from_signed_to_switched_and_notified(tmp_path: Path, broker, broker_js,
                                                                            monkeypatch):
    """The shipped switch flows against a real SOAP ERP: the CRM's contract, the ERP's switch request,
    each later status check (one while the switch is pending, one once it completed), the
    erp.contract.switched event and the notification are one trace, each hop the child of the span
    that published it."""
    from engine.runtime import Hub
    from engine.validation import flow_files, load_project
    from engine.waiting import pending_records
    from sandbox.erp import ErpSimulator

    root = Path(__file__).resolve().parents[1]
    sim = await ErpSimulator("de", switch_delay=3600, password="trace-pw").start()
    monkeypatch.setenv("ERP_DE_URL", sim.address)
    monkeypatch.setenv("ERP_DE_PASSWORD", "trace-pw")
    (tmp_path / "flows").mkdir()
    names = ("contract-switch-request", "contract-switch-track", "contract-switch-notify")
    for path in flow_files(root / "flows"):
        if path.stem in names:
            (tmp_path / "flows" / path.name).write_text(path.read_text())
    hub = Hub(load_project(root / "config" / "sandbox.yaml", flow_files(tmp_path / "flows")), servers=[broker.url])
    seen = InMemorySpanExporter()
    hub.ops.trace_to(seen)
    js = broker_js
    try:
        await hub.start()
        switched = await StreamReader.open(js, "erp.contract.switched")
        notices = await StreamReader.open(js, "notify.requested")
        body = {"contract_id": "K-DE-1", "version": 1, "account_id": "A-DE-1", "country": "DE",
                "tariff_code": "GREEN-12", "signed_on": "2026-12-01", "key_customer": False,
                "sites": [{"site_id": "S-DE-1", "postcode": "10115", "city": "Berlin", "meter_ids": ["M-1"]}]}
        headers = {**event_headers("/crm/salesforce", "crm.contract.signed"), "traceparent": ORIGIN}
        await js.publish("crm.contract.signed", json.dumps(body).encode(), headers=headers)

        async def pending() -> bool:
            return bool(await pending_records(js, "contract-switch-track"))

        await wait_until(pending, timeout=30)   # checked once: still pending at the ERP
        sim.switch_delay = 0                     # the ERP completes it; the next check sees it
        await switched.wait_for(1, timeout=30)
        await notices.wait_for(1, timeout=10)
    finally:
        await hub.stop()
        await sim.stop()
    spans = spans_of(seen)
    trace_id = int(ORIGIN[3:35], 16)
    assert {s.context.trace_id for s in spans} == {trace_id}
    children = lambda parent: [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]  # noqa: E731
    request = next(s for s in spans if s.name == "contract-switch-request")
    assert request.parent.span_id == int(ORIGIN[36:52], 16)
    call_step = next(s for s in children(request) if s.name.endswith(".call"))
    assert [c.name for c in children(call_step)] == ["erp_de submit_switch"]
    published = next(s for s in children(request) if s.name.endswith(".publish"))
    checks = sorted((s for s in spans if s.name == "contract-switch-track"), key=lambda s: s.start_time)
    assert len(checks) >= 2 and all(c.parent.span_id == published.context.span_id for c in checks)
    assert checks[0].attributes["hub.outcome"] == "waiting" and checks[-1].attributes["hub.outcome"] == "done"
    assert [c.attributes["hub.delivery"] for c in checks] == list(range(1, len(checks) + 1))
    for check in checks:
        step = next(s for s in children(check) if s.name.endswith(".call"))
        assert [c.name for c in children(step)] == ["erp_de switch_status"]
    assert any(s.name.startswith("kv put hub_pending") for s in children(checks[0]))
    outcome = next(s for s in children(checks[-1]) if s.name.endswith(".publish"))
    notify = next(s for s in spans if s.name == "contract-switch-notify")
    assert notify.parent.span_id == outcome.context.span_id
    assert switched.messages[0].headers["traceparent"][3:52] == f"{trace_id:032x}-{outcome.context.span_id:016x}"
    assert notices.messages[0].headers["traceparent"][3:35] == ORIGIN[3:35]


@settings(max_examples=200, deadline=None)
@given(trace_id=st.integers(min_value=1, max_value=2 ** 128 - 1))
def test_a_flow_with_a_higher_ratio_records_every_trace_a_lower_one_does(trace_id: int):
    """`flow_ratios`: contracts traced whole, the meter storm sampled; whatever the sampled flow records
    on a trace, the fully traced flow on the same trace records too (the same trace-id bits decide)."""
    tracer = HubTracer.exporting(InMemorySpanExporter(), sample_ratio=0.01, batch=False,
                                 flow_ratios={"contract-*": 1.0, "meter-*": 0.001})
    assert tracer.ratio_for("contract-switch-track") == 1.0 and tracer.ratio_for("meter-reading-to-crm") == 0.001
    assert tracer.ratio_for("tariff-quote") == 0.01

    class Msg:
        subject = "x.y"
        headers = {"traceparent": f"00-{trace_id:032x}-00f067aa0ba902b7-01"}

    decided = {}
    for flow in ("contract-switch-track", "tariff-quote", "meter-reading-to-crm"):
        span = tracer.for_flow(flow).message_span(flow, Msg())
        decided[flow] = span is not None
        if span is not None:
            span.end()
    assert decided["contract-switch-track"]
    assert decided["meter-reading-to-crm"] <= decided["tariff-quote"] <= decided["contract-switch-track"]
    tracer.shutdown()


async def test_with_an_otlp_endpoint_in_config_kv_operations_are_spans_too(tmp_path: Path, nats_url: str, js,
                                                                           unique: str, monkeypatch):
    """Configured (not injected by a test), tracing is on before the Hub binds its buckets: the
    idempotency claim of a call flow is a span of its message, as the HTTP call is."""
    import engine.trace_context as trace_context

    monkeypatch.setattr(trace_context, "_kv_traced", [False])  # as in a fresh process: no tracer made yet
    received: list[ExportTraceServiceRequest] = []

    async def collect(request: web.Request) -> web.Response:
        body = ExportTraceServiceRequest()
        body.ParseFromString(await request.read())
        received.append(body)
        return web.Response(status=200, content_type="application/x-protobuf", body=b"")

    app = web.Application()
    app.router.add_post("/v1/traces", collect)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    u = unique
    try:
        async with HttpSink() as sink:
            cfg = config(u, sink.url) + f"""
    ops: {{tracing: {{otlp_endpoint: "http://127.0.0.1:{port}/v1/traces", sample_ratio: 0.0,
                      flow_ratios: {{"{u}-*": 1.0}}}}}}
    """
            hub = await started_hub(project_from(tmp_path, cfg, first_flow(u)), nats_url)
            try:
                await js.publish(f"{u}.in", json.dumps({"n": 1}).encode(),
                                 headers={**event_headers("/t", f"{u}.in"), "traceparent": ORIGIN})
                await sink.wait_for(1)
                await wait_until(lambda: settled(js, f"TR{u}", f"{u}-one"))
            finally:
                await hub.stop()
    finally:
        await runner.cleanup()
    names = {s.name for req in received for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans}
    assert {f"{u}-one", "target apply", "kv create hub_idempotency", "kv put hub_idempotency"} <= names
