"""Broker and runner faults during a backlog drain, with real processes (issue 12's drill).

    .venv/bin/python bench/broker_drill.py [--messages 10000] [--fault term|kill|runner-kill|all]

A `call` flow (source -> HTTP call -> publish) drains a backlog with two `runner.py run` processes on
one durable consumer. Mid-drain the nats-server is restarted on the same port and store with SIGTERM or
SIGKILL, or one runner is SIGKILLed and started again. The HTTP target (sandbox/http_sink.py) counts
effects per Idempotency-Key: a repeated effect is a second 2xx for one message. Printed per fault:
sent, effects, repeated effects, dead-lettered, lost (sent messages with no effect or no output),
outputs stored, drain seconds (start to every message settled) and what the runners logged about the
broker. `tests/test_broker_drill.py` runs a short version (marker `drill`).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).absolute().parent.parent
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import tempfile  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402

import nats  # noqa: E402

from engine.embedded_nats import EmbeddedNats  # noqa: E402
from sandbox.http_sink import HttpSink  # noqa: E402

FLOW = "drill"


@dataclass
class Figures:
    fault: str
    sent: int
    effects: int = 0
    repeated_effects: int = 0
    dead_lettered: int = 0
    lost: int = 0
    outputs: int = 0
    drain_seconds: float = 0.0
    fault_at_effects: int = 0
    broker_retries_logged: int = 0
    outage_waits_logged: int = 0
    runner_exit_codes: list[int | None] = field(default_factory=list)

    def line(self) -> str:
        return (f"[drill {self.fault}] sent {self.sent}, effects {self.effects}, repeated effects "
                f"{self.repeated_effects}, dead-lettered {self.dead_lettered}, lost {self.lost}, outputs "
                f"{self.outputs}, drain {self.drain_seconds:.1f} s (fault after {self.fault_at_effects} effects; "
                f"runners logged {self.broker_retries_logged} broker retries, {self.outage_waits_logged} outage waits)")


def write_project(work: Path, sink_url: str, concurrency: int) -> list[str]:
    (work / "flows").mkdir(parents=True, exist_ok=True)
    (work / "config.yaml").write_text(textwrap.dedent(f"""
        nats: {{publish_timeout: 2s}}
        streams:
          - {{name: DRILL_IN, subjects: ["drill.in.>"]}}
          - {{name: DRILL_OUT, subjects: ["drill.out.>"]}}
        endpoints:
          target: {{adapter: http, base_url: "{sink_url}", path: "/effects/{{n}}", timeout: 5s}}
        logging: {{level: warning, format: json}}
        """))
    (work / "flows" / "drill.yaml").write_text(textwrap.dedent(f"""
        name: {FLOW}
        source: {{subject: drill.in.x}}
        steps:
          - call: {{endpoint: target, into: answer}}
          - publish: drill.out.x
        on_error: {{retry: [50ms], redeliver: [200ms, 1s, 2s]}}
        limits: {{concurrency: {concurrency}, max_in_flight: 512, batch: 128}}
        """))
    return ["--config", str(work / "config.yaml"), "--flows", str(work / "flows")]


class Runner:
    """One `runner.py run` process, its stderr in a file."""

    def __init__(self, args: list[str], url: str, log: Path) -> None:
        self.args, self.url, self.log = args, url, log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> "Runner":
        with open(self.log, "ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, str(ROOT / "runner.py"), "run", "--nats", self.url, *self.args,
                stdout=asyncio.subprocess.DEVNULL, stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        return self

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode


async def publish_backlog(js, n: int) -> None:
    for start in range(0, n, 1000):
        futs = [await js.publish_async("drill.in.x", json.dumps({"n": i}).encode(), headers={"ce-id": f"m{i}"})
                for i in range(start, min(n, start + 1000))]
        await asyncio.gather(*futs)


async def settled(js) -> bool:
    try:
        info = await js.consumer_info("DRILL_IN", FLOW)
    except Exception:  # noqa: BLE001 - the broker is restarting
        return False
    return info.num_pending == 0 and info.num_ack_pending == 0


async def count(js, stream: str, subject: str | None = None) -> int:
    info = await js.stream_info(stream, subjects_filter=subject) if subject else await js.stream_info(stream)
    if subject:
        return (info.state.subjects or {}).get(subject, 0)
    return info.state.messages


async def run_drill(fault: str, n: int, work: Path, *, runners: int = 2, concurrency: int = 16,
                    target_delay: float = 0.005, fault_at: float = 0.3, timeout: float = 300.0,
                    verbose: bool = False) -> Figures:
    """One drill: `fault` is term, kill (the broker), runner-kill (one runner, then a new one) or none."""
    figures = Figures(fault, n)
    server = EmbeddedNats(data_dir=work / "store").start()
    procs: list[Runner] = []
    nc = None
    try:
        async with HttpSink(record=False) as sink:
            sink.set_delay(target_delay)
            args = write_project(work, sink.url, concurrency)
            nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
            js = nc.jetstream(timeout=10)
            await js.add_stream(name="DRILL_IN", subjects=["drill.in.>"])
            await publish_backlog(js, n)
            started = time.monotonic()
            procs = [await Runner(args, server.url, work / f"runner{i}.log").start() for i in range(runners)]
            await sink.wait_for_effects(max(1, int(n * fault_at)), timeout=timeout)
            figures.fault_at_effects = len(sink.applied)
            if fault == "term":
                await asyncio.to_thread(server.restart)  # SIGTERM, then the same port and store
            elif fault == "kill":
                server.kill()
                await asyncio.to_thread(server.start)
            elif fault == "runner-kill":
                await procs[0].kill()
                procs[0] = await Runner(args, server.url, work / "runner0b.log").start()
            fault_done = time.monotonic()
            async with asyncio.timeout(timeout):
                last = -1.0
                while not (len(sink.applied) >= n and await settled(js)):
                    await asyncio.sleep(0.1)
                    now = time.monotonic() - fault_done
                    if verbose and int(now) != int(last):
                        last = now
                        try:
                            info = await js.consumer_info("DRILL_IN", FLOW)
                            state = f"pending {info.num_pending} ack_pending {info.num_ack_pending} " \
                                    f"redelivered {info.num_redelivered}"
                        except Exception as exc:  # noqa: BLE001
                            state = repr(exc)
                        print(f"  +{now:5.1f}s effects {len(sink.applied)} {state}", flush=True)
            figures.drain_seconds = time.monotonic() - started
            applied = dict(sink.applied)
            figures.effects = len(applied)
            figures.repeated_effects = sum(applied.values()) - len(applied)
            figures.outputs = await count(js, "DRILL_OUT")
            try:
                figures.dead_lettered = await count(js, "DLQ", f"dlq.{FLOW}")
            except Exception:  # noqa: BLE001 - no DLQ stream: nothing was dead-lettered
                figures.dead_lettered = 0
            figures.lost = n - min(figures.effects, figures.outputs)
    finally:
        figures.runner_exit_codes = [await p.stop() for p in procs]
        if nc is not None:
            await nc.close()
        server.stop()
    logs = "".join(p.read_text(errors="replace") for p in work.glob("runner*.log"))
    figures.broker_retries_logged = logs.count('"broker_retry"')
    figures.outage_waits_logged = logs.count('"broker_outage_wait"')
    return figures


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--fault", choices=["none", "term", "kill", "runner-kill", "all"], default="all",
                        help="none: the same drain without a fault, for comparison; all: term, kill, runner-kill")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--target-delay", type=float, default=0.005, help="seconds the HTTP target takes per call")
    parser.add_argument("--verbose", action="store_true", help="print progress every second after the fault")
    args = parser.parse_args()
    faults = ["term", "kill", "runner-kill"] if args.fault == "all" else [args.fault]
    results = []
    for fault in faults:
        with tempfile.TemporaryDirectory(prefix="plu-drill-") as tmp:
            figures = await run_drill(fault, args.messages, Path(tmp), concurrency=args.concurrency,
                                      target_delay=args.target_delay, verbose=args.verbose)
        print(figures.line(), flush=True)
        results.append(asdict(figures))
    print(json.dumps(results))
    broker_faults = [r for r in results if r["fault"] in ("term", "kill")]
    ok = all(r["lost"] == 0 and r["dead_lettered"] == 0 and r["repeated_effects"] == 0 for r in broker_faults)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
