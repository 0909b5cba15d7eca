"""Benchmark of the meter rules chain: readings on meter.reading.collected through meter-reading-dedupe
(a KV record per meter register) and meter-month-totals (another), against a raw nats-py loop doing
the same KV work.

    .venv/bin/python bench/meter_rules.py [--meters 500] [--days 30] [--interval 1d] [--concurrency 64]
    .venv/bin/python bench/meter_rules.py --meters 10 --days 35 --interval 15m   # 15-minute meters

1. raw: `--concurrency` asyncio tasks, one per meter at a time, each reading: KV get + create/update of
   the seen record (the dedupe's I/O, keyed as the flow keys it: meter register and `seen_slot`) and of
   the month record, then a publish with a Nats-Msg-Id and
   its ack: the least a correct dedupe + month total over JetStream KV costs.
2. hub: the two real flow files on one Hub, readings published in time order per meter (the order a
   vendor pull gives), timed until every reading is on meter.reading.received and every month total
   on meter.month.completed.

Prints readings/s of both and the ratio, and the size of the KV records each flow keeps: per bucket the
records, their largest and mean size, and (raw side) the bytes written per reading, the figure that
decides whether a record rewritten on every reading scales. One embedded nats-server on loopback;
stops by itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).absolute().parent.parent))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from datetime import datetime, timedelta, timezone  # noqa: E402
from typing import Any  # noqa: E402

import nats  # noqa: E402
from nats.js.api import StreamConfig  # noqa: E402
from nats.js.errors import KeyNotFoundError  # noqa: E402

from engine import logs  # noqa: E402
from engine.embedded_nats import EmbeddedNats  # noqa: E402
from engine.messages import event_headers  # noqa: E402
from engine.runtime import Hub  # noqa: E402
from engine.validation import load_project  # noqa: E402
from transforms import meter_rules as rules  # noqa: E402

ROOT = Path(__file__).absolute().parent.parent
FLOWS = ("meter-reading-dedupe", "meter-month-totals")
CONFIG = """
streams:
  - {name: METER, subjects: ["meter.>"], max_age: 1d}
dlq: {stream: DLQ, max_age: 1d}
"""


INTERVALS = {"15m": timedelta(minutes=15), "1h": timedelta(hours=1), "1d": timedelta(days=1)}


def readings(meters: int, days: int, run: str, interval: timedelta = INTERVALS["1d"]) -> list[dict[str, Any]]:
    """`days` of readings per meter, one per `interval`, from Brussels' midnight of 1 November 2026."""
    start = datetime(2026, 11, 1, tzinfo=timezone.utc) - timedelta(hours=1)
    per_meter = int(timedelta(days=days) / interval)
    return [{"meter_id": f"{run}-M{m:06d}", "site_id": f"{run}-S{m:06d}", "register": "1-0:1.8.0",
             "interval_start": rules.utc_text(start + i * interval), "read_at": rules.utc_text(start + (i + 1) * interval),
             "value": round(10.0 * interval / INTERVALS["1d"], 3) + i % 7, "unit": "kWh", "quality": "actual",
             "source": "vendor1/pull"}
            for m in range(meters) for i in range(per_meter)]


@dataclass
class Sizes:
    records: int = 0
    total: int = 0
    largest: int = 0
    written: int = 0  # bytes of every write (raw side only: the hub's writes are grouped)

    def line(self, name: str, readings: int) -> str:
        mean = self.total / self.records if self.records else 0
        text = f"    {name:<14} {self.records:>7,} records, largest {self.largest / 1024:>7.1f} KB, mean {mean / 1024:>6.1f} KB"
        return text + (f", {self.written / readings / 1024:>6.1f} KB written per reading" if self.written else "")


async def bucket_sizes(kv: Any) -> Sizes:
    sizes = Sizes()
    for key in await kv.keys():
        size = len((await kv.get(key)).value)
        sizes.records, sizes.total, sizes.largest = sizes.records + 1, sizes.total + size, max(sizes.largest, size)
    return sizes


