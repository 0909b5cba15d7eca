"""Scaling: throughput and CPU per message of the pass-through flow, a `call` flow and the meter rules
chain with 1, 2 and 3 runner processes, on one nats-server (R1) and on a local 3-node cluster (R3).

    .venv/bin/python bench/cluster_scaling.py [--pass 20000] [--call 4000] [--meters 200] [--runners 1,2,3]

Each run starts its runners (`runner.py run --nats …`, as an operator would), waits until they pull,
publishes a backlog as fast as JetStream takes it and times the drain until every message is acked.
CPU comes from /proc: the runners' together, the nats-servers' together, each divided by the
messages; "runner busy" is the share of a core each runner used while draining (well under 100%:
the runners wait for something else, here mostly the other processes on the same two cores). The call target is an HTTP sink in its own process (answers at once, idempotent). The
baseline is the same work on one server with one runner, measured in the same run: the table shows
each row's ratio to it. On a 2-core machine every process here shares the same two cores: read the
CPU per message, not the absolute rates, for sizing (docs/deploy.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).absolute().parent.parent))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import nats  # noqa: E402

from bench.cluster_common import (METER_FLOWS, cpu_seconds, readings, start_runner, stop_runner,  # noqa: E402
                                  write_project)
from engine.embedded_nats import EmbeddedNats  # noqa: E402
from engine.messages import event_headers  # noqa: E402
from sandbox.cluster import LocalCluster  # noqa: E402

WORKLOADS = {  # name -> (flow files, stream, durables, subject)
    "pass-through": (["drill-pass"], "DRILL", ["drill-pass"], "drill.pass"),
    "call": (["drill-call"], "DRILL", ["drill-call"], "drill.call"),
    "meter chain": (list(METER_FLOWS), "METER", list(METER_FLOWS), "meter.reading.collected"),
}


async def start_sink() -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sandbox.http_sink", "--port", "0", "--no-record",
        stdout=asyncio.subprocess.PIPE, cwd=str(Path(__file__).absolute().parent.parent))
    assert proc.stdout is not None
    url = (await proc.stdout.readline()).decode().strip()
    return proc, url


async def clean(js: Any, stream: str, durables: list[str]) -> None:
    for durable in durables:
        try:
            await js.delete_consumer(stream, durable)
        except Exception:
            pass
    for name in ("DRILL", "METER"):
        try:
            await js.purge_stream(name)
        except Exception:
            pass


async def pulling(js: Any, stream: str, durable: str, procs: list[Any], logs: list[Path],
                  timeout: float = 60) -> None:
    """Until the flow's consumer has a pull request from (about) every runner waiting."""
    deadline = time.monotonic() + timeout
    runners = len(procs)
    while time.monotonic() < deadline:
        for proc, log in zip(procs, logs):
            if proc.returncode is not None:
                raise RuntimeError(f"a runner exited ({proc.returncode}): {log.read_text()[-500:]}")
        try:
            info = await js.consumer_info(stream, durable, timeout=2)
            if info.num_waiting >= runners:
                return
        except Exception:
            pass
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{durable}: runners not pulling after {timeout} s")


async def drained(js: Any, stream: str, durables: list[str], last_subject: str | None, expected: int) -> None:
    while True:
        infos = [await js.consumer_info(stream, d, timeout=5) for d in durables]
        done = all(not i.num_pending and not i.num_ack_pending for i in infos)
        if done and last_subject:  # a chain: the last flow has seen all the first one's outputs
            stored = (await js.stream_info(stream, subjects_filter=last_subject)).state.subjects or {}
            done = stored.get(last_subject, 0) >= expected
        if done:
            return
        await asyncio.sleep(0.1)


