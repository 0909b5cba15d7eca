"""Benchmark of the flow hot path against the best raw nats-py loop, in one run on one server.

    .venv/bin/python bench/hot_path.py [--messages 100000] [--rate 1000] [--latency-seconds 10] [--ops]

1. raw: callback-driven pull consumer -> publish_async -> gather acks per 256 -> ack each
2. flow, pass-through: source -> publish
3. flow, validate + transform: source -> schema MeterReading -> transform -> publish
4. end-to-end latency through flow 3 at a fixed offered load (p50/p99)
5. an HTTP `call` flow against a local sink (own process) vs a plain aiohttp loop, same concurrency
Prints msg/s, the ratio to raw, and the process's peak RSS. The process is settled as `runner.py run`
settles its own (engine/heap.py), for every shape alike; `--gc-default` leaves Python's collector as it
is. Loopback only; stops by itself.

--ops adds, in the same interleaved rounds, the flows of 2 and 3 (and 5's call flow) with what a Hub
turns on: the metrics probes (engine/probes.py) and tracing with OTLP/HTTP export to a local endpoint
at `--sample-ratio` (the config default, 0.001), plus the pass-through flow with every message traced
(1.0); each printed with its ratio to the same flow without them (target >= 0.95x).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).absolute().parent.parent))

import argparse  # noqa: E402
import logging  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import aiohttp  # noqa: E402
from nats.js import JetStreamContext  # noqa: E402
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig  # noqa: E402

from adapters.http import HttpAdapter, HttpEndpointConfig  # noqa: E402
from engine.adapter import Services  # noqa: E402
from engine import heap, logs  # noqa: E402
from engine.embedded_nats import EmbeddedNats  # noqa: E402
from engine.executor import StreamFlowRunner  # noqa: E402
from engine.idempotency import IdempotencyStore  # noqa: E402
from engine.nats_client import connect  # noqa: E402
from engine.pipeline import Pipeline  # noqa: E402
from engine.probes import FlowProbe, instrument_adapter, instrument_pipeline, EndpointMeter  # noqa: E402
from engine.spec import Flow  # noqa: E402

BATCH = 256
READING = {"meter_id": "M-1", "site_id": "S-1", "register": "1.8.0", "read_at": "2026-11-01T00:00:00+00:00",
           "value": 1.5, "unit": "kWh", "quality": "actual", "source": "vendor1/pull"}
PAYLOAD = json.dumps(READING).encode()


async def preload(js, subject: str, n: int) -> None:
    for start in range(0, n, 2000):
        futs = [await js.publish_async(subject, PAYLOAD, headers={"Nats-Msg-Id": f"{subject}-{i}"})
                for i in range(start, min(n, start + 2000))]
        await asyncio.gather(*futs)


async def raw_loop(nc, js, stream: str, subject: str, out: str, n: int, durable: str = "raw") -> float:
    """The best raw shape measured in MEASURED.md, written as plainly as possible."""
    await js.add_consumer(stream, ConsumerConfig(durable_name=durable, filter_subject=subject,
                                                 ack_policy=AckPolicy.EXPLICIT, max_ack_pending=4096))
    inbox = nc.new_inbox()
    done = asyncio.Event()
    pending: list = []
    state = {"acked": 0, "requested": 0}

    async def flush() -> None:
        batch, pending[:] = list(pending), []
        futs = [await js.publish_async(out, m.data) for m in batch]
        await asyncio.gather(*futs)
        for m in batch:
            await m.ack()
        state["acked"] += len(batch)
        if state["acked"] >= n:
            done.set()

    async def cb(msg) -> None:
        if msg.headers and "Status" in msg.headers and not msg.data:
            state["requested"] = 0
            return
        state["requested"] -= 1
        pending.append(msg)
        if len(pending) >= BATCH or state["acked"] + len(pending) >= n:
            await flush()
        if state["requested"] < BATCH:
            await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
                             json.dumps({"batch": 4 * BATCH, "expires": int(5e9)}).encode(), reply=inbox)
            state["requested"] += 4 * BATCH

    await nc.subscribe(inbox, cb=cb)
    t0 = time.perf_counter()
    await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
                     json.dumps({"batch": 4 * BATCH, "expires": int(5e9)}).encode(), reply=inbox)
    state["requested"] = 4 * BATCH
    await done.wait()
    return n / (time.perf_counter() - t0)


def make_flow(name: str, subject: str, steps: list, schema: str | None = None, **limits) -> Flow:
    spec = {"name": name, "source": {"subject": subject}, "steps": steps, "limits": limits or {}}
    if schema:
        spec["schema"] = schema
    return Flow.model_validate(spec)


def with_ops(runner: StreamFlowRunner, tracer) -> StreamFlowRunner:
    """What engine/operations.Operations.attach does for a Hub's runner: the probe and the timed steps."""
    probe = FlowProbe(runner.flow.name, tracer, calls=runner.pipeline.is_async)
    instrument_pipeline(runner.pipeline, probe)
    runner.probe = probe
    return runner


