"""The `nats` adapter as a call step: request/reply to a service on the bus, and confirmed publish."""

from __future__ import annotations

import json
from pathlib import Path

import nats

from tests.helpers import StreamReader, project_from, started_hub


async def test_call_a_service_on_the_bus_and_publish_through_jetstream(tmp_path: Path, nats_url: str, unique: str):
    """One flow asks another flow (request/reply) and the answer comes back; a publish-mode
    endpoint stores the payload in JetStream; no responder is a transient TargetUnavailable."""
    project = project_from(tmp_path, f"""
    streams:
      - {{name: IN{unique}, subjects: ["{unique}.in.>"]}}
      - {{name: OUT{unique}, subjects: ["{unique}.out.>"]}}
    endpoints:
      pricing: {{adapter: nats, mode: request, subject: "{unique}.price", timeout: 2s}}
      archive: {{adapter: nats, mode: publish, subject: "{unique}.out.{{kind}}"}}
      nobody: {{adapter: nats, mode: request, subject: "{unique}.nobody", timeout: 1s}}
    """, f"""
    name: {unique}-price
    source: {{request: {unique}.price}}
    steps:
      - transform: readings.passthrough
      - reply
    """, f"""
    name: {unique}-ask
    source: {{request: {unique}.ask}}
    steps:
      - call: {{endpoint: pricing, into: price}}
      - call: {{endpoint: archive}}
      - reply
    """, f"""
    name: {unique}-lonely
    source: {{request: {unique}.lonely}}
    steps:
      - call: {{endpoint: nobody}}
      - reply
    """)
    hub = await started_hub(project, nats_url)
    nc = await nats.connect(nats_url)
    try:
        archived = await StreamReader.open(nc.jetstream(), f"{unique}.out.>")
        answer = json.loads((await nc.request(f"{unique}.ask", b'{"kind": "quote", "n": 1}', timeout=5)).data)
        assert answer == {"kind": "quote", "n": 1, "price": {"kind": "quote", "n": 1}}
        stored = (await archived.wait_for(1))[0]
        assert stored.subject == f"{unique}.out.quote" and json.loads(stored.data)["n"] == 1
        lonely = json.loads((await nc.request(f"{unique}.lonely", b"{}", timeout=5)).data)
        assert lonely["error"]["class"] == "TargetUnavailable" and lonely["error"]["transient"]
    finally:
        await nc.close()
        await hub.stop()


async def test_a_nats_call_carries_the_trace_to_the_service_and_the_published_message(
        tmp_path: Path, nats_url: str, unique: str):
    """A message traced by the hub: the service answering the request and the message a publish-mode
    call stores both get the call's span as their `traceparent` (and the sender's tracestate), so the
    trace continues through them; untraced, the message's own traceparent goes on."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from engine.messages import event_headers
    from engine.runtime import Hub

    origin = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    project = project_from(tmp_path, f"""
    streams:
      - {{name: IN{unique}, subjects: ["{unique}.in.>"]}}
      - {{name: OUT{unique}, subjects: ["{unique}.out.>"]}}
    endpoints:
      pricing: {{adapter: nats, mode: request, subject: "{unique}.price", timeout: 2s}}
      archive: {{adapter: nats, mode: publish, subject: "{unique}.out.archive"}}
    """, f"""
    name: {unique}-ask
    source: {{subject: {unique}.in.ask}}
    steps:
      - call: {{endpoint: pricing, into: price}}
      - call: {{endpoint: archive}}
    """)
    nc = await nats.connect(nats_url)
    asked: list[dict] = []

    async def service(msg) -> None:
        asked.append(dict(msg.headers or {}))
        await msg.respond(b'{"eur": 1}')

    await nc.subscribe(f"{unique}.price", cb=service)
    archived = None
    spans = InMemorySpanExporter()
    for traced, n in ((True, 1), (False, 2)):
        hub = Hub(project, servers=[nats_url])
        if traced:
            hub.ops.trace_to(spans)
        await hub.start()
        archived = archived or await StreamReader.open(nc.jetstream(), f"{unique}.out.archive")
        try:
            headers = {**event_headers("/crm", f"{unique}.in.ask"), "traceparent": origin, "tracestate": "plu=1"}
            await nc.jetstream().publish(f"{unique}.in.ask", b'{"n": 1}', headers=headers)
            await archived.wait_for(n)
        finally:
            await hub.stop()
    await nc.close()
    calls = {s.name: s for s in spans.get_finished_spans() if s.kind.name == "CLIENT" and not s.name.startswith("kv ")}
    price, archive = calls["pricing"], calls["archive"]
    assert {price.context.trace_id, archive.context.trace_id} == {int(origin[3:35], 16)}
    assert asked[0]["traceparent"] == f"00-{origin[3:35]}-{price.context.span_id:016x}-01"
    assert archived.messages[0].headers["traceparent"] == f"00-{origin[3:35]}-{archive.context.span_id:016x}-01"
    assert asked[0]["tracestate"] == archived.messages[0].headers["tracestate"] == "plu=1"
    assert asked[1]["traceparent"] == archived.messages[1].headers["traceparent"] == origin
