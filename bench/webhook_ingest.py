"""Benchmark of webhook ingestion into JetStream: the hub's WebhookIngress against a raw aiohttp handler.

    .venv/bin/python bench/webhook_ingest.py [--readings 500000] [--batch 500] [--senders 8]

Both sides run in this process on one embedded nats-server and take the same signed vendor-3 batches
from 8 concurrent senders in a process of their own (bodies built before the clock starts, signed
at send time). Each answer comes after every reading of the batch is confirmed by JetStream.

1. raw: aiohttp handler → HMAC check → orjson parse → `js.publish_async` per reading with a
   Nats-Msg-Id → wait for the batch's acks → 202
2. raw+ce: the same with the hub's CloudEvents header set per message (engine.messages.event_headers):
   what the hub's message headers alone cost, to attribute the gap
3. hub: adapters.webhook.WebhookIngress (shared ingress server, HMAC + replay memory, JMESPath
   `items`, `item_id`, Landing.store_many with CloudEvents headers) → 202

Prints readings/s, requests/s and p50/p99 response times of both, and the ratio. Loopback only; stops by itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).absolute().parent.parent))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import hashlib  # noqa: E402
import hmac  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from typing import Any  # noqa: E402

import aiohttp  # noqa: E402
import orjson  # noqa: E402
from aiohttp import web  # noqa: E402
from nats.js import JetStreamContext  # noqa: E402
from nats.js.api import StreamConfig  # noqa: E402

from engine.adapter import Services  # noqa: E402
from adapters.webhook import WebhookIngress  # noqa: E402
from engine import logs  # noqa: E402
from engine.config import HubConfig  # noqa: E402
from engine.embedded_nats import EmbeddedNats  # noqa: E402
from engine.ingress import Landing  # noqa: E402
from engine.messages import derived_id, event_headers  # noqa: E402
from engine.nats_client import connect  # noqa: E402
from engine.spec import Flow  # noqa: E402
from engine.streams import INGRESS_DEDUPE, ensure_streams  # noqa: E402
from sandbox.meters.webhook import sign  # noqa: E402

SECRET = "bench-webhook-secret"
RAW_SUBJECT = "bench.raw.readings"
ITEM_ID = "{device.id}:{commodity}:{reading.start}:{reading.duration}"


def _bodies(readings: int, batch: int, run: str) -> list[bytes]:
    """Vendor-3 batches (the webhook's body), one reading per meter, meters unique to this run."""
    bodies = []
    for first in range(0, readings, batch):
        records = [{"device": {"id": f"V3-{run}-{i:07d}", "installation": f"INST-{i:07d}"}, "commodity": "E",
                    "reading": {"start": 1793577600, "duration": 86400, "value": 1000 + i % 9000, "scaler": 0,
                                "unit": "Wh", "qc": 0}} for i in range(first, min(first + batch, readings))]
        bodies.append(json.dumps({"batchId": str(uuid.uuid4()), "sentAt": 0, "readings": records},
                                 separators=(",", ":")).encode())
    return bodies


async def _send(url: str, bodies: list[bytes], senders: int) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue = list(reversed(bodies))
    connector = aiohttp.TCPConnector(limit=senders)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        async def sender() -> None:
            while queue:
                body = queue.pop()
                headers = {"Content-Type": "application/json", "X-Signature": sign(SECRET, int(time.time()), body)}
                began = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as answer:
                    await answer.read()
                latencies.append(time.perf_counter() - began)
                statuses[answer.status] = statuses.get(answer.status, 0) + 1

        began = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(senders)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return {"elapsed": elapsed, "statuses": statuses, "requests": len(latencies),
            "p50": latencies[len(latencies) // 2], "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]}


def _sender_process(conn: Any, readings: int, batch: int, senders: int) -> None:
    """Own process: build the bodies, say ready, then for each URL received send them all and report."""
    while True:
        job = conn.recv()
        if job is None:
            return
        url, run = job
        bodies = _bodies(readings, batch, run)
        conn.send("ready")
        conn.recv()  # go
        conn.send(asyncio.run(_send(url, bodies, senders)))


async def _raw_server(js: Any, cloudevents: bool) -> tuple[web.AppRunner, int]:
    secret = SECRET.encode()

    def headers_of(msg_id: str) -> dict[str, str]:
        if cloudevents:
            return event_headers("/bench/raw", RAW_SUBJECT, msg_id=derived_id("ingress", "bench", msg_id))
        return {"Nats-Msg-Id": msg_id, "content-type": "application/json"}

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        t, _, mac = request.headers["X-Signature"].partition(",v1=")
        expected = hmac.new(secret, t[2:].encode() + b"." + body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(mac, expected):
            return web.Response(status=401)
        futures = []
        for r in orjson.loads(body)["readings"]:
            msg_id = f"{r['device']['id']}:{r['commodity']}:{r['reading']['start']}:{r['reading']['duration']}"
            futures.append(await js.publish_async(RAW_SUBJECT, orjson.dumps(r), headers=headers_of(msg_id)))
        done, _ = await asyncio.wait(futures, timeout=10)
        if len(done) != len(futures) or any(f.exception() for f in done):
            return web.Response(status=503)
        return web.json_response({"stored": sum(not f.result().duplicate for f in done)}, status=202)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/raw", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


async def _run(conn: Any, url: str, run: str) -> dict[str, Any]:
    conn.send((url, run))
    await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # bodies built
    conn.send("go")
    return await asyncio.get_running_loop().run_in_executor(None, conn.recv)


async def _count(js: Any, stream: str, subject: str) -> int:
    info = await js.stream_info(stream, subjects_filter=subject)
    return sum((info.state.subjects or {}).values())


def _line(name: str, result: dict[str, Any], readings: int) -> str:
    rate = readings / result["elapsed"]
    return (f"{name:<6} {rate:>10,.0f} readings/s  {result['requests'] / result['elapsed']:>7,.0f} req/s  "
            f"p50 {result['p50'] * 1000:7.1f} ms  p99 {result['p99'] * 1000:7.1f} ms  {result['elapsed']:6.1f} s  "
            f"statuses {result['statuses']}")


async def main(args: argparse.Namespace) -> None:
    logs.configure("warning")
    os.environ["BENCH_WEBHOOK_SECRET"] = SECRET
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_sender_process, args=(child, args.readings, args.batch, args.senders), daemon=True)
    proc.start()
    with EmbeddedNats() as server:
        nc = await connect(servers=[server.url], skip_subject_validation=True)
        js = nc.jetstream()
        plain_js = JetStreamContext(nc)  # the raw handlers publish with nats-py's own context, not the hub's
        config = HubConfig.model_validate({"http_ingress": {"port": 0}})
        await ensure_streams(js, config)
        await js.add_stream(StreamConfig(name="BENCH_RAW", subjects=["bench.raw.>"], duplicate_window=INGRESS_DEDUPE))
        run = uuid.uuid4().hex[:8]
        try:
            runner, port = await _raw_server(plain_js, cloudevents=False)
            raw = await _run(parent, f"http://127.0.0.1:{port}/raw", run)
            await runner.cleanup()
            raw_stored = await _count(js, "BENCH_RAW", RAW_SUBJECT)
            await js.purge_stream("BENCH_RAW")
            runner, port = await _raw_server(plain_js, cloudevents=True)
            raw_ce = await _run(parent, f"http://127.0.0.1:{port}/raw", run + "c")
            await runner.cleanup()
            raw_ce_stored = await _count(js, "BENCH_RAW", RAW_SUBJECT)

            flow = Flow.model_validate({"name": f"bench-webhook-{run}", "source": {"webhook": {
                "path": "/webhooks/vendor3/readings", "hmac": {"secret": {"env": "BENCH_WEBHOOK_SECRET"}},
                "items": "readings", "item_id": ITEM_ID}}, "steps": [{"publish": "bench.out"}]})
            ingress = WebhookIngress(flow, flow.source.webhook, None,  # type: ignore[union-attr]
                                     Landing(flow, js, 10.0, "webhook"), Services(nc, js, config))
            await ingress.start()
            hub = await _run(parent, ingress.url, run)
            await ingress.stop()
            hub_stored = await _count(js, "HUB_INGRESS", ingress.landing.subject)
        finally:
            parent.send(None)
            await nc.close()
    proc.join(10)
    print(f"webhook ingest: {args.readings:,} readings in batches of {args.batch}, {args.senders} concurrent senders "
          f"(own process), signed; stored raw {raw_stored:,}, raw+ce {raw_ce_stored:,}, hub {hub_stored:,}")
    print(_line("raw", raw, args.readings))
    print(_line("raw+ce", raw_ce, args.readings))
    print(_line("hub", hub, args.readings))
    print(f"ratio hub/raw: readings/s {raw['elapsed'] / hub['elapsed']:.2f}, p99 {hub['p99'] / raw['p99']:.2f}x; "
          f"raw+ce/raw: readings/s {raw['elapsed'] / raw_ce['elapsed']:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=500_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--senders", type=int, default=8)
    asyncio.run(main(parser.parse_args()))
