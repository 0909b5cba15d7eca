"""Cluster drill: a 3-node JetStream cluster (R3), two or three runner processes, a `call` flow and
the meter rules chain under steady load, while nodes and runners fail. Reports what a user would
count: sent, effects, repeated effects, dead-lettered (with each record's cause), lost, and how long
each fault held the work back.

    .venv/bin/python bench/cluster_drill.py [--runners 2] [--rate 60] [--meter-rate 80] [--partition 30]

Faults, in order, each followed by time to recover:
  1. SIGKILL of the node leading the call flow's stream (restarted 15 s later: it comes back behind)
  2. SIGKILL of a runner (restarted 5 s later, as a supervisor would)
  3. a node restarted (SIGTERM, then started again at once)
  4. a node partitioned: SIGSTOP for --partition seconds (sockets stay open, nothing answers), SIGCONT

Goal: 0 lost, 0 dead-lettered, 0 repeated effects caused by a node fault; repeated effects from the
runner kill at most what it had in flight. The target is an idempotent HTTP sink: a repeated call
with the same Idempotency-Key is counted, not applied twice. Stops everything it started.
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
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

import nats  # noqa: E402

from bench.cluster_common import (METER_FLOWS, causes, dead_letters, readings, start_runner,  # noqa: E402
                                  stop_runner, write_project)
from engine.messages import event_headers  # noqa: E402
from engine.pull_feed import runner_window  # noqa: E402
from sandbox.cluster import LocalCluster  # noqa: E402
from sandbox.http_sink import HttpSink  # noqa: E402

CALL_DURABLE, STREAM = "drill-call", "DRILL"


@dataclass
class Load:
    """What was sent and confirmed by JetStream, as it happens."""
    call_sent: int = 0
    meter_sent: int = 0
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)  # t, backlog, effects, repeats
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    repeated: list[tuple[float, str]] = field(default_factory=list)  # when, key: for the runner logs


def note_repeats(sink: HttpSink, load: Load, t0: float) -> None:
    """Record when each repeated effect arrived and its key, to look it up in the runner logs."""
    applied = sink._applied

    async def noting(request: Any) -> None:
        key = request.headers.get("Idempotency-Key")
        if key in sink.applied:
            load.repeated.append((round(time.monotonic() - t0, 1), key))
        await applied(request)

    sink._applied = noting  # type: ignore[method-assign]


async def publish(js: Any, subject: str, data: bytes, msg_id: str) -> None:
    """As a well-behaved producer: a refused publish (an election) is sent again under the same id."""
    headers = event_headers("/drill", subject, msg_id=msg_id)
    while True:
        try:
            await js.publish(subject, data, headers=headers, timeout=5)
            return
        except Exception:
            await asyncio.sleep(0.2)


async def paced(rate: float, items: Any, send: Any, load: Load) -> None:
    start = time.monotonic()
    for i, item in enumerate(items):
        if load.stop.is_set():
            return
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await send(i, item)


async def sample(load: Load, sink: HttpSink, js: Any, t0: float) -> None:
    """Every quarter second: the call flow's backlog (JetStream's count of messages not yet acked, so a
    dead letter counts as settled), its effects and repeated effects so far."""
    backlog = 0
    while True:
        try:
            info = await js.consumer_info(STREAM, CALL_DURABLE, timeout=0.5)
            backlog = info.num_pending + info.num_ack_pending
        except Exception:
            pass  # unanswered while the consumer elects a leader: keep the last figure
        effects = len(sink.applied)
        load.samples.append((time.monotonic() - t0, backlog, effects, sum(sink.applied.values()) - effects))
        await asyncio.sleep(0.25)


def recovery(load: Load, at: float, end: float, rate: float) -> dict[str, float]:
    """Within [at, end): the longest time without a new effect, and when the backlog was back to
    what it was just before the fault (within half a second of load)."""
    before = [s for s in load.samples if at - 5 <= s[0] < at] or load.samples[:1]
    baseline = sorted(s[1] for s in before)[len(before) // 2]
    after = [s for s in load.samples if at <= s[0] < end]
    stall, last_progress, recovered = 0.0, at, None
    for prev, cur in zip(after, after[1:]):
        if cur[2] > prev[2]:
            stall = max(stall, cur[0] - last_progress)
            last_progress = cur[0]
        if recovered is None and cur[0] > at + 1 and cur[1] <= baseline + rate / 2:
            recovered = cur[0] - at
    return {"longest_stall_s": round(stall, 1), "backlog_back_s": round(recovered, 1) if recovered else -1}


def repeats_between(load: Load, start: float, end: float) -> int:
    inside = [s for s in load.samples if start <= s[0] < end]
    return inside[-1][3] - inside[0][3] if len(inside) > 1 else 0


async def wait_for_leader(js: Any, stream: str, durable: str | None = None) -> str:
    while True:
        try:
            info = await (js.consumer_info(stream, durable, timeout=1) if durable else js.stream_info(stream))
            if info.cluster and info.cluster.leader:
                return info.cluster.leader
        except Exception:
            pass
        await asyncio.sleep(0.2)


async def run(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="cluster-drill-"))
    with LocalCluster(3, base_dir=work / "cluster") as cluster:
        async with HttpSink(record=False) as sink:
            sink.set_delay(0.01)
            runner_args = write_project(work, sink.url, ["drill-call", *METER_FLOWS])
            nc = await nats.connect(cluster.urls, ping_interval=2, max_outstanding_pings=2, max_reconnect_attempts=-1)
            js = nc.jetstream(timeout=10)
            logs = [work / f"runner{i}.log" for i in range(args.runners)]
            runners = [await start_runner(runner_args, cluster.urls, log) for log in logs]
            for durable, stream in ((CALL_DURABLE, STREAM), *((f, "METER") for f in METER_FLOWS)):
                await wait_for_leader(js, stream, durable)
            load, t0 = Load(), time.monotonic()
            note_repeats(sink, load, t0)
            # sized to be sent well within the load period, so every meter's month completes
            meter_batch = readings(max(1, int(0.6 * args.meter_rate * args.load_seconds) // 30), 30, "drill")

            async def send_call(i: int, _: Any) -> None:
                await publish(js, "drill.call", json.dumps({"n": i}).encode(), f"c{i}")
                load.call_sent += 1

            async def send_meter(i: int, reading: Any) -> None:
                await publish(js, "meter.reading.collected", json.dumps(reading).encode(), f"r{i}")
                load.meter_sent += 1

            tasks = [asyncio.create_task(sample(load, sink, js, t0)),
                     asyncio.create_task(paced(args.rate, range(10**9), send_call, load)),
                     asyncio.create_task(paced(args.meter_rate, meter_batch, send_meter, load))]
            faults: list[tuple[str, float]] = []

            def now() -> float:
                return time.monotonic() - t0

            await asyncio.sleep(args.warmup)
            leader = cluster.node(await wait_for_leader(js, STREAM))
            faults.append((f"SIGKILL stream leader's node {leader.name}", now()))
            leader.kill()
            await asyncio.sleep(15)
            await asyncio.to_thread(leader.start)
            await asyncio.sleep(args.observe)

            faults.append(("SIGKILL runner 0", now()))
            runners[0].kill()
            await runners[0].wait()
            await asyncio.sleep(5)
            runners[0] = await start_runner(runner_args, cluster.urls, logs[0])
            await asyncio.sleep(args.observe)

            node = cluster.node(await wait_for_leader(js, STREAM, CALL_DURABLE))
            faults.append((f"restart node {node.name} (consumer leader)", now()))
            await asyncio.to_thread(node.stop)
            await asyncio.to_thread(node.start)
            await asyncio.sleep(args.observe)

            node = cluster.node(await wait_for_leader(js, "METER"))
            faults.append((f"partition node {node.name} (SIGSTOP {args.partition:.0f} s)", now()))
            node.freeze()
            await asyncio.sleep(args.partition)
            node.thaw()
            await asyncio.sleep(args.observe)

            load.stop.set()
            end_load = now()
            drain_deadline = time.monotonic() + args.drain
            while time.monotonic() < drain_deadline:
                try:
                    pending = [await js.consumer_info(s, d, timeout=2) for d, s in
                               ((CALL_DURABLE, STREAM), *((f, "METER") for f in METER_FLOWS))]
                    if all(not c.num_pending and not c.num_ack_pending for c in pending):
                        break
                except Exception:
                    pass
                await asyncio.sleep(0.5)
            drained = now() - end_load
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            report = await count(js, sink, load, faults, drained, args)
            for proc in runners:
                await stop_runner(proc)
            await nc.close()
    print(f"\nrunner logs kept in {work}")
    return 0 if report["goal_met"] else 1


async def stored_ids(js: Any, subject: str) -> set[str]:
    ids: set[str] = set()
    info = await js.stream_info("METER", subjects_filter=subject)
    total = (info.state.subjects or {}).get(subject, 0)
    if total:
        sub = await js.subscribe(subject, ordered_consumer=True)
        for _ in range(total):
            msg = await sub.next_msg(timeout=10)
            ids.add((msg.headers or {}).get("Nats-Msg-Id", ""))
        await sub.unsubscribe()
    return ids


async def count(js: Any, sink: HttpSink, load: Load, faults: list[tuple[str, float]], drained: float,
                args: argparse.Namespace) -> dict[str, Any]:
    records = await dead_letters(js)
    call_ids = {f"c{i}" for i in range(load.call_sent)}
    done = set(sink.applied)
    dlq_call = {r["id"] for r in records if r["flow"] == CALL_DURABLE}
    received = await stored_ids(js, "meter.reading.received")
    months = await stored_ids(js, "meter.month.completed")
    dlq_meter = [r for r in records if r["flow"] in METER_FLOWS]
    repeats = sum(sink.applied.values()) - len(sink.applied)
    print(f"\ncluster drill: 3 nodes, R3, {args.runners} runners, call flow at {args.rate:.0f}/s and meter "
          f"chain at {args.meter_rate:.0f}/s")
    print(f"  call flow:   sent {load.call_sent}, effects {len(done & call_ids)}, repeated effects {repeats}, "
          f"dead-lettered {len(dlq_call)} ({len(dlq_call & done)} of them done anyway), "
          f"lost {len(call_ids - done - dlq_call)}")
    print(f"  meter chain: sent {load.meter_sent} readings, received {len(received)}, month totals {len(months)} "
          f"of {load.meter_sent // 30}, "
          f"dead-lettered {len(dlq_meter)}, lost {max(0, load.meter_sent - len(received) - len(dlq_meter))}")
    bounds = [t for _, t in faults[1:]] + [load.samples[-1][0]]
    print("  faults (time to recover = backlog back to its level before the fault):")
    for (name, at), end in zip(faults, bounds):
        rec = recovery(load, at, end, args.rate)
        print(f"    t={at:5.1f}s {name:<44} longest stall {rec['longest_stall_s']:>5.1f} s, backlog back after "
              f"{rec['backlog_back_s']:>5.1f} s, repeated effects {repeats_between(load, at, end)}")
    print(f"  drained {drained:.1f} s after the load stopped")
    every = load.samples[::20]
    timeline = [f"{t:.0f}s:{b}/{e - pe}" for (t, b, e, _), (_, _, pe, _) in zip(every[1:], every)]
    print(f"  call flow every 5 s, backlog (unacked + undelivered) / effects in those 5 s: {' '.join(timeline)}")
    if load.repeated:
        print(f"  repeated effects (t, key): {load.repeated[:40]}")
    for (flow, cls, text), n in causes(records).most_common():
        print(f"  DLQ {n:>5} x {flow} {cls}: {text}")
    node_repeats = sum(repeats_between(load, at, end) for (name, at), end in zip(faults, bounds) if "runner" not in name)
    lost = len(call_ids - done - dlq_call) + max(0, load.meter_sent - len(received) - len(dlq_meter))
    goal = lost == 0 and not records and node_repeats == 0 and repeats <= runner_window(2048, 16)
    print(f"  goal (0 lost, 0 DLQ, 0 repeats from node faults, runner repeats <= its window): "
          f"{'met' if goal else 'NOT met'}")
    return {"goal_met": goal}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runners", type=int, default=2, choices=[2, 3])
    # defaults a 2-core machine shared with other work keeps up with between faults (at 100/s and
    # 150/s the meter chain's catch-up after a fault starved the call flow of CPU for a minute, which
    # measured the machine, not the fault)
    parser.add_argument("--rate", type=float, default=60.0, help="call-flow messages per second")
    parser.add_argument("--meter-rate", type=float, default=80.0, help="meter readings per second")
    parser.add_argument("--partition", type=float, default=30.0, help="seconds a node stays frozen")
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--observe", type=float, default=20.0, help="seconds after each fault")
    parser.add_argument("--drain", type=float, default=180.0, help="most seconds to wait for the backlog")
    args = parser.parse_args()
    args.load_seconds = args.warmup + 15 + 3 * args.observe + 10 + args.partition + args.observe
    from engine import logs as hub_logs

    hub_logs.configure("error", "console")
    sys.exit(asyncio.run(run(args)))
