"""Benchmark: what one HTTP call costs the hub, for the `http` adapter against the stacks it could use.

The sink runs in its own process so its CPU does not share the client's event loop. Each stack
sends the same JSON POST with the same correlation headers and parses the JSON answer, with N
concurrent tasks. The machine is shared and noisy, so the stacks take turns in short slices until
each has run --seconds in total: a burst of noise then hits all of them alike. The plain aiohttp
ClientSession loop is the baseline; the adapter's target is >= 0.8x of its req/s.

    .venv/bin/python bench/http_call.py [--seconds 10] [--concurrency 4] [--slice 1]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).absolute().parent.parent))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Awaitable, Callable  # noqa: E402

import aiohttp  # noqa: E402
import httpx  # noqa: E402
from httpx_aiohttp import AiohttpTransport  # noqa: E402

from engine.adapter import CallContext, Services  # noqa: E402
from adapters.http import HttpAdapter, HttpEndpointConfig  # noqa: E402

READING = {"meter_id": "DE-000123", "value": 1234.5, "unit": "kWh", "read_at": "2025-01-01T00:00:00Z"}
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
HEADERS = {"ce-id": "m-1", "ce-correlationid": "c-1", "traceparent": TRACEPARENT,
           "X-Correlation-Id": "c-1", "Idempotency-Key": "m-1", "Content-Type": "application/json"}
WARMUP_S = 0.5

Call = Callable[[], Awaitable[object]]


def _serve_sink(queue: "mp.Queue[str]") -> None:
    """Child process: an HttpSink that only counts, until the parent terminates it."""
    from sandbox.http_sink import HttpSink

    async def serve() -> None:
        sink = await HttpSink(record=False).start()
        queue.put(sink.url)
        await asyncio.Event().wait()

    asyncio.run(serve())


class Tally:
    """Requests, wall seconds and client CPU seconds one stack accumulated over its slices."""

    def __init__(self) -> None:
        self.requests, self.wall, self.cpu = 0, 0.0, 0.0
        self.slice_rates: list[float] = []

    @property
    def rate(self) -> float:
        return self.requests / self.wall

    @property
    def cpu_ms(self) -> float:
        return self.cpu / self.requests * 1000


async def _loops(call: Call, seconds: float, concurrency: int) -> int:
    """`concurrency` tasks calling in a loop for `seconds`; the number of calls completed."""

    async def worker(deadline: float) -> int:
        done = 0
        while time.perf_counter() < deadline:
            await call()
            done += 1
        return done

    deadline = time.perf_counter() + seconds
    return sum(await asyncio.gather(*(worker(deadline) for _ in range(concurrency))))


async def _slice(call: Call, seconds: float, concurrency: int, tally: Tally) -> None:
    cpu0, t0 = time.process_time(), time.perf_counter()
    done = await _loops(call, seconds, concurrency)
    wall = time.perf_counter() - t0
    tally.requests += done
    tally.wall += wall
    tally.cpu += time.process_time() - cpu0
    tally.slice_rates.append(done / wall)


async def _stacks(url: str, concurrency: int):
    """(name, call, close) for every stack measured, all sending the same request."""
    target = url + "/readings"
    pool = max(16, concurrency)

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=pool))

    async def plain_aiohttp() -> object:
        async with session.post(target, data=json.dumps(READING).encode(), headers=HEADERS) as resp:
            assert resp.status == 200, resp.status
            return json.loads(await resp.read())

    default = httpx.AsyncClient(limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool))

    async def httpx_default() -> object:
        resp = await default.post(target, content=json.dumps(READING).encode(), headers=HEADERS)
        assert resp.status_code == 200, resp.status_code
        return resp.json()

    over_aiohttp = httpx.AsyncClient(
        transport=AiohttpTransport(limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool)),
        timeout=None,
    )

    async def httpx_aiohttp_transport() -> object:
        resp = await over_aiohttp.post(target, content=json.dumps(READING).encode(), headers=HEADERS)
        assert resp.status_code == 200, resp.status_code
        return resp.json()

    adapter = HttpAdapter("bench", HttpEndpointConfig(
        adapter="http", base_url=url, path="/readings", max_connections=pool), Services())
    await adapter.start()
    ctx = CallContext({"ce-id": "m-1", "ce-correlationid": "c-1", "traceparent": TRACEPARENT},
                      msg_id="m-1", correlation_id="c-1", timeout=5.0)

    async def adapter_call() -> object:
        return await adapter.call(None, READING, ctx)

    return [
        ("aiohttp ClientSession (baseline)", plain_aiohttp, session.close),
        ("httpx AsyncClient, default pool", httpx_default, default.aclose),
        ("httpx + httpx-aiohttp transport", httpx_aiohttp_transport, over_aiohttp.aclose),
        ("http adapter call()", adapter_call, adapter.close),
    ]


async def _bench(url: str, seconds: float, concurrency: int, slice_s: float) -> None:
    stacks = await _stacks(url, concurrency)
    tallies = {name: Tally() for name, _, _ in stacks}
    turns = max(1, round(seconds / slice_s))
    try:
        for _, call, _ in stacks:  # open the connections, fill caches
            await _loops(call, WARMUP_S, concurrency)
        for turn in range(turns):
            for name, call, _ in stacks:
                await _slice(call, seconds / turns, concurrency, tallies[name])
            print(f"  turn {turn + 1}/{turns}: " + "  ".join(
                f"{t.slice_rates[-1]:6.0f}" for t in tallies.values()) + " req/s", flush=True)
    finally:
        for _, _, close in stacks:
            await close()

    base, adapter = tallies[stacks[0][0]], tallies[stacks[-1][0]]
    print(f"\nHTTP call, {concurrency} concurrent, {seconds:g} s per stack in {turns} interleaved slices; "
          f"sink in its own process\n")
    print(f"| {'stack':34s} | {'req/s':>7s} | {'CPU ms/req':>10s} | {'vs baseline':>11s} |")
    print(f"|{'-' * 36}|{'-' * 9}|{'-' * 12}|{'-' * 13}|")
    for name, t in tallies.items():
        print(f"| {name:34s} | {t.rate:7.0f} | {t.cpu_ms:10.3f} | {t.rate / base.rate:10.2f}x |")
    ratio = adapter.rate / base.rate
    per_turn = statistics.median(a / b for a, b in zip(adapter.slice_rates, base.slice_rates))
    verdict = "meets" if ratio >= 0.8 else "MISSES"
    print(f"\nadapter / baseline = {ratio:.2f}x req/s ({verdict} the 0.8x target; median per turn "
          f"{per_turn:.2f}x), CPU per request {adapter.cpu_ms / base.cpu_ms:.2f}x the baseline's")


def main() -> None:
    parser = argparse.ArgumentParser(description="req/s and CPU per HTTP call: aiohttp, httpx, the http adapter")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per stack, in total")
    parser.add_argument("--concurrency", type=int, default=4, help="concurrent calls in flight")
    parser.add_argument("--slice", type=float, default=1.0, help="seconds a stack runs before the next takes over")
    args = parser.parse_args()

    spawn = mp.get_context("spawn")
    queue: "mp.Queue[str]" = spawn.Queue()
    sink = spawn.Process(target=_serve_sink, args=(queue,), daemon=True)
    sink.start()
    try:
        url = queue.get(timeout=30)
        asyncio.run(_bench(url, args.seconds, args.concurrency, args.slice))
    finally:
        sink.terminate()
        sink.join(5)


if __name__ == "__main__":
    main()
