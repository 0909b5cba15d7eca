"""Benchmark: tariff lookups/s and p99 through `tariff.quote` (the shipped flow), warm cache and cold cache.

    .venv/bin/python bench/tariff_quote.py [--seconds 5] [--concurrency 64] [--latency 0.3] [--capacity 4]

Every party runs in its own process on loopback: an embedded nats-server, the Power Sales simulator
(latency 0.3 s, capacity 4), the responder under test, and this load generator. Phases:
1. warm: lookups over keys already quoted, `--concurrency` in flight, through the hub (a KV read, two
   transforms, the reply); baseline: a raw nats-py responder answering prepared bytes from a dict.
2. cold: every lookup a new key, as many in flight as Power Sales takes (`--capacity`), through the
   hub (adapter, Power Sales, KV write); baseline: raw aiohttp form POSTs to the simulator, same
   concurrency. Power Sales' latency bounds both at capacity / latency.
Prints lookups/s, p50/p99 and the hub/baseline ratios; stops by itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).absolute().parent.parent
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any, Awaitable, Callable  # noqa: E402

import aiohttp  # noqa: E402
import nats  # noqa: E402

from engine.embedded_nats import EmbeddedNats  # noqa: E402

HUB_SUBJECT, RAW_SUBJECT = "tariff.quote", "bench.raw.quote"
LOOKUP = {"households": 2, "postcode": "10115", "country": "DE", "gas": False}


def lookup(consumption: int) -> bytes:
    return json.dumps({**LOOKUP, "consumption": consumption}).encode()


# --- child processes ---------------------------------------------------------------------------


async def serve_hub(nats_url: str, sim_url: str) -> None:
    """The shipped tariff-quote flow in a Hub of its own, until SIGTERM."""
    from engine import logs
    from engine.runtime import Hub
    from engine.validation import load_project

    logs.configure("error", "console")
    tmp = Path(tempfile.mkdtemp(prefix="bench-tariff-"))
    (tmp / "config.yaml").write_text(f"""
endpoints:
  powersales:
    adapter: powersales
    description: Power Sales tariff engine (sandbox/powersales.py in the demo and tests).
    base_url: {sim_url}
    timeout: 2s
    max_concurrency: 4
    circuit_breaker: {{failures: 5, window: 30s, reset: 10s}}