def otlp_tracer(endpoint: str, ratio: float):
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from engine.tracing import HubTracer

    return HubTracer.exporting(OTLPSpanExporter(endpoint=endpoint), sample_ratio=ratio, runner_id="bench")


async def run_flow(nc, js, stream: str, flow: Flow, n: int, adapters=None, tracer=False) -> tuple[float, StreamFlowRunner]:
    runner = StreamFlowRunner(Pipeline(flow, adapters or {}), stream, nc, js, 10.0)
    if tracer is not False:  # None: metrics only; a HubTracer: metrics and traces
        with_ops(runner, tracer)
    t0 = time.perf_counter()
    await runner.start()
    while runner.stats.acked + runner.stats.failed < n:
        await asyncio.sleep(0.01)  # a benchmark's progress poll, not a test wait
    rate = n / (time.perf_counter() - t0)
    await runner.stop()
    if runner.stats.failed:
        print(f"   ! {runner.stats.failed} messages failed in {flow.name}")
    return rate, runner


async def latency(nc, js, stream: str, rate: int, seconds: float) -> tuple[float, float, int]:
    flow = make_flow("lat", "bin.lat", [{"transform": "readings.to_crm_reading"}, {"publish": "bout.lat"}],
                     schema="MeterReading")
    runner = StreamFlowRunner(Pipeline(flow, {}), stream, nc, js, 10.0)
    await runner.start()
    samples: list[float] = []
    total = int(rate * seconds)
    got = asyncio.Event()

    async def on_out(msg) -> None:
        sent = float(msg.headers["ce-correlationid"])
        samples.append(time.time() - sent)
        if len(samples) >= total:
            got.set()

    await nc.subscribe("bout.lat", cb=on_out)
    start = time.perf_counter()
    for i in range(total):
        target = start + i / rate
        delay = target - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await js.publish_async("bin.lat", PAYLOAD, headers={"ce-correlationid": repr(time.time()), "ce-id": f"l{i}"})
    try:
        await asyncio.wait_for(got.wait(), 30)
    except TimeoutError:
        pass
    await runner.stop()
    samples.sort()
    p = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))] * 1000  # noqa: E731
    return p(0.50), p(0.99), len(samples)


def _serve_sink(queue) -> None:
    from sandbox.http_sink import HttpSink

    async def serve() -> None:
        sink = await HttpSink(record=False).start()
        queue.put(sink.url)
        await asyncio.Event().wait()

    asyncio.run(serve())


def start_sink():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_serve_sink, args=(queue,), daemon=True)
    proc.start()
    return proc, queue.get(timeout=20)


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of another process so far (Linux /proc), 0 when unknown."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Costs:
    """CPU per request of this process, the sink's and nats-server's, over one measured stretch: on a
    machine with few cores the three share them, so the sum bounds the rate (`ceiling`)."""

    def __init__(self, sink_pid: int, server_pid: int | None) -> None:
        self.pids = (sink_pid, server_pid)
        self.runs: dict[str, list[tuple[float, float, float, float]]] = {}  # label -> (rate, us: own, sink, server)

    def start(self) -> None:
        self._t0, self._c0 = time.perf_counter(), time.process_time()
        self._o0 = [cpu_seconds(p) for p in self.pids]

    def stop(self, label: str, n: int) -> None:
        rate = n / (time.perf_counter() - self._t0)
        own = (time.process_time() - self._c0) / n * 1e6
        sink, server = ((cpu_seconds(p) - o) / n * 1e6 for p, o in zip(self.pids, self._o0))
        self.runs.setdefault(label, []).append((rate, own, sink, server))

    def median(self, label: str) -> tuple[float, float, float, float]:
        runs = self.runs[label]
        return tuple(statistics.median(r[i] for r in runs) for i in range(4))  # type: ignore[return-value]