async def raw(url: str, batch: list[dict[str, Any]], concurrency: int) -> tuple[float, dict[str, Sizes]]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="RAW", subjects=["raw.>"]))
    seen = await js.create_key_value(bucket="raw_seen")
    months = await js.create_key_value(bucket="raw_months")
    by_meter: dict[str, list[dict[str, Any]]] = {}
    for r in batch:
        by_meter.setdefault(r["meter_id"], []).append(r)
    queue: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue()
    for group in by_meter.values():
        queue.put_nowait(group)

    written = {"seen": 0, "months": 0}

    async def step(kv: Any, key: str, func: Any, reading: dict[str, Any], name: str) -> Any:
        try:
            entry = await kv.get(key)
            state, revision = json.loads(entry.value), entry.revision
        except KeyNotFoundError:
            state, revision = None, None
        result = func({"state": state, "message": reading})
        data = json.dumps(result["state"]).encode()
        written[name] += len(data)
        if revision is None:
            await kv.create(key, data)
        else:
            await kv.update(key, data, last=revision)
        return result["payload"]

    async def worker() -> None:
        while not queue.empty():
            for reading in queue.get_nowait():
                key = f"{reading['meter_id']}.x"
                out = await step(seen, f"{key}.{rules.slot_of(reading)}", rules.first_sighting, reading, "seen")
                await js.publish("raw.received", json.dumps(out).encode(),
                                 headers={"Nats-Msg-Id": f"{reading['meter_id']}:{reading['read_at']}"})
                total = await step(months, key, rules.month_progress, reading, "months")
                if total is not None:
                    await js.publish("raw.completed", json.dumps(total).encode())

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    took = time.perf_counter() - started
    sizes = {"meter_seen": await bucket_sizes(seen), "meter_months": await bucket_sizes(months)}
    sizes["meter_seen"].written, sizes["meter_months"].written = written["seen"], written["months"]
    await nc.close()
    return took, sizes


async def hub_side(url: str, batch: list[dict[str, Any]], concurrency: int, months: int
                   ) -> tuple[float, dict[str, Sizes]]:
    work = Path(tempfile.mkdtemp(prefix="bench-meter-rules-"))
    (work / "config.yaml").write_text(textwrap.dedent(CONFIG))
    paths = []
    for name in FLOWS:
        text = (ROOT / "flows" / f"{name}.yaml").read_text().replace("concurrency: 64", f"concurrency: {concurrency}")
        path = work / f"{name}.yaml"
        path.write_text(text)
        paths.append(path)
    hub = Hub(load_project(work / "config.yaml", paths), servers=[url])
    await hub.start()
    nc = await nats.connect(url)
    js = nc.jetstream()
    got = {"meter.reading.received": 0, "meter.month.completed": 0}
    done = asyncio.Event()

    async def count(msg: Any) -> None:
        got[msg.subject] += 1
        if got["meter.reading.received"] >= len(batch) and got["meter.month.completed"] >= months:
            done.set()

    for subject in got:
        await js.subscribe(subject, cb=count, ordered_consumer=True)
    started = time.perf_counter()
    pending = []
    for i, reading in enumerate(batch):
        pending.append(await js.publish_async(
            "meter.reading.collected", json.dumps(reading).encode(),
            headers=event_headers("/bench", "meter.reading.collected", msg_id=f"b{i}")))
        if len(pending) >= 2000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    await asyncio.wait_for(done.wait(), 3600)
    took = time.perf_counter() - started
    sizes = {name: await bucket_sizes(await js.key_value(f"hub_state_{name}")) for name in ("meter_seen", "meter_months")}
    await nc.close()
    await hub.stop()
    return took, sizes


async def main(args: argparse.Namespace) -> None:
    logs.configure("error", "console")
    with EmbeddedNats() as server:
        interval = INTERVALS[args.interval]
        raw_batch = readings(args.meters, args.days, "raw", interval)
        hub_batch = readings(args.meters, args.days, "hub", interval)
        raw_s, raw_sizes = await raw(server.url, raw_batch, args.concurrency)
        hub_s, hub_sizes = await hub_side(server.url, hub_batch, args.concurrency, args.meters if args.days >= 30 else 0)
    n = len(hub_batch)
    print(f"{n:,} readings ({args.meters} meters x {args.days} days, every {args.interval}), concurrency {args.concurrency}")
    print(f"  raw  KV loop (dedupe + month):   {n / raw_s:>8,.0f} readings/s  ({raw_s:.2f} s)")
    for name, sizes in raw_sizes.items():
        print(sizes.line(name, n))
    print(f"  hub  dedupe + month-totals:      {n / hub_s:>8,.0f} readings/s  ({hub_s:.2f} s)  "
          f"ratio {raw_s / hub_s:.2f}x")
    for name, sizes in hub_sizes.items():
        print(sizes.line(name, n))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meters", type=int, default=500)
    parser.add_argument("--days", type=int, default=30, help="readings per meter (30: every month completes)")
    parser.add_argument("--interval", choices=sorted(INTERVALS), default="1d",
                        help="one reading per meter every ... (15m: a smart meter's quarter-hours)")
    parser.add_argument("--concurrency", type=int, default=64)
    asyncio.run(main(parser.parse_args()))