""")
    (tmp / "tariff-quote.yaml").write_text((ROOT / "flows" / "tariff-quote.yaml").read_text())
    hub = Hub(load_project(tmp / "config.yaml", [tmp / "tariff-quote.yaml"]), servers=[nats_url])
    await hub.start()
    await _until_terminated()
    await hub.stop()


async def serve_raw(nats_url: str) -> None:
    """The floor: a nats-py responder that parses the lookup and answers prepared bytes from a dict."""
    answers: dict[int, bytes] = {}
    nc = await nats.connect(nats_url)

    async def cb(msg: Any) -> None:
        key = json.loads(msg.data)["consumption"]
        body = answers.get(key)
        if body is None:
            body = answers[key] = json.dumps({"quote_id": f"Q{key}", "cached": True, "tariffs": []}).encode()
        await nc.publish(msg.reply, body)

    await nc.subscribe(RAW_SUBJECT, queue="raw", cb=cb)
    await _until_terminated()
    await nc.close()


async def _until_terminated() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()


def spawn(*argv: str) -> tuple[subprocess.Popen[str], str]:
    """Start a child process and wait for its first line (its address, or "ready")."""
    proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- load ----------------------------------------------------------------------------------------


class Result:
    def __init__(self, latencies: list[float], seconds: float, errors: int, kinds: dict[str, int]) -> None:
        self.latencies, self.seconds, self.errors, self.kinds = sorted(latencies), seconds, errors, kinds

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def pct(self, p: float) -> float:
        return self.latencies[min(len(self.latencies) - 1, int(p * len(self.latencies)))] * 1000


async def run_load(call: Callable[[int], Awaitable[str]], keys: Callable[[], int], concurrency: int,
                   seconds: float) -> Result:
    """`concurrency` workers calling in a loop for `seconds`; latencies of the calls that finished."""
    latencies: list[float] = []
    kinds: dict[str, int] = {}
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                kind = await call(keys())
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)
            kinds[kind] = kinds.get(kind, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Result(latencies, time.perf_counter() - started, errors, kinds)


def kind_of(data: bytes) -> str:
    answer = json.loads(data)
    if "error" in answer:
        return "error:" + answer["error"]["class"]
    return "stale" if answer.get("stale") else "cached" if answer.get("cached") else "fresh"


async def main(args: argparse.Namespace) -> None:
    sim, sim_line = spawn("-m", "sandbox.powersales", "0", str(args.latency), str(args.capacity))
    sim_url = sim_line.split(" ", 1)[1].rsplit("/PSWeb", 1)[0]
    quote_url = sim_line.split(" ", 1)[1]
    with EmbeddedNats(data_dir=Path(tempfile.mkdtemp(prefix="bench-tariff-nats-"))) as broker:
        hub, _ = spawn(__file__, "--serve-hub", broker.url, sim_url)
        raw, _ = spawn(__file__, "--serve-raw", broker.url)
        nc = await nats.connect(broker.url)
        try:
            async def via(subject: str, key: int) -> str:
                return kind_of((await nc.request(subject, lookup(key), timeout=5)).data)

            warm_keys = list(range(3000, 3000 + args.keys))
            primed = await _prime(via, warm_keys, args.capacity)
            pick = lambda: random.choice(warm_keys)  # noqa: E731
            results = {
                "warm hub": await run_load(lambda k: via(HUB_SUBJECT, k), pick, args.concurrency, args.seconds),
                "warm raw": await run_load(lambda k: via(RAW_SUBJECT, k), pick, args.concurrency, args.seconds),
            }
            fresh = itertools.count(10_000).__next__
            results["cold hub"] = await run_load(lambda k: via(HUB_SUBJECT, k), fresh, args.capacity, args.seconds)
            async with aiohttp.ClientSession() as http:
                async def post(key: int) -> str:
                    form = {"HH_CNT": "2", "CONS_KWH_YR": str(key), "PLZ": "10115", "CTRY": "DE", "GAS_YN": "N"}
                    async with http.post(quote_url, data=form) as resp:
                        body = await resp.read()
                        return "fresh" if resp.status == 200 and b"<RC>0</RC>" in body else f"http:{resp.status}"
                results["cold raw"] = await run_load(post, fresh, args.capacity, args.seconds)
        finally:
            await nc.close()
            for proc in (hub, raw):
                stop(proc)
    stop(sim)
    print(f"Power Sales simulator: {args.latency * 1000:.0f} ms, capacity {args.capacity}; {args.seconds:g} s per phase; "
          f"{primed} keys primed; warm with {args.concurrency} in flight, cold with {args.capacity}")
    print(f"{'phase':<10} {'lookups/s':>10} {'p50 ms':>8} {'p99 ms':>8}  answers")
    for name, r in results.items():
        print(f"{name:<10} {r.rate:>10.1f} {r.pct(0.5):>8.1f} {r.pct(0.99):>8.1f}  {r.kinds}"
              + (f" +{r.errors} failed" if r.errors else ""))
    for phase in ("warm", "cold"):
        hub_r, raw_r = results[f"{phase} hub"], results[f"{phase} raw"]
        print(f"{phase}: hub/raw lookups/s {hub_r.rate / raw_r.rate:.2f}x, p99 hub/raw {hub_r.pct(0.99) / raw_r.pct(0.99):.2f}x")


async def _prime(via: Callable[[str, int], Awaitable[str]], keys: list[int], concurrency: int) -> int:
    """Quote every warm key once through the hub, `concurrency` at a time (Power Sales' pace)."""
    queue = list(keys)

    async def worker() -> None:
        while queue:
            await via(HUB_SUBJECT, queue.pop())

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(keys)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each phase")
    parser.add_argument("--concurrency", type=int, default=64, help="lookups in flight in the warm phases")
    parser.add_argument("--latency", type=float, default=0.3, help="Power Sales' seconds per answer")
    parser.add_argument("--capacity", type=int, default=4, help="Power Sales' calls in flight (and cold concurrency)")
    parser.add_argument("--keys", type=int, default=40, help="distinct lookups in the warm cache")
    parser.add_argument("--serve-hub", nargs=2, metavar=("NATS_URL", "SIM_URL"), help=argparse.SUPPRESS)
    parser.add_argument("--serve-raw", metavar="NATS_URL", help=argparse.SUPPRESS)
    cli = parser.parse_args()
    if cli.serve_hub:
        asyncio.run(serve_hub(*cli.serve_hub))
    elif cli.serve_raw:
        asyncio.run(serve_raw(cli.serve_raw))
    else:
        asyncio.run(main(cli))