async def plain_loop(url: str, n: int, concurrency: int, costs: Costs) -> None:
    """The yardstick: `concurrency` tasks posting the reading with one aiohttp session."""
    async with aiohttp.ClientSession() as session:
        count = 0

        async def worker() -> None:
            nonlocal count
            while count < n:
                count += 1
                async with session.post(url + "/readings", json=READING) as resp:
                    await resp.read()

        costs.start()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        costs.stop("plain aiohttp loop", n)


async def http_section(nc, js, stream: str, n: int, concurrency: int, tracer=False, rounds: int = 1,
                       server_pid: int | None = None, http_rounds: int = 1) -> None:
    proc, url = start_sink()
    costs = Costs(proc.pid, server_pid)
    cores = len(os.sched_getaffinity(0))
    try:
        cfg = HttpEndpointConfig.model_validate({"adapter": "http", "base_url": url, "path": "/readings"})
        adapter = HttpAdapter("sink", cfg, Services(nc, js))
        await adapter.start()
        idem = IdempotencyStore(js, 3600.0)
        await idem.start()
        basic = [("plain aiohttp loop", False, False), ("no idempotency check", False, False),
                 ("idempotency check + mark (KV)", True, False)]
        variants = basic * http_rounds  # interleaved: a burst of noise on this shared machine hits all alike
        if tracer is not False:  # ops off and on, alternated: one run each says nothing on this machine
            variants = [*basic, *[(label, False, ops) for _ in range(rounds - 1)
                                  for label, ops in (("no idempotency check", False),
                                                     ("no idempotency check, ops on", True))]]
        plain_call = adapter.call
        for i, (label, enabled, ops) in enumerate(variants):
            if label == "plain aiohttp loop":
                await plain_loop(url, n, concurrency, costs)
                continue
            subject = f"bin.http{i}"
            await preload(js, subject, n)
            flow = make_flow(f"http{i}", subject, [{"call": {"endpoint": "sink"}}], concurrency=concurrency)
            flow = flow.model_copy(update={"idempotency": flow.idempotency.model_copy(update={"enabled": enabled})})
            runner = StreamFlowRunner(Pipeline(flow, {"sink": adapter}), stream, nc, js, 10.0, idem)
            adapter.call = plain_call
            if ops:
                instrument_adapter(adapter, EndpointMeter("sink", adapter))
                with_ops(runner, tracer)
            costs.start()
            await runner.start()
            while runner.stats.acked + runner.stats.failed < n:
                await asyncio.sleep(0.01)
            if ops:
                await asyncio.to_thread(tracer.provider.force_flush)
            costs.stop(label, n)
            await runner.stop()
        adapter.call = plain_call
        await adapter.close()
        raw_rps, raw_cpu, raw_sink, raw_server = costs.median("plain aiohttp loop")
        times = len(costs.runs["plain aiohttp loop"])
        print(f"{'http: plain aiohttp loop':<36} {raw_rps:>10,.0f} req/s   {raw_cpu / 1000:.3f} CPU ms/req in this process "
              f"(concurrency {concurrency})" + (f"   median of {times}" if times > 1 else ""))
        for label in costs.runs:
            if label == "plain aiohttp loop":
                continue
            rps, cpu, _, _ = costs.median(label)
            times = len(costs.runs[label])
            print(f"{'http: call flow, ' + label:<36} {rps:>10,.0f} req/s   {cpu / 1000:.3f} CPU ms/req   "
                  f"{rps / raw_rps:.2f}x  (target >= {0.6 if 'mark' in label else 0.8}x)"
                  + (f"   median of {times}" if times > 1 else ""))
        if "no idempotency check, ops on" in costs.runs:
            off, on = costs.runs["no idempotency check"], costs.runs["no idempotency check, ops on"]
            cpu_off, cpu_on = statistics.median(r[1] for r in off), statistics.median(r[1] for r in on)
            print(f"{'http: call flow, ops on vs off':<36} by CPU per request {cpu_off / cpu_on:.3f}x "
                  f"({cpu_on - cpu_off:+.1f} µs/req), by req/s "
                  f"{statistics.median(r[0] for r in on) / statistics.median(r[0] for r in off):.3f}x  (target >= 0.95x)")
        # where the CPU of a request goes: this process, the target (sink) and the broker share the
        # machine's cores, so the sum bounds the rate whatever the hub does
        print(f"\nhttp: CPU µs per request by process; ceiling = {cores} cores / their sum (this machine: {cores} cores)")
        print(f"  {'':<34} {'this proc':>10} {'sink':>8} {'nats-server':>12} {'sum':>8}   {'ceiling':>10}   measured")
        for label in costs.runs:
            rps, cpu, sink, server = costs.median(label)
            total = cpu + sink + server
            print(f"  {label:<34} {cpu:>10.0f} {sink:>8.0f} {server:>12.0f} {total:>8.0f}   "
                  f"{cores / total * 1e6:>7,.0f}/s   {rps:,.0f}/s ({rps / raw_rps:.2f}x)")
        for label in ("no idempotency check", "idempotency check + mark (KV)"):
            rps, cpu, sink, server = costs.median(label)
            best = cores / (raw_cpu + sink + server) * 1e6  # a hub that cost no more than the loop itself
            print(f"  {label}: even a hub costing only the loop's {raw_cpu:.0f} µs would reach "
                  f"{min(best, 1e6 / raw_cpu) / raw_rps:.2f}x here (sink and nats-server as measured)")
    finally:
        proc.terminate()
        proc.join(5)


