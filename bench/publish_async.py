"""Benchmark of one JetStream publish with its ack: engine/nats_client.HubJetStream against nats-py's own
JetStreamContext, on one connection to one embedded nats-server, in the same run.

    .venv/bin/python bench/publish_async.py [--pages 100] [--page-size 500] [--rounds 3]

Each round publishes `pages` x `page-size` messages with the hub's pre-encoded CloudEvents headers (as a
pull publishes a page of readings: every publish of a page in flight, then its acks awaited), once
with each context, alternating. Prints publishes/s and CPU µs per publish of this process (the ack's
handling included), medians of the rounds, and the ratio. Loopback only; stops by itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).absolute().parent.parent))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from nats.js import JetStreamContext  # noqa: E402
from nats.js.api import StreamConfig  # noqa: E402

from engine.embedded_nats import EmbeddedNats  # noqa: E402
from engine.nats_client import connect, finish_headers, shared_header_lines  # noqa: E402

PAYLOAD = b'{"meter_id": "M-000123", "register": "1.8.0", "read_at": "2025-03-01T00:00:00Z", "value": 1.5}'


async def pages(js, tag: str, n_pages: int, size: int) -> tuple[float, float]:
    lines = shared_header_lines({"ce-source": "/plu-hub/flows/bench", "ce-type": "meter.reading.collected",
                                 "ce-specversion": "1.0", "content-type": "application/json"})
    t0, c0, n = time.perf_counter(), time.process_time(), 0
    for _ in range(n_pages):
        futures = []
        for _ in range(size):
            n += 1
            msg_id = f"{tag}-{n}"
            futures.append(await js.publish_async("bench.pub", PAYLOAD,
                                                  headers=finish_headers(lines, ("ce-id", msg_id), ("Nats-Msg-Id", msg_id))))
        done, _ = await asyncio.wait(futures)
        assert not any(f.exception() for f in done)
    return n / (time.perf_counter() - t0), (time.process_time() - c0) / n * 1e6


async def main(args: argparse.Namespace) -> None:
    with EmbeddedNats() as server:
        nc = await connect(servers=[server.url], skip_subject_validation=True)
        contexts = {"nats-py JetStreamContext": JetStreamContext(nc, timeout=10), "HubJetStream": nc.jetstream(timeout=10)}
        await contexts["HubJetStream"].add_stream(StreamConfig(name="BENCH_PUB", subjects=["bench.pub"]))
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in contexts}
        for r in range(args.rounds):
            for name, js in contexts.items():
                runs[name].append(await pages(js, f"{name[:3]}{r}", args.pages, args.page_size))
        await nc.close()
    base = statistics.median(rate for rate, _ in runs["nats-py JetStreamContext"])
    print(f"{args.pages} pages x {args.page_size} publishes with acks, {args.rounds} rounds; medians")
    for name, values in runs.items():
        rate, cpu = statistics.median(v[0] for v in values), statistics.median(v[1] for v in values)
        print(f"{name:<26} {rate:>10,.0f} publishes/s   {cpu:5.1f} CPU µs/publish   {rate / base:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=100)
    parser.add_argument("--page-size", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
