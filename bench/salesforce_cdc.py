"""Benchmark of Change Data Capture through the `salesforce:` source against a plain gRPC subscriber loop.

    .venv/bin/python bench/salesforce_cdc.py [--events 100000] [--batch 100]

The Salesforce emulator runs in a process of its own (`python -m sandbox.salesforce --accounts N`:
N account creations, N change events on /data/AccountChangeEvent). In the same run, from EARLIEST:

1. plain: a grpc.aio Subscribe loop that asks for `batch` events, decodes each with fastavro and asks
   for as many again: the floor of what any subscriber of this server can do, storing nothing;
2. source: the hub's PubSubIngress alone (adapters.salesforce, on a Landing): each FetchResponse
   decoded (CDC bitmaps to field names), stored in JetStream (one confirmed batch), its replay id
   checkpointed in KV, as many events asked for again;
3. hub: a whole Hub running that source and a flow that reads every stored event (and drops it).

Prints events/s of each and the ratios to the plain loop. Loopback only, an embedded nats-server;
stops by itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).absolute().parent.parent))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import aiohttp  # noqa: E402
import fastavro  # noqa: E402
import grpc  # noqa: E402

from adapters.salesforce.proto import pubsub_api_pb2 as pb  # noqa: E402
from adapters.salesforce.proto import pubsub_api_pb2_grpc as pb_grpc  # noqa: E402
from engine import logs  # noqa: E402
from engine.embedded_nats import EmbeddedNats  # noqa: E402
from engine.runtime import Hub  # noqa: E402
from engine.validation import load_project  # noqa: E402

TOPIC = "/data/AccountChangeEvent"
ROOT = Path(__file__).resolve().parents[1]


def start_emulator(accounts: int) -> tuple[subprocess.Popen[str], str, str]:
    proc = subprocess.Popen([sys.executable, "-m", "sandbox.salesforce", "--port", "0", "--pubsub-port", "0",
                             "--accounts", str(accounts)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"(http://\S+) .*Pub/Sub API at (\S+);", line)
    if not match:
        proc.kill()
        raise RuntimeError(f"the emulator did not start: {line!r}")
    return proc, match[1], match[2]


async def login(url: str) -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/services/oauth2/token", data={
                "grant_type": "client_credentials", "client_id": "plu-hub", "client_secret": "sandbox-secret"}) as r:
            return await r.json()


async def plain(url: str, target: str, events: int, batch: int) -> float:
    """A bare subscriber: ask, decode, ask again; no storage, no checkpoint."""
    token = await login(url)
    org_id = token["id"].rstrip("/").split("/")[-2]
    md = (("accesstoken", token["access_token"]), ("instanceurl", url), ("tenantid", org_id))
    async with grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", 16 << 20)]) as channel:
        stub = pb_grpc.PubSubStub(channel)
        schemas: dict[str, object] = {}
        queue: asyncio.Queue[pb.FetchRequest | None] = asyncio.Queue()
        queue.put_nowait(pb.FetchRequest(topic_name=TOPIC, replay_preset=pb.EARLIEST, num_requested=batch))

        async def requests():
            while (request := await queue.get()) is not None:
                yield request

        got = 0
        started = time.perf_counter()
        call = stub.Subscribe(requests(), metadata=md)
        async for response in call:
            for e in response.events:
                parsed = schemas.get(e.event.schema_id)
                if parsed is None:
                    info = await stub.GetSchema(pb.SchemaRequest(schema_id=e.event.schema_id), metadata=md)
                    parsed = schemas[e.event.schema_id] = fastavro.parse_schema(json.loads(info.schema_json))
                fastavro.schemaless_reader(io.BytesIO(e.event.payload), parsed)
            got += len(response.events)
            if got >= events:
                break
            if response.events:
                queue.put_nowait(pb.FetchRequest(num_requested=len(response.events)))
        elapsed = time.perf_counter() - started
        call.cancel()
        queue.put_nowait(None)
        return elapsed


CONFIG = """
nats: {{urls: []}}
streams: [{{name: OPS, subjects: ["ops.>"]}}]
endpoints:
  salesforce:
    adapter: salesforce
    login_url: {url}
    pubsub: {target}
    pubsub_tls: false
    auth: {{client_credentials: {{client_id: plu-hub, client_secret: {{env: BENCH_SF_SECRET}}}}}}