async def main(args: argparse.Namespace) -> None:
    logs.configure("warning")
    logging.getLogger("opentelemetry").setLevel(logging.ERROR)  # at 100 % sampling the SDK drops spans, loudly
    per_round = args.messages // args.rounds
    with EmbeddedNats() as server:
        nc = await connect(servers=[server.url], skip_subject_validation=True)  # as engine/runtime.py
        js = nc.jetstream(timeout=10)
        plain_js = JetStreamContext(nc, timeout=10)  # the baseline: nats-py's own publish_async, not the hub's
        await js.add_stream(StreamConfig(name="BIN", subjects=["bin.>"]))
        await js.add_stream(StreamConfig(name="BOUT", subjects=["bout.>"]))
        if not args.gc_default:
            heap.settle()  # as `runner.py run` does once its hub has started; every shape runs with it
        rates: dict[str, list[float]] = {"raw": [], "pass": [], "vt": []}
        cpu: dict[str, list[float]] = {}  # CPU µs of this process per message: robust to other load on the machine
        sink = tracer = traced_all = None
        if args.ops:
            sink, sink_url = start_sink()  # stands in for the OTLP collector: answers 200 to the exports
            tracer = otlp_tracer(sink_url + "/v1/traces", args.sample_ratio)
            traced_all = otlp_tracer(sink_url + "/v1/traces", 1.0)
            rates.update({"pass+ops": [], "vt+ops": [], "pass+ops, all traced": []})
        cpu.update({shape: [] for shape in rates})
        # rounds interleave the shapes, so a burst of noise on this shared machine hits all alike
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}: preloading {per_round:,} messages x {len(rates)} ...", flush=True)
            for k, shape in enumerate(rates):
                await preload(js, f"bin.s{k}r{r}", per_round)
            shapes = list(enumerate(rates))
            order = shapes[r % len(shapes):] + shapes[:r % len(shapes)]
            for k, shape in order:
                subject, out, name = f"bin.s{k}r{r}", f"bout.s{k}r{r}", f"s{k}r{r}"
                cpu0 = time.process_time()
                ops = False if "+ops" not in shape else traced_all if "all traced" in shape else tracer
                if shape == "raw":
                    rate = await raw_loop(nc, plain_js, "BIN", subject, out, per_round, name)
                elif shape.startswith("pass"):
                    rate, _ = await run_flow(nc, js, "BIN", make_flow(name, subject, [{"publish": out}]), per_round,
                                             tracer=ops)
                else:
                    flow = make_flow(name, subject, [{"transform": "readings.to_crm_reading"}, {"publish": out}],
                                     schema="MeterReading")
                    rate, _ = await run_flow(nc, js, "BIN", flow, per_round, tracer=ops)
                if ops:  # the spans' export is this shape's cost: flushed inside its own window
                    await asyncio.to_thread(ops.provider.force_flush)
                rates[shape].append(rate)
                cpu[shape].append((time.process_time() - cpu0) / per_round * 1e6)
        med = {k: statistics.median(v) for k, v in rates.items()}
        us = {k: statistics.median(v) for k, v in cpu.items()}
        raw = med["raw"]
        print(f"\n{args.messages:,} messages per shape in {args.rounds} interleaved rounds; medians of the rounds")
        print(f"{'shape':<36} {'msg/s':>10}   ratio to raw   {'CPU µs/msg':>10}   (rounds)")
        print(f"{'raw nats-py loop (baseline)':<36} {raw:>10,.0f}                  {us['raw']:>10.1f}   {_fmt(rates['raw'])}")
        print(f"{'flow: pass-through':<36} {med['pass']:>10,.0f}   {med['pass'] / raw:.2f}x (>= 0.9x)  {us['pass']:>10.1f}   "
              f"{_fmt(rates['pass'])}")
        print(f"{'flow: validate + transform':<36} {med['vt']:>10,.0f}   {med['vt'] / raw:.2f}x (>= 0.75x)  {us['vt']:>10.1f}   "
              f"{_fmt(rates['vt'])}")
        if args.ops:
            for shape in ("pass+ops", "vt+ops", "pass+ops, all traced"):
                print(f"{'flow: ' + shape:<36} {med[shape]:>10,.0f}   {med[shape] / raw:.2f}x         {us[shape]:>10.1f}   "
                      f"{_fmt(rates[shape])}")
            print(f"\nops on vs off (metrics probes + OTLP traces at sample_ratio {args.sample_ratio}; target >= 0.95x):")
            for shape, base in (("pass+ops", "pass"), ("vt+ops", "vt"), ("pass+ops, all traced", "pass")):
                print(f"  {shape:<24} by CPU per message {us[base] / us[shape]:.3f}x "
                      f"({us[shape] - us[base]:+.1f} µs/msg)   by msg/s {med[shape] / med[base]:.3f}x"
                      + ("   (every message traced: informative)" if "all" in shape else ""))
        p50, p99, got = await latency(nc, js, "BIN", args.rate, args.latency_seconds)
        print(f"latency at {args.rate}/s offered ({got} msgs): p50 {p50:.2f} ms, p99 {p99:.2f} ms  (target p99 < 5 ms)")
        if not args.skip_http:
            await http_section(nc, js, "BIN", args.http_requests // (args.rounds if args.ops else 1),
                               args.concurrency, tracer if args.ops else False, args.rounds, server.pid, args.http_rounds)
        if sink is not None:
            tracer.shutdown()
            traced_all.shutdown()
            sink.terminate()
            sink.join(5)
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS of this process (runner + driver): {rss_mb:.0f} MB  (target < 150 MB)")
        await nc.close()


def _fmt(values: list[float]) -> str:
    return " ".join(f"{v / 1000:.1f}K" for v in values)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000, help="per shape, over all rounds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=int, default=1000, help="offered load for the latency run (msg/s)")
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--http-requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--http-rounds", type=int, default=1, help="the http section's loop and call flows, "
                        "interleaved this many times (medians); --ops sets its own rounds")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--gc-default", action="store_true",
                        help="leave the garbage collector as Python sets it (runner.py run settles it: engine/heap.py)")
    parser.add_argument("--ops", action="store_true", help="also run the flows with metrics and tracing on")
    parser.add_argument("--sample-ratio", type=float, default=0.001, help="trace sample ratio with --ops (the config default)")
    asyncio.run(main(parser.parse_args()))
