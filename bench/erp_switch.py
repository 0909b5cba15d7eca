"""Benchmark: contract switches per second through one country ERP simulator answering in 50 ms.

    .venv/bin/python bench/erp_switch.py [--country de] [--latency 0.05] [--per-slot 25]

For concurrency 1 and 8, in one run against the same simulator (its own process):
1. raw: a plain aiohttp loop POSTing a prepared submit envelope (the protocol's floor)
2. adapter: the `soap` adapter (zeep over httpx) calling the submit operation directly
3. flow: the shipped contract-switch-request flow (crm.contract.signed -> ERP -> erp.contract.switch-requested)
   in a Hub on an embedded nats-server, limits.concurrency set to 1 or 8
Prints switches/s and the ratios. The ERP's latency bounds all three at concurrency/latency; what the
ratios show is what zeep, the flow, JetStream and the idempotency record cost on top. Loopback only.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).absolute().parent.parent
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

import aiohttp  # noqa: E402
import nats  # noqa: E402

from engine.adapter import CallContext, Services  # noqa: E402
from adapters.soap import SoapAdapter  # noqa: E402
from engine import logs  # noqa: E402
from engine.embedded_nats import EmbeddedNats  # noqa: E402
from engine.messages import event_headers  # noqa: E402
from engine.runtime import Hub  # noqa: E402
from engine.validation import flow_files, load_project  # noqa: E402
from transforms.contracts import to_switch_request  # noqa: E402
from transforms.erp_soap import switch_request  # noqa: E402

PASSWORD = "bench-pw"


def serve(country: str, latency: float, port_queue: "mp.Queue[int]") -> None:
    from sandbox.erp import ErpSimulator

    async def main() -> None:
        sim = await ErpSimulator(country, switch_delay=3600, password=PASSWORD).start()
        sim.set_latency(latency)
        port_queue.put(sim.port)
        await asyncio.Event().wait()

    asyncio.run(main())


def contract(country: str, run: str, i: int) -> dict:
    return {"contract_id": f"B-{run}-{i}", "version": 1, "account_id": f"A-{i}", "country": country.upper(),
            "tariff_code": "GREEN-12", "signed_on": "2026-12-01",
            "sites": [{"site_id": f"S-{i}", "postcode": "10115", "city": "Berlin"}]}


async def with_concurrency(n: int, total: int, one) -> float:
    """Run `one(i)` for i < total with n at a time; switches per second."""
    queue = iter(range(total))

    async def worker() -> None:
        for i in queue:
            await one(i)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(n)))
    return total / (time.perf_counter() - started)


async def raw_rate(address: str, envelope: bytes, ctype: str, n: int, total: int) -> float:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=n)) as http:
        async def one(i: int) -> None:
            async with http.post(address, data=envelope, headers={"Content-Type": ctype}) as r:
                await r.read()
                assert r.status == 200, r.status
        return await with_concurrency(n, total, one)


async def adapter_rate(adapter: SoapAdapter, country: str, n: int, total: int) -> float:
    run = uuid.uuid4().hex[:8]

    async def one(i: int) -> None:
        body = switch_request(to_switch_request(contract(country, run, i)))["erp_request"]
        await adapter.call("submit_switch", body, CallContext({}, f"m{i}", "c", 10.0))
    return await with_concurrency(n, total, one)


async def flow_rate(broker: EmbeddedNats, tmp: Path, country: str, n: int, total: int) -> float:
    flows = tmp / f"flows-{n}"
    flows.mkdir()
    text = (ROOT / "flows" / "contract-switch-request.yaml").read_text()
    (flows / "f.yaml").write_text(text.replace("limits: {concurrency: 8}", f"limits: {{concurrency: {n}}}"))
    project = load_project(ROOT / "config" / "sandbox.yaml", flow_files(flows))
    hub = Hub(project, servers=[broker.url])
    await hub.start()
    nc = await nats.connect(broker.url)
    js = nc.jetstream()
    got, done = 0, asyncio.Event()

    async def cb(msg) -> None:
        nonlocal got
        got += 1
        if got >= total:
            done.set()

    run = uuid.uuid4().hex[:8]
    sub = await js.subscribe("erp.contract.switch-requested", cb=cb, deliver_policy="new")
    started = time.perf_counter()
    for i in range(total):
        await js.publish("crm.contract.signed", json.dumps(contract(country, run, i)).encode(),
                         headers=event_headers("/bench", "crm.contract.signed"))
    await asyncio.wait_for(done.wait(), 600)
    rate = total / (time.perf_counter() - started)
    await sub.unsubscribe()
    await nc.close()
    await hub.stop()
    # the next run must not see this run's consumer position
    nc = await nats.connect(broker.url)
    await nc.jetstream().delete_consumer("CRM", "contract-switch-request")
    await nc.close()
    return rate


async def main(args: argparse.Namespace) -> None:
    logs.configure("error", "console")
    queue: mp.Queue[int] = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=serve, args=(args.country, args.latency, queue), daemon=True)
    proc.start()
    port = queue.get(timeout=30)
    address = f"http://127.0.0.1:{port}/erp"
    c = args.country.upper()
    os.environ[f"ERP_{c}_URL"] = address
    os.environ["ERP_DE_PASSWORD"] = PASSWORD
    os.environ.setdefault("CRM_BRIDGE_TOKEN", "bench")
    project = load_project(ROOT / "config" / "sandbox.yaml", [])
    adapter = SoapAdapter(f"erp_{args.country}", project.endpoints[f"erp_{args.country}"], Services())
    await adapter.start()
    envelope, ctype = await capture_envelope(adapter, args.country)
    tmp = Path(tempfile.mkdtemp(prefix="bench-erp-"))
    print(f"one {c} ERP simulator, {args.latency * 1000:.0f} ms per answer; switches/s (ideal = concurrency / latency)")
    print(f"{'concurrency':>11} {'raw aiohttp':>12} {'soap adapter':>13} {'flow':>8} {'adapter/raw':>12} {'flow/raw':>9}")
    with EmbeddedNats(data_dir=tmp / "nats") as broker:
        for n in (1, 8):
            total = args.per_slot * n
            raw = await raw_rate(address, envelope, ctype, n, total)
            direct = await adapter_rate(adapter, args.country, n, total)
            flow = await flow_rate(broker, tmp, args.country, n, total)
            print(f"{n:>11} {raw:>12.1f} {direct:>13.1f} {flow:>8.1f} {direct / raw:>11.2f}x {flow / raw:>8.2f}x")
    await adapter.close()
    proc.terminate()


async def capture_envelope(adapter: SoapAdapter, country: str) -> tuple[bytes, str]:
    """The XML zeep builds for one submit (WS-Security included), to replay verbatim in the raw loop."""
    client = adapter._client
    assert client is not None
    body = switch_request(to_switch_request(contract(country, "raw", 0)))["erp_request"]
    operation = adapter.config.aliases["submit_switch"]
    node = client.create_message(adapter._service, operation, **body)
    from lxml import etree

    soap12 = "2003/05/soap-envelope" in etree.tostring(node).decode()
    ctype = "application/soap+xml; charset=utf-8" if soap12 else "text/xml; charset=utf-8"
    return etree.tostring(node, xml_declaration=True, encoding="utf-8"), ctype


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--country", default="de", choices=["de", "fr", "it", "pt", "uk"])
    parser.add_argument("--latency", type=float, default=0.05, help="seconds the ERP takes per answer")
    parser.add_argument("--per-slot", type=int, default=25, help="switches per unit of concurrency")
    asyncio.run(main(parser.parse_args()))
