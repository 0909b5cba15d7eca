"""The faults part of `runner.py demo` (issue 12): the broker is SIGKILLed and restarted while a backlog
drains through a `call` flow, an ERP create whose answer is lost is verified instead of resent, and an
output that a full stream refuses is dead-lettered by name instead of retried for ever (issue 17).

Self-contained: it starts its own nats-server (on a store it can kill), its own HTTP targets
(sandbox/fault_targets.py) and its own Hub, so it disturbs nothing else the demo runs. Wire it in with
`await demo_faults.section_faults(check, number=N)`.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import textwrap
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from nats.js.api import DiscardPolicy

from engine.embedded_nats import EmbeddedNats
from engine.runtime import Hub
from engine.validation import load_project
from sandbox.fault_targets import CreateTarget, PathTarget

Check = Callable[[bool, str], None]
BACKLOG = 300


def _project(work: Path, effects_url: str, erp_url: str) -> Any:
    (work / "flows").mkdir()
    (work / "config.yaml").write_text(textwrap.dedent(f"""
        nats: {{publish_timeout: 1s}}
        streams:
          - {{name: FAULTS, subjects: ["faults.>"]}}
          - {{name: ARCHIVE, subjects: ["archive.>"]}}   # made full and refusing below, as another team's stream may be
        endpoints:
          effects: {{adapter: http, base_url: "{effects_url}", path: "/effects/{{n}}", timeout: 2s}}
          erp:
            adapter: http
            base_url: "{erp_url}"
            timeout: 400ms
            circuit_breaker: null
            idempotent: {{create: false}}       # like SAP: a create is made again if sent again
            operations: {{create: {{method: POST, path: /switches}}, find: {{method: GET, path: /switches}}}}
        """))
    (work / "flows" / "drain.yaml").write_text(textwrap.dedent("""
        name: faults-drain
        source: {subject: faults.in.drain}
        steps:
          - call: {endpoint: effects, into: answer}
          - publish: faults.out.drain
        """))
    (work / "flows" / "create.yaml").write_text(textwrap.dedent("""
        name: faults-create
        source: {subject: faults.in.create}
        steps:
          - call:
              endpoint: erp
              operation: create
              input: request
              into: created
              verify: {operation: find, input: lookup, done: "found", not_done: "!found"}
          - publish: faults.out.create
        on_error: {retry: [50ms], redeliver: [500ms, 1s]}
        """))
    (work / "flows" / "archive.yaml").write_text(textwrap.dedent("""
        name: faults-archive
        source: {subject: faults.in.archive}
        steps:
          - publish: archive.readings
        on_error: {retry: [], redeliver: [100ms]}
        """))
    return load_project(work / "config.yaml", sorted((work / "flows").glob("*.yaml")))


async def section_faults(check: Check, number: int = 14, deadline: float = 120.0) -> None:
    print(f"\n  {number}. Faults: the broker is killed mid-drain; an ERP create's answer is lost; a stream is full")
    with tempfile.TemporaryDirectory(prefix="hub-demo-faults-") as tmp:
        work = Path(tmp)
        server = EmbeddedNats(data_dir=work / "store").start()
        hub = None
        try:
            async with PathTarget(failing=set()) as effects, CreateTarget() as erp:
                hub = Hub(_project(work, effects.url, erp.url), servers=[server.url])
                await hub.start()
                js = hub.js
                for n in range(BACKLOG):
                    await js.publish("faults.in.drain", json.dumps({"n": n}).encode(), headers={"ce-id": f"d{n}"})
                await effects.wait_for_effects(BACKLOG // 3, timeout=deadline)
                server.kill()
                killed = time.monotonic()
                await asyncio.sleep(1.0)
                await asyncio.to_thread(server.start)
                done = await effects.wait_for_effects(BACKLOG, timeout=deadline)
                repeats = sum(done.values()) - len(done)
                runner = hub.runners["faults-drain"]
                print(f"       {BACKLOG} messages; nats-server SIGKILLed after {BACKLOG // 3} effects, back 1 s later; "
                      f"all done {time.monotonic() - killed:.1f} s after the kill; repeated effects {repeats}; "
                      f"dead-lettered {runner.failures.dead_lettered}")
                check(len(done) == BACKLOG and repeats == 0 and runner.failures.dead_lettered == 0,
                      "a broker killed mid-drain: nothing lost, nothing repeated, nothing dead-lettered")
                erp.plan = ["lost"]
                body = {"request": {"key": "SW-DEMO-1", "tariff": "green"}, "lookup": {"key": "SW-DEMO-1"}}
                await js.publish("faults.in.create", json.dumps(body).encode(), headers={"ce-id": "create-1"})
                async with asyncio.timeout(deadline):
                    while hub.runners["faults-create"].stats.acked < 1:
                        await asyncio.sleep(0.05)
                print(f"       create sent {erp.posts}x, its answer lost (timeout); lookups {erp.lookups}; "
                      f"switches the ERP made: {erp.creates('SW-DEMO-1')}")
                check(erp.creates("SW-DEMO-1") == 1 and erp.posts == 1,
                      "a non-idempotent create that timed out was verified, not resent: one switch")
                await _full_stream(check, hub, deadline)
        finally:
            if hub is not None:
                await hub.stop()
            server.stop()


async def _full_stream(check: Check, hub: Hub, deadline: float) -> None:
    """The archive stream is at its limit with `discard: new`: the output is refused (JetStream 503,
    err_code 10077), retried once on the flow's schedule, then dead-lettered as StreamFull."""
    js = hub.js
    info = await js.stream_info("ARCHIVE")
    await js.update_stream(replace(info.config, max_msgs=1, discard=DiscardPolicy.NEW))
    await js.publish("archive.readings", b'{"already": "there"}')
    await js.publish("faults.in.archive", b'{"reading": 1}', headers={"ce-id": "archive-1"})
    runner = hub.runners["faults-archive"]
    async with asyncio.timeout(deadline):
        while runner.failures.dead_lettered < 1:
            await asyncio.sleep(0.05)
    record = await js.get_last_msg(hub.project.config.dlq.stream, "dlq.faults-archive")
    error_class, error = record.headers.get("Hub-Dlq-Error-Class"), record.headers.get("Hub-Dlq-Error", "")
    print(f"       archive stream full (discard new): the output dead-lettered as {error_class} after "
          f"{record.headers.get('Hub-Dlq-Deliveries')} deliveries: {error[:110]}")
    check(error_class == "StreamFull" and "maximum messages exceeded" in error,
          "an output a full stream refuses is dead-lettered by name, not retried for ever")


if __name__ == "__main__":  # python -m sandbox.demo_faults: this section alone
    results: list[bool] = []

    def _check(ok: bool, text: str) -> None:
        results.append(ok)
        print(f"    {'PASS' if ok else 'FAIL'}  {text}")

    asyncio.run(section_faults(_check))
    raise SystemExit(0 if all(results) else 1)
