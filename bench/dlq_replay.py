"""Benchmark: `runner.py dlq replay --flow F --all` over 10K dead letters, against a raw nats-py
loop publishing the same 10K messages (publish_async, acks gathered) in the same run.

    .venv/bin/python bench/dlq_replay.py [--records 10000]

The replay does more than the baseline (reads the records, re-heads them, waits for each batch's
acks, deletes each record after its ack): the ratio says what that care costs. Loopback only.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).absolute().parent.parent))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import nats  # noqa: E402

from dlq.cli import run as dlq_run  # noqa: E402
from engine.dead_letter import build_headers  # noqa: E402
from engine.config import HubConfig, StreamConfig  # noqa: E402
from engine.embedded_nats import EmbeddedNats  # noqa: E402
from engine.errors import ValidationFailed  # noqa: E402
from engine.streams import ensure_streams  # noqa: E402
from runner import build_parser  # noqa: E402

ERR = ValidationFailed("ContractSigned: sites[0].postcode: String should have at least 2 characters", step="schema")


def record(i: int) -> tuple[bytes, dict[str, str]]:
    original = {"ce-id": f"id-{i}", "Nats-Msg-Id": f"id-{i}", "ce-source": "/crm", "ce-type": "crm.contract.signed",
                "ce-specversion": "1.0", "ce-correlationid": f"id-{i}", "content-type": "application/json"}
    headers = build_headers(original, flow="bench", err=ERR, attempts=1, subject="crm.contract.signed", stream="CRM",
                            sequence=i + 1, consumer="bench", first_failure=None,
                            history=[{"at": "2026-11-23T10:00:00.000+00:00", "delivery": 1, "error": str(ERR)}])
    payload = {"contract_id": f"C-{i}", "account_id": "A1", "country": "DE", "tariff_code": "T1",
               "signed_on": "2026-11-20", "sites": [{"site_id": "S1", "postcode": "1", "city": "Liège"}]}
    return json.dumps(payload).encode(), headers


async def publish_all(js, subject: str, items: list[tuple[bytes, dict[str, str]]]) -> float:
    t0 = time.perf_counter()
    for start in range(0, len(items), 1000):
        futs = [await js.publish_async(subject, data, headers=dict(h)) for data, h in items[start:start + 1000]]
        await asyncio.gather(*futs)
    return len(items) / (time.perf_counter() - t0)


async def main(n: int) -> None:
    with EmbeddedNats() as server:
        nc = await nats.connect(server.url)
        js = nc.jetstream(timeout=10)
        await ensure_streams(js, HubConfig(streams=[StreamConfig(name="CRM", subjects=["crm.>"])]))
        items = [record(i) for i in range(n)]
        await publish_all(js, "dlq.bench", items)
        raw = await publish_all(js, "crm.baseline", [(d, {k: v for k, v in h.items() if k != "Nats-Msg-Id"})
                                                     for d, h in items])
        args = build_parser().parse_args(["dlq", "replay", "--flow", "bench", "--all", "--nats", server.url])
        t0 = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):
            code = await dlq_run(args)
        replay = n / (time.perf_counter() - t0)
        left = (await js.stream_info("DLQ")).state.messages
        state = (await js.stream_info("CRM", subjects_filter="crm.contract.signed")).state
        landed = (state.subjects or {}).get("crm.contract.signed", 0)
        await nc.close()
    print(f"{n:,} dead letters")
    print(f"{'raw publish_async loop (baseline)':<44} {raw:>9,.0f} msg/s")
    print(f"{'dlq replay --all (read, publish, ack, delete)':<44} {replay:>9,.0f} msg/s   {replay / raw:.2f}x")
    print(f"exit code {code}; replayed messages in CRM: {landed:,}; records left in the DLQ: {left:,}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000)
    asyncio.run(main(parser.parse_args().records))