async def one_run(urls: list[str], server_pids: list[int], work: Path, sink_url: str, workload: str,
                  runners: int, sizes: dict[str, int], tag: str) -> dict[str, float]:
    flows, stream, durables, subject = WORKLOADS[workload]
    nc = await nats.connect(urls)
    js = nc.jetstream(timeout=10)
    await clean(js, stream, durables)
    args = write_project(work / tag, sink_url, flows)
    logs = [work / f"{tag}-{i}.log" for i in range(runners)]
    procs = [await start_runner(args, urls, log) for log in logs]
    try:
        await pulling(js, stream, durables[0], procs, logs)
        await asyncio.sleep(1.0)
        if workload == "meter chain":
            batch = [json.dumps(r).encode() for r in readings(sizes["meters"], 30, tag)]
        else:
            batch = [json.dumps({"n": i}).encode() for i in range(sizes[workload])]
        cpu0 = [cpu_seconds(p.pid) for p in procs], [cpu_seconds(pid) for pid in server_pids]
        started = time.perf_counter()
        for start in range(0, len(batch), 1000):
            futures = [await js.publish_async(subject, data, headers=event_headers("/bench", subject,
                                                                                      msg_id=f"{tag}-{start + i}"))
                       for i, data in enumerate(batch[start:start + 1000])]
            await asyncio.gather(*futures)
        last = "meter.reading.received" if workload == "meter chain" else None
        await drained(js, stream, durables, last, len(batch))
        took = time.perf_counter() - started
        runner_cpu = sum(cpu_seconds(p.pid) for p in procs) - sum(cpu0[0])
        server_cpu = sum(cpu_seconds(pid) for pid in server_pids) - sum(cpu0[1])
        stored = (await js.stream_info(stream)).state.bytes  # one copy: multiply by replicas for disk
        if workload == "meter chain":
            for bucket in ("meter_seen", "meter_months"):
                st = (await js.stream_info(f"KV_hub_state_{bucket}")).state
                print(f"    KV {bucket}: {st.messages} records, {st.bytes / max(1, st.messages):.0f} bytes each "
                      f"({sizes['meters']} meters, 30 readings each)")
    finally:
        for proc in procs:
            await stop_runner(proc)
        await nc.close()
    n = len(batch)
    return {"rate": n / took, "runner_ms": 1000 * runner_cpu / n, "server_ms": 1000 * server_cpu / n, "n": n,
            "busy": runner_cpu / took / runners, "stored_bytes": stored / n}


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="cluster-scaling-"))
    sizes = {"pass-through": args.pass_messages, "call": args.call_messages, "meters": args.meters}
    counts = [int(x) for x in args.runners.split(",")]
    sink, sink_url = await start_sink()
    results: dict[tuple[str, str, int], dict[str, float]] = {}
    try:
        for topology in ("one server", "3-node cluster"):
            if topology == "one server":
                server: Any = EmbeddedNats().start()
                urls, pids = [server.url], [server.pid]
            else:
                server = LocalCluster(3, base_dir=work / "cluster").start()
                urls, pids = server.urls, [n.pid for n in server.nodes]
            try:
                for workload in WORKLOADS:
                    for runners in counts:
                        tag = f"{'c' if 'cluster' in topology else 's'}{workload[:4]}{runners}".replace(" ", "")
                        r = await one_run(urls, pids, work, sink_url, workload, runners, sizes, tag)
                        results[(topology, workload, runners)] = r
                        print(f"  {topology:<15} {workload:<13} {runners} runner(s): {r['rate']:>8,.0f} msg/s, "
                              f"runners {r['runner_ms']:.3f} CPU ms/msg ({r['busy']:.0%} of a core each), "
                              f"nats {r['server_ms']:.3f} CPU ms/msg, stream bytes per message in {r['stored_bytes']:.0f}",
                              flush=True)
            finally:
                server.stop()
    finally:
        sink.terminate()
        await sink.wait()
    print("\n| workload | topology | runners | msg/s | x one server, 1 runner | runner CPU ms/msg | runner busy "
          "| nats CPU ms/msg |")
    print("|---|---|---|---|---|---|---|---|")
    for (topology, workload, runners), r in results.items():
        base = results.get(("one server", workload, counts[0]), r)
        print(f"| {workload} | {topology} | {runners} | {r['rate']:,.0f} | {r['rate'] / base['rate']:.2f} | "
              f"{r['runner_ms']:.3f} | {r['busy']:.0%} | {r['server_ms']:.3f} |")
    print(f"\n{len(results)} runs; logs in {work}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pass", dest="pass_messages", type=int, default=20000)
    parser.add_argument("--call", dest="call_messages", type=int, default=4000)
    parser.add_argument("--meters", type=int, default=200, help="meters x 30 daily readings through the chain")
    parser.add_argument("--runners", default="1,2,3")
    from engine import logs

    logs.configure("error", "console")
    asyncio.run(main(parser.parse_args()))
