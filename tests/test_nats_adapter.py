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