"""
FLOW = """
name: bench-cdc
source: {{salesforce: {{endpoint: salesforce, topic: {topic}, batch: {batch}}}}}
steps: [{{filter: "false"}}]
"""


async def hub_source(url: str, target: str, events: int, batch: int, nats_url: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.yaml").write_text(CONFIG.format(url=url, target=target))
        (Path(tmp) / "flow.yaml").write_text(FLOW.format(topic=TOPIC, batch=batch))
        os.environ["BENCH_SF_SECRET"] = "sandbox-secret"
        project = load_project(Path(tmp) / "config.yaml", [Path(tmp) / "flow.yaml"])
        hub = Hub(project, servers=[nats_url])
        await hub.start()   # the subscription starts here: its first batches count, the hub's start not much
        started = time.perf_counter()
        ingress = hub.ingresses["bench-cdc"]
        try:
            await ingress.wait_for(lambda i: i.stored >= events, timeout=3600)
            return time.perf_counter() - started
        finally:
            await hub.stop()


async def source_alone(url: str, target: str, events: int, batch: int, nats_url: str) -> float:
    """The ingress on a Landing of its own: what the source costs without a flow reading behind it."""
    import yaml

    from adapters.salesforce import PubSubIngress
    from engine.adapter import Services
    from engine.config import HubConfig
    from engine.ingress import Landing
    from engine.nats_client import connect
    from engine.spec import Flow
    from engine.streams import ensure_streams

    os.environ["BENCH_SF_SECRET"] = "sandbox-secret"
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.yaml").write_text(CONFIG.format(url=url, target=target))
        endpoint = load_project(Path(tmp) / "config.yaml", []).endpoints["salesforce"]
    flow = Flow.model_validate(yaml.safe_load(FLOW.format(topic=TOPIC, batch=batch).replace("bench-cdc", "bench-src")))
    nc = await connect(servers=[nats_url])
    js = nc.jetstream()
    await ensure_streams(js, HubConfig())
    ingress = PubSubIngress(flow, flow.source.salesforce, endpoint, Landing(flow, js, 10.0, "salesforce"),
                            Services(nc, js))
    started = time.perf_counter()
    await ingress.start()
    try:
        await ingress.wait_for(lambda i: i.stored >= events, timeout=3600)
        return time.perf_counter() - started
    finally:
        await ingress.stop()
        await nc.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="change events in the burst")
    parser.add_argument("--batch", type=int, default=100, help="num_requested (at most 100 outstanding)")
    args = parser.parse_args()
    logs.configure("warning", "console")
    print(f"starting the emulator with {args.events:,} account creations ...", flush=True)
    proc, url, target = start_emulator(args.events)
    try:
        with EmbeddedNats() as server:
            plain_s = await plain(url, target, args.events, args.batch)
            print(f"plain gRPC subscriber loop: {args.events:,} events in {plain_s:.1f}s = "
                  f"{args.events / plain_s:,.0f} events/s", flush=True)
            source_s = await source_alone(url, target, args.events, args.batch, server.url)
            print(f"salesforce: source alone (decode, store in JetStream, checkpoint): {args.events:,} events in "
                  f"{source_s:.1f}s = {args.events / source_s:,.0f} events/s", flush=True)
            hub_s = await hub_source(url, target, args.events, args.batch, server.url)
            print(f"hub: the source and a flow reading each stored event: {args.events:,} events in {hub_s:.1f}s = "
                  f"{args.events / hub_s:,.0f} events/s", flush=True)
            print(f"ratio source/plain: {plain_s / source_s:.2f}; hub/plain: {plain_s / hub_s:.2f}")
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    asyncio.run(main())
