"""Runner processes sharing a flow on the cluster: one dies, the others take over its messages
within the bound docs/deploy.md states (the flow's ack_wait, 8 s by default), not 30 s later."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

from engine.pull_feed import runner_window
from engine.spec import Flow
from engine.streams import ensure_streams
from sandbox.http_sink import HttpSink
from tests.cluster_fixtures import cluster, cluster_js, healthy_cluster, pytestmark  # noqa: F401
from tests.helpers import project_from, settled, wait_until

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = 8


def files(tmp: Path, u: str, sink_url: str) -> list[str]:
    (tmp / "flows").mkdir(exist_ok=True)
    (tmp / "flows" / "f.yaml").write_text(textwrap.dedent(f"""
        name: {u}
        source: {{subject: {u}.in.x}}
        steps:
          - call: {{endpoint: target, timeout: 2s}}
        on_error: {{retry: [10ms], redeliver: [100ms, 200ms]}}
        limits: {{concurrency: {CONCURRENCY}}}
        """))
    (tmp / "config.yaml").write_text(textwrap.dedent(f"""
        streams:
          - {{name: IN{u}, subjects: ["{u}.in.>"]}}
        endpoints:
          target: {{adapter: http, base_url: "{sink_url}", path: "/effects/{{n}}"}}
        """))
    return ["--config", str(tmp / "config.yaml"), "--flows", str(tmp / "flows")]


async def start_runner(args: list[str], urls: list[str], log: Path) -> asyncio.subprocess.Process:
    nats_args = [a for url in urls for a in ("--nats", url)]
    return await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "runner.py"), "run", *nats_args, "--log-level", "warning", *args,
        stderr=open(log, "a"), env={**os.environ, "PYTHONUNBUFFERED": "1"})


async def test_a_sigkilled_runner_s_messages_are_done_by_the_other_within_ack_wait(
        tmp_path: Path, healthy_cluster, cluster_js, unique: str):
    """Two runners drain a backlog through a call flow; one is SIGKILLed mid-drain: the other finishes
    everything, the killed runner's unacked messages included, within a few seconds (the default
    ack_wait), and the target sees at most the killed runner's window again."""
    n = 400
    ack_wait = Flow.model_fields["ack_wait"].default
    async with HttpSink() as sink:
        sink.set_delay(0.02)
        args = files(tmp_path, unique, sink.url)
        await ensure_streams(cluster_js, project_from(tmp_path, (tmp_path / "config.yaml").read_text()).config)
        a = await start_runner(args, healthy_cluster.urls, tmp_path / "a.log")
        b = await start_runner(args, healthy_cluster.urls, tmp_path / "b.log")
        try:
            futures = [await cluster_js.publish_async(f"{unique}.in.x", json.dumps({"n": i}).encode(),
                                                      headers={"ce-id": f"m{i}"}) for i in range(n)]
            await asyncio.gather(*futures)
            await sink.wait_for_effects(n // 4, timeout=60)
            a.send_signal(signal.SIGKILL)
            await a.wait()
            killed = time.monotonic()
            done_at_kill = len(sink.applied)
            applied = await sink.wait_for_effects(n, timeout=60)
            took = time.monotonic() - killed
            await wait_until(lambda: settled(cluster_js, f"IN{unique}", unique), timeout=30)
            repeats = sum(applied.values()) - len(applied)
            window = runner_window(2048, CONCURRENCY)
            print(f"\n[cluster runners] sent {n}, done at the kill {done_at_kill}, all done {took:.1f} s after it "
                  f"(ack_wait {ack_wait:.0f} s), repeated effects {repeats} (killed runner's window {window})")
            assert sorted(applied) == sorted(f"m{i}" for i in range(n))
            assert took < 2 * ack_wait + 5, "the killed runner's messages waited longer than ack_wait"
            assert repeats <= window
        finally:
            for p in (a, b):
                if p.returncode is None:
                    p.kill()
                    await p.wait()
