"""The resilience drills of issue 3, against a real nats-server and a real HTTP target.

Each drill prints its figures (sent, effects, repeats absorbed by the target's idempotency key,
dead-lettered) so `pytest -s tests/test_drills.py` is also the drill report.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import textwrap
from pathlib import Path


from engine.streams import ensure_streams
from sandbox.http_sink import HttpSink
from tests.helpers import StreamReader, project_from, settled, started_hub, wait_until

ROOT = Path(__file__).resolve().parents[1]


def config(u: str, sink_url: str, breaker: str = "{failures: 3, window: 10s, reset: 300ms}") -> str:
    return f"""
    streams:
      - {{name: IN{u}, subjects: ["{u}.in.>"]}}
    endpoints:
      target: {{adapter: http, base_url: "{sink_url}", path: "/effects/{{n}}", circuit_breaker: {breaker}}}
    """


def flow(u: str, extra: str = "") -> str:
    return f"""
    name: {u}
    source: {{subject: {u}.in.x}}
    steps:
      - call: {{endpoint: target, timeout: 2s}}
    on_error: {{retry: [10ms], redeliver: [100ms, 200ms]}}
    {extra}
    """


async def publish_many(js, subject: str, n: int) -> None:
    futs = [await js.publish_async(subject, json.dumps({"n": i}).encode(), headers={"ce-id": f"m{i}"})
            for i in range(n)]
    await asyncio.gather(*futs)


async def dlq_count(js, flow_name: str) -> int:
    state = (await js.stream_info("DLQ", subjects_filter=f"dlq.{flow_name}")).state
    return (state.subjects or {}).get(f"dlq.{flow_name}", 0)


async def test_drill_target_down_then_back(tmp_path: Path, nats_url: str, js, unique: str):
    """Target down for a while, then back: the breaker opens, nothing goes to the DLQ although the
    schedule alone would have sent everything there, and every message reaches the target once."""
    n = 50
    async with HttpSink() as sink:
        sink.set_status(500)
        hub = await started_hub(project_from(tmp_path, config(unique, sink.url), flow(unique)), nats_url)
        try:
            breaker = hub.breakers.breaker("target", hub.project.endpoints["target"].circuit_breaker)
            opened = asyncio.Event()
            breaker.on_change(lambda state: opened.set() if state == "open" else None)
            await publish_many(js, f"{unique}.in.x", n)
            await asyncio.wait_for(opened.wait(), 10)
            await sink.wait_for(sink.count + 3)  # the outage goes on past the opening (probes)
            failed_calls = sink.count
            sink.reset()  # the target is back
            applied = await sink.wait_for_effects(n, timeout=60)


            await wait_until(lambda: settled(js, f"IN{unique}", unique), timeout=30)
            dead = await dlq_count(js, unique)
            print(f"\n[drill outage] sent {n}, failed calls during outage {failed_calls}, effects {len(applied)}, "
                  f"repeats {sum(applied.values()) - len(applied)}, dead-lettered {dead}")
            assert dead == 0
            assert sorted(applied) == sorted(f"m{i}" for i in range(n))
            assert all(count == 1 for count in applied.values())  # exactly once after recovery
        finally:
            await hub.stop()


async def test_drill_rejections_go_to_the_dlq_and_the_flow_keeps_going(tmp_path: Path, nats_url: str, js, unique: str):
    """A 4xx for some messages: those are in the DLQ with the target's reason, the rest are done,
    and the breaker stays closed (a rejection proves the target is up)."""
    async with HttpSink() as sink:
        hub = await started_hub(project_from(tmp_path, config(unique, sink.url), flow(unique)), nats_url)
        try:
            sink.fail_next(3, status=400, body='{"error": "unknown tariff"}')
            await publish_many(js, f"{unique}.in.x", 20)
            dlq = await StreamReader.open(js, f"dlq.{unique}")
            records = await dlq.wait_for(3)
            applied = await sink.wait_for_effects(17)
            print(f"\n[drill 4xx] sent 20, effects {len(applied)}, dead-lettered {len(records)}")
            assert {r.headers["Hub-Dlq-Error-Class"] for r in records} == {"TargetRejected"}
            assert all("unknown tariff" in r.headers["Hub-Dlq-Error"] for r in records)
            assert hub.breakers.breaker("target", hub.project.endpoints["target"].circuit_breaker).state == "closed"
        finally:
            await hub.stop()


def runner_files(tmp: Path, u: str, sink_url: str) -> list[str]:
    (tmp / "flows").mkdir(exist_ok=True)
    (tmp / "flows" / "f.yaml").write_text(textwrap.dedent(flow(u)) + "ack_wait: 2s\nlimits: {concurrency: 8}\n")
    (tmp / "config.yaml").write_text(textwrap.dedent(config(u, sink_url)))
    return ["--config", str(tmp / "config.yaml"), "--flows", str(tmp / "flows")]


async def start_runner(args: list[str], nats_url: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "runner.py"), "run", "--nats", nats_url, "--log-level", "warning", *args,
        stderr=open(args[1] + ".log", "a"), env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return proc


async def test_drill_runner_sigkilled_mid_batch_then_restarted(tmp_path: Path, nats_url: str, js, unique: str):
    """SIGKILL in the middle of the work, then a restart: every message done, none lost, and the
    target applies each effect once (repeats carry the same Idempotency-Key)."""
    n = 300
    async with HttpSink() as sink:
        sink.set_delay(0.01)
        args = runner_files(tmp_path, unique, sink.url)
        project = project_from(tmp_path, config(unique, sink.url))
        await ensure_streams(js, project.config)
        await publish_many(js, f"{unique}.in.x", n)
        proc = await start_runner(args, nats_url)
        try:
            await sink.wait_for(60, timeout=30)
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            done_before = len(sink.applied)
            proc = await start_runner(args, nats_url)
            applied = await sink.wait_for_effects(n, timeout=60)
            repeats = sum(applied.values()) - len(applied)
            print(f"\n[drill sigkill] sent {n}, effects before kill {done_before}, effects {len(applied)}, "
                  f"repeats absorbed by the idempotency key {repeats}, dead-lettered {await dlq_count(js, unique)}")
            assert sorted(applied) == sorted(f"m{i}" for i in range(n))
            assert repeats <= 8 * 2  # at most what was in flight at the kill
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_drill_two_runners_share_a_flow_and_one_dies(tmp_path: Path, nats_url: str, js, unique: str):
    """Two runner processes on one durable; one is SIGKILLed: the survivor finishes all the work."""
    n = 300
    async with HttpSink() as sink:
        sink.set_delay(0.01)
        args = runner_files(tmp_path, unique, sink.url)
        project = project_from(tmp_path, config(unique, sink.url))
        await ensure_streams(js, project.config)
        a = await start_runner(args, nats_url)
        b = await start_runner(args, nats_url)
        try:
            await publish_many(js, f"{unique}.in.x", n)
            await sink.wait_for(60, timeout=30)
            a.send_signal(signal.SIGKILL)
            await a.wait()
            applied = await sink.wait_for_effects(n, timeout=60)
            print(f"\n[drill two runners] sent {n}, effects {len(applied)}, "
                  f"repeats {sum(applied.values()) - len(applied)}")
            assert sorted(applied) == sorted(f"m{i}" for i in range(n))
        finally:
            for p in (a, b):
                if p.returncode is None:
                    p.kill()
                    await p.wait()


async def dlq_cli(*words: str, url: str, tmp: Path) -> int:
    from dlq.cli import run
    from runner import build_parser

    (tmp / "flows").mkdir(exist_ok=True)
    return await run(build_parser().parse_args(["dlq", *words, "--nats", url, "--config", str(tmp / "config.yaml"),
                                                "--flows", str(tmp / "flows")]))


async def test_drill_dlq_replays_single_filtered_and_twice_cause_one_effect_each(
        tmp_path: Path, nats_url: str, js, unique: str, capsys):
    """Rejected messages wait in the DLQ; once the target is fixed, a single replay and a filtered,
    rate-limited replay deliver them; replaying one again (kept with --keep) is skipped by the
    flow's idempotency check, so the target sees one effect per message."""
    async with HttpSink() as sink:
        (tmp_path / "config.yaml").write_text(textwrap.dedent(config(unique, sink.url)))
        hub = await started_hub(project_from(tmp_path, config(unique, sink.url), flow(unique)), nats_url)
        try:
            sink.set_status(409, body="account locked")
            await publish_many(js, f"{unique}.in.x", 6)
            dlq = await StreamReader.open(js, f"dlq.{unique}")
            records = await dlq.wait_for(6)
            sink.recover()
            first = records[0].metadata.sequence.stream
            assert await dlq_cli("replay", str(first), "--keep", url=nats_url, tmp=tmp_path) == 0
            await sink.wait_for_effects(1)
            assert await dlq_cli("replay", "--flow", unique, "--error-class", "TargetRejected", "--rate", "20/s",
                                 url=nats_url, tmp=tmp_path) == 0
            applied = await sink.wait_for_effects(6)


            await wait_until(lambda: settled(js, f"IN{unique}", unique))
            print(f"\n[drill replay] dead-lettered 6, replayed 1 + 6 (one twice), effects {len(applied)}, "
                  f"repeats {sum(applied.values()) - len(applied)}, skipped {hub.runners[unique].stats.skipped}")
            assert sorted(applied) == sorted(f"m{i}" for i in range(6)) and set(applied.values()) == {1}
            assert hub.runners[unique].stats.skipped == 1  # the second replay of the first record
            assert await dlq_count(js, unique) == 0
        finally:
            await hub.stop()
