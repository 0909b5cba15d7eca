"""Benchmark: a month's totals for 1M meter registers into Salesforce, by Bulk API 2.0 against a plain
loop of sObject Collections calls, in the same run, against the emulator.

    .venv/bin/python bench/salesforce_bulk.py [--registers 1000000] [--batch 100000]

The emulator runs in a process of its own (`python -m sandbox.salesforce`). Both paths load the same
month totals (transforms/salesforce_meter.month_record) into Meter_Month__c by external id, each on
its own keys (both create every record), through the `salesforce` adapter's own client (session,
Sforce-Limit-Info, error mapping):

1. bulk: the totals in the Object Store in batches of `--batch`, as the `batch` source leaves them;
   per batch the adapter's bulk_upsert (CSV, create job, upload, UploadComplete), then bulk_status
   until the job finished and bulk_results (failed and unprocessed rows): what salesforce-meter-months
   and salesforce-bulk-jobs do, without the JetStream hops between them;
2. collections: one Collections upsert of 200 records after the other, until all are written.

Prints records/s and API requests of both, and the ratios. Loopback only; stops by itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).absolute().parent.parent))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import orjson  # noqa: E402

from engine import logs  # noqa: E402
from engine.adapter import CallContext, Services  # noqa: E402
from engine.embedded_nats import EmbeddedNats  # noqa: E402
from engine.nats_client import connect  # noqa: E402
from engine.validation import load_project  # noqa: E402
from transforms.salesforce_meter import month_record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ["Hub_Key__c", "Site_Id__c", "Meter_Id__c", "Register__c", "Month__c", "Kind__c", "Total__c", "Unit__c",
          "Readings__c"]
CONFIG = """
endpoints:
  salesforce:
    adapter: salesforce
    login_url: {url}
    pubsub: {target}
    pubsub_tls: false
    timeout: 10m
    auth: {{client_credentials: {{client_id: plu-hub, client_secret: {{env: BENCH_SF_SECRET}}}}}}
    operations:
      load: {{bulk_upsert: {{sobject: Meter_Month__c, external_id: Hub_Key__c, fields: [{fields}]}}}}
"""


def start_emulator() -> tuple[object, str, str]:
    import subprocess

    proc = subprocess.Popen([sys.executable, "-m", "sandbox.salesforce", "--port", "0", "--pubsub-port", "0",
                             "--daily-limit", "10000000"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # type: ignore[union-attr]
    match = re.search(r"(http://\S+) .*Pub/Sub API at (\S+);", line)
    if not match:
        proc.kill()
        raise RuntimeError(f"the emulator did not start: {line!r}")
    return proc, match[1], match[2]


def totals(first: int, count: int, path: str) -> list[dict]:
    """Month totals of registers first..first+count, as Meter_Month__c records keyed for `path`."""
    out = []
    for i in range(first, first + count):
        record = month_record({"meter_id": f"M{i:07d}", "site_id": f"S{i // 2:07d}", "register": "1-0:1.8.0",
                               "unit": "kWh", "month": "2027-01", "total": round(100 + (i % 997) * 0.37, 3),
                               "readings": 2976})
        record["Hub_Key__c"] += f":{path}"
        out.append(record)
    return out


async def bulk(adapter, js, registers: int, batch: int) -> tuple[float, int]:
    objects = await js.create_object_store("bench_batches")
    ctx = CallContext({}, "bench", "bench", 600.0)
    before = adapter.rest.requests
    started = time.perf_counter()

    submitted = []
    for first in range(0, registers, batch):  # batches close one after the other, as the batch source closes them
        items = await asyncio.to_thread(totals, first, min(batch, registers - first), "bulk")
        name = f"bench/{first}"
        body = await asyncio.to_thread(lambda: b"\n".join(orjson.dumps({"seq": first + n, "subject": "meter.month."
                                                                       "completed", "item": item})
                                                           for n, item in enumerate(items)))
        await objects.put(name, body)
        ref = {"batch": {"bucket": "bench_batches", "name": name}, "count": len(items), "stream": "METER",
               "flow": "bench", "subject": "meter.month.completed"}
        submitted.append(await adapter.call("load", ref, ctx))

    async def follow(job: dict) -> dict:
        while (status := await adapter.call("bulk_status", job, ctx))["state"] not in ("JobComplete", "Failed",
                                                                                        "Aborted"):
            await asyncio.sleep(0.5)
        outcomes = await adapter.call("bulk_results", job, ctx)
        return {**outcomes.answer, "status": status}

    jobs = await asyncio.gather(*(follow(job) for job in submitted))
    elapsed = time.perf_counter() - started
    assert all(j["state"] == "JobComplete" and j["failed"] == 0 for j in jobs), jobs
    assert sum(j["processed"] for j in jobs) == registers
    return elapsed, adapter.rest.requests - before


async def collections(adapter, registers: int) -> tuple[float, int]:
    before = adapter.rest.requests
    started = time.perf_counter()
    for first in range(0, registers, 200):
        records = [{"attributes": {"type": "Meter_Month__c"}, **r}
                   for r in totals(first, min(200, registers - first), "coll")]
        results = await adapter.rest.request("PATCH", "/composite/sobjects/Meter_Month__c/Hub_Key__c", timeout=60.0,
                                             json={"allOrNone": False, "records": records})
        assert all(r["success"] for r in results)
    return time.perf_counter() - started, adapter.rest.requests - before


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--registers", type=int, default=1_000_000, help="meter registers (one month total each)")
    parser.add_argument("--batch", type=int, default=20_000, help="records per Bulk API job")
    args = parser.parse_args()
    logs.configure("warning", "console")
    from adapters.salesforce import SalesforceAdapter

    proc, url, target = start_emulator()
    os.environ["BENCH_SF_SECRET"] = "sandbox-secret"
    try:
        with EmbeddedNats() as server, tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "config.yaml").write_text(CONFIG.format(url=url, target=target, fields=", ".join(FIELDS)))
            endpoint = load_project(Path(tmp) / "config.yaml", []).endpoints["salesforce"]
            nc = await connect(servers=[server.url])
            js = nc.jetstream(timeout=60)
            adapter = SalesforceAdapter("salesforce", endpoint, Services(nc, js))
            await adapter.start()
            try:
                print(f"{args.registers:,} month totals, Bulk API 2.0 jobs of {args.batch:,} ...", flush=True)
                bulk_s, bulk_requests = await bulk(adapter, js, args.registers, args.batch)
                print(f"bulk:        {bulk_s:7.1f}s = {args.registers / bulk_s:9,.0f} records/s, "
                      f"{bulk_requests:,} API requests", flush=True)
                coll_s, coll_requests = await collections(adapter, args.registers)
                print(f"collections: {coll_s:7.1f}s = {args.registers / coll_s:9,.0f} records/s, "
                      f"{coll_requests:,} API requests", flush=True)
                print(f"ratio bulk/collections: {coll_s / bulk_s:.2f}x the records/s, "
                      f"{coll_requests / max(1, bulk_requests):.0f}x fewer API requests")
                if os.environ.get("BENCH_SHOW_NATS_LOG"):
                    print(Path(server.log_path).read_text()[-3000:])
            finally:
                await adapter.close()
                await nc.close()
    finally:
        proc.terminate()  # type: ignore[attr-defined]
        proc.wait(30)     # type: ignore[attr-defined]


if __name__ == "__main__":
    asyncio.run(main())
