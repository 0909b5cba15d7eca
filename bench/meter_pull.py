"""Benchmark of the monthly meter pull: the hub's `pull` step against the plainest correct pull.

    .venv/bin/python bench/meter_pull.py [--meters 500] [--vendors vendor1,vendor2,vendor3,vendor4] [--latency 0.02]
    .venv/bin/python bench/meter_pull.py --vendors vendor5 --meters 20     # Green Button ESPI: 96 readings a day

The issue: "pull rate from a simulator with 20 ms latency per page". The four vendor platform
simulators (sandbox/meters/, ManualClock at 2025-04-02T01:00Z, `latency` seconds per page) run in a
process of their own, so their JSON building is charged to neither side. Per vendor, one month
(since 2025-03-01T00:00Z; ~30 daily readings per meter, one meter in five gas) is pulled by

1. ref: sandbox/meters/reference_pull.py, one aiohttp session, page after page, with the vendor
   transforms, collecting the readings in a list (no broker, no checkpoint) - the yardstick;
2. hub: a Hub running flows/meter-vendor-pulls.yaml (the `pull` step of engine/paged_pull.py with
   transforms/meter_pulls.py: call -> page transform -> publish every reading to JetStream and wait
   for the acks -> checkpoint in KV, then the reconciliation record), on a fresh embedded nats-server
   (JetStream on a temp dir) per run; timed from the manual tick's publish to the arrival of the
   reconciliation record on ops.reconciliation; the readings stored on the flow's publish subject
   are counted afterwards and must equal the record's `items`.

The same page size for both: the flow's `page_size` (vendor 2 pages by meters; both ask for the
meter count the flow's transform asks for). Finally all selected vendors in parallel: the reference
pulls under one asyncio.gather, then one hub with one tick per vendor (as the monthly schedule fires
them; the flow's `limits.concurrency` runs them side by side). Prints readings/s and pages/s of
both, the ratio hub/ref, the latency floor (pages x latency), CPU per page of this process, of
nats-server and of the simulators. Each hub's process is settled once it has started, as `runner.py
run` settles its own (engine/heap.py; the references run in the same process, so from the first hub
on they have it too); `--gc-default` leaves Python's collector as it is. Loopback only; stops by
itself. On a shared 2-core machine the figures move by +-20 % from run to run: compare the two sides
of one run.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).absolute().parent.parent))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from typing import Any  # noqa: E402

import aiohttp  # noqa: E402
import nats  # noqa: E402
import yaml  # noqa: E402

from engine import heap, logs  # noqa: E402
from engine.embedded_nats import EmbeddedNats  # noqa: E402
from engine.runtime import Hub  # noqa: E402
from engine.schedule import publish_ticks  # noqa: E402
from engine.validation import load_project  # noqa: E402
from sandbox.meters import PLATFORMS, ManualClock  # noqa: E402
from sandbox.meters.reference_pull import pull as reference_pull  # noqa: E402
from transforms import meter_pulls  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FLOW = "meter-vendor-pulls"
NOW = datetime(2025, 4, 2, 1, 0, tzinfo=timezone.utc)  # the monthly tick: 2 April, 03:00 Brussels
START = "2025-03-01T00:00:00Z"
# the vendors as the flow declares them (each entry: vendor, format, zone)
ENTRIES = {e["vendor"]: e for e in yaml.safe_load((ROOT / "flows" / f"{FLOW}.yaml").read_text())["source"]["each"]}
VENDORS = ["vendor1", "vendor2", "vendor3", "vendor4"]  # the default; vendor5 (ESPI, 15-minute readings) on request
SECRETS = {"METER_VENDOR1_API_KEY": "v1-sandbox-api-key", "METER_VENDOR2_CLIENT_SECRET": "v2-sandbox-client-secret",
           "METER_VENDOR3_PASSWORD": "v3-sandbox-password", "METER_VENDOR4_SECRET": "v4-sandbox-signing-secret",
           "METER_VENDOR5_CLIENT_SECRET": "v5 sandbox:s3cr=t+/é"}

# as tests/test_meter_pulls.py, with the endpoint settings of config/sandbox.yaml (caps, timeouts, breakers)
CONFIG = """
nats: {urls: []}
streams:
  - {name: METER, subjects: ["meter.>"], max_age: 1d}
  - {name: OPS, subjects: ["ops.>"], max_age: 1d}
endpoints:
  meter_vendor1:
    adapter: http
    base_url: ${METER_VENDOR1_URL}
    method: GET
    path: /api/v1/readings
    auth: {api_key: {header: X-Api-Key, value: {env: METER_VENDOR1_API_KEY}}}
    max_concurrency: 4
    timeout: 30s
    circuit_breaker: {failures: 5, window: 60s, reset: 30s}
  meter_vendor2:
    adapter: http
    base_url: ${METER_VENDOR2_URL}
    method: GET
    path: /v2/readings
    auth: {oauth2: {token_url: "${METER_VENDOR2_URL}/oauth2/token", client_id: plu-hub,
                    client_secret: {env: METER_VENDOR2_CLIENT_SECRET}, scope: "readings:read"}}
    max_concurrency: 2
    timeout: 30s
    circuit_breaker: {failures: 5, window: 60s, reset: 30s}
  meter_vendor3:
    adapter: http
    base_url: ${METER_VENDOR3_URL}
    method: GET
    path: /api/readings
    auth: {basic: {username: plu-hub, password: {env: METER_VENDOR3_PASSWORD}}}
    max_concurrency: 4
    timeout: 30s
    circuit_breaker: {failures: 5, window: 60s, reset: 30s}
  meter_vendor4:
    adapter: http
    base_url: ${METER_VENDOR4_URL}
    method: GET
    path: /v4/readings
    auth: {hmac_vendor4: {key_id: plu-hub, secret: {env: METER_VENDOR4_SECRET}}}
    max_concurrency: 2
    timeout: 30s
    circuit_breaker: {failures: 5, window: 60s, reset: 30s}
  meter_vendor5:
    adapter: http
    base_url: ${METER_VENDOR5_URL}
    method: GET
    path: /DataCustodian/espi/1_1/resource/Batch/Subscription/5
    headers: {Accept: application/atom+xml}
    auth: {oauth2: {token_url: "${METER_VENDOR5_URL}/oauth/token", client_id: plu-hub,
                    client_auth: client_secret_basic, client_secret: {env: METER_VENDOR5_CLIENT_SECRET}}}
    max_concurrency: 2
    timeout: 30s
    circuit_breaker: {failures: 5, window: 60s, reset: 30s}
dlq: {stream: DLQ, max_age: 1d}
"""

CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- the simulators, in their own process -------------------------------------------------------


def _sim_process(conn: Any, meters: int, latency: float) -> None:
    asyncio.run(_serve_sims(conn, meters, latency))


async def _serve_sims(conn: Any, meters: int, latency: float) -> None:
    clock = ManualClock(NOW)
    sims = {name: cls(meters, clock=clock, latency=latency) for name, cls in PLATFORMS.items()}
    for sim in sims.values():
        await sim.start()
    conn.send({name: sim.url for name, sim in sims.items()})
    loop = asyncio.get_running_loop()
    try:
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command is None:
                return
            if command == "reset":
                for sim in sims.values():
                    sim.reset()
                    sim.max_concurrent = 0
            conn.send({"cpu": time.process_time(),
                       "vendors": {name: {"requests": dict(sim.requests), "max_concurrent": sim.max_concurrent,
                                          "errors": sum(n for (_, status), n in sim.responses.items() if status >= 400)}
                                   for name, sim in sims.items()}})
    finally:
        for sim in sims.values():
            await sim.stop()


class Sims:
    """The simulator process and, for the reference pull, unstarted platform objects holding its URLs."""

    def __init__(self, meters: int, latency: float) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_sim_process, args=(child, meters, latency), daemon=True)
        self.proc.start()
        self.urls: dict[str, str] = self.conn.recv()
        self.proxies = {}
        for name, url in self.urls.items():
            proxy = PLATFORMS[name](meters)  # same credentials as the served one; never started
            proxy.url = url
            self.proxies[name] = proxy

    async def stats(self, command: str = "stats") -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        self.conn.send(command)
        return await loop.run_in_executor(None, self.conn.recv)

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(10)


def _server_cpu(pid: int | None) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return float("nan")


# --- the flow -----------------------------------------------------------------------------------


def flow_text() -> str:
    text = (ROOT / "flows" / f"{FLOW}.yaml").read_text()
    text, n = re.subn(r'(?m)^(\s+start:\s*)"[^"]*"', rf'\g<1>"{START}"', text, count=1)
    if n != 1:
        raise SystemExit(f"flows/{FLOW}.yaml: no `start:` line in the pull step to set to {START}")
    return text


def load(tmp: Path) -> tuple[Any, Any, Any]:
    """(project, flow, pull spec), loaded as runner.py loads them (what tests.helpers.project_from does)."""
    (tmp / "flows").mkdir(exist_ok=True)
    (tmp / "config.yaml").write_text(textwrap.dedent(CONFIG))
    path = tmp / "flows" / f"{FLOW}.yaml"
    path.write_text(flow_text())
    project = load_project(tmp / "config.yaml", [path])
    flow = next(lf.flow for lf in project.flows if lf.flow.name == FLOW)
    pull = next(step.pull for step in flow.steps if hasattr(step, "pull"))
    return project, flow, pull


def ref_size(vendor: str, page_size: int) -> int:
    """What the flow's request transform asks for per page (vendor 2 counts meters, vendor 5 entries)."""
    body = meter_pulls.request({**ENTRIES[vendor], "since": START, "cursor": None, "page_size": page_size})
    return int(body.get("limit") or body.get("pageSize") or body.get("maxResults") or body.get("max-results")
               or page_size)


# --- the two sides ------------------------------------------------------------------------------


async def run_reference(sims: Sims, vendor: str, page_size: int) -> dict[str, Any]:
    start, end = meter_pulls.window({**ENTRIES[vendor], "since": START})
    before = await sims.stats("reset")
    async with aiohttp.ClientSession() as http:
        c0, t0 = time.process_time(), time.perf_counter()
        items = await reference_pull(http, sims.proxies[vendor], start, end, size=ref_size(vendor, page_size))
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    after = await sims.stats()
    pages = after["vendors"][vendor]["requests"].get("readings", 0)
    return {"items": len(items), "pages": pages, "elapsed": elapsed, "cpu": cpu, "server_cpu": 0.0,
            "sim_cpu": after["cpu"] - before["cpu"], "max_concurrent": after["vendors"][vendor]["max_concurrent"],
            "errors": after["vendors"][vendor]["errors"]}


async def run_reference_parallel(sims: Sims, vendors: list[str], page_size: int) -> dict[str, Any]:
    """The reference pulls of all `vendors` at once (asyncio.gather, one session): the parallel yardstick."""
    windows = {v: meter_pulls.window({**ENTRIES[v], "since": START}) for v in vendors}
    before = await sims.stats("reset")
    async with aiohttp.ClientSession() as http:
        c0, t0 = time.process_time(), time.perf_counter()
        lists = await asyncio.gather(*(reference_pull(http, sims.proxies[v], *windows[v], size=ref_size(v, page_size))
                                       for v in vendors))
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    after = await sims.stats()
    pages = sum(after["vendors"][v]["requests"].get("readings", 0) for v in vendors)
    return {"items": sum(map(len, lists)), "pages": pages, "elapsed": elapsed, "cpu": cpu, "server_cpu": 0.0,
            "sim_cpu": after["cpu"] - before["cpu"]}


async def run_hub(sims: Sims, vendors: list[str], timeout: float) -> dict[str, Any]:
    """One fresh broker and hub; one manual tick per vendor; until every reconciliation record is in."""
    with tempfile.TemporaryDirectory(prefix="bench-meter-pull-") as tmp, EmbeddedNats() as server:
        project, flow, pull = load(Path(tmp))
        hub = Hub(project, servers=[server.url])
        await hub.start()
        if SETTLE:
            heap.settle()  # as `runner.py run` does once its hub has started (engine/heap.py)
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        records: list[tuple[float, dict[str, Any]]] = []
        all_in = asyncio.Event()

        async def on_record(msg: Any) -> None:
            records.append((time.perf_counter(), json.loads(msg.data)))
            if len(records) >= len(vendors):
                all_in.set()

        await nc.subscribe("ops.reconciliation", cb=on_record)  # a core subscriber sees each record as stored
        await nc.flush()
        try:
            before = await sims.stats("reset")
            s0, c0, t0 = _server_cpu(server.pid), time.process_time(), time.perf_counter()
            await publish_ticks(js, flow, NOW.isoformat(), manual=True, payloads=[ENTRIES[v] for v in vendors])
            try:
                await asyncio.wait_for(all_in.wait(), timeout)
            except TimeoutError:
                raise SystemExit(f"hub: {len(records)} of {len(vendors)} reconciliation records within {timeout:.0f} s "
                                 f"({[r['vendor'] for _, r in records]})") from None
            elapsed, cpu, server_cpu = time.perf_counter() - t0, time.process_time() - c0, _server_cpu(server.pid) - s0
            after = await sims.stats()
            info = await js.stream_info("METER", subjects_filter=pull.publish)
            stored = sum((info.state.subjects or {}).values())
        finally:
            await nc.close()
            await hub.stop()
    per_vendor = {}
    for at, rec in records:
        v = rec["vendor"]
        began = datetime.fromisoformat(rec["started_at"].replace("Z", "+00:00"))
        ended = datetime.fromisoformat(rec["finished_at"].replace("Z", "+00:00"))
        per_vendor[v] = {"items": rec["items"], "pages": rec["pages"], "published": rec["published"],
                         "duplicates": rec["duplicates"], "matched": rec["matched"], "elapsed": at - t0,
                         "pull_s": (ended - began).total_seconds(),
                         "max_concurrent": after["vendors"][v]["max_concurrent"],
                         "errors": after["vendors"][v]["errors"]}
    items = sum(r["items"] for r in per_vendor.values())
    return {"items": items, "pages": sum(r["pages"] for r in per_vendor.values()), "elapsed": elapsed, "cpu": cpu,
            "server_cpu": server_cpu, "sim_cpu": after["cpu"] - before["cpu"], "stored": stored,
            "vendors": per_vendor, "subject": pull.publish, "page_size": pull.page_size}


# --- report -------------------------------------------------------------------------------------


HEADER = (f"{'vendor':<8} {'side':<4} {'readings':>9} {'pages':>6} {'time s':>7} {'readings/s':>11} {'pages/s':>8} "
          f"{'ms/page':>8} {'hub/ref':>8}  {'cpu ms/page: this proc':>22} {'nats':>6} {'sims':>6}")


def row(vendor: str, side: str, r: dict[str, Any], ratio: float | None = None) -> str:
    pages = max(1, r["pages"])
    return (f"{vendor:<8} {side:<4} {r['items']:>9,} {r['pages']:>6} {r['elapsed']:>7.2f} "
            f"{r['items'] / r['elapsed']:>11,.0f} {r['pages'] / r['elapsed']:>8.1f} {r['elapsed'] / pages * 1000:>8.1f} "
            f"{'' if ratio is None else f'{ratio:.2f}x':>8}  {r['cpu'] / pages * 1000:>22.1f} "
            f"{r['server_cpu'] / pages * 1000:>6.1f} {r['sim_cpu'] / pages * 1000:>6.1f}")


SETTLE = True  # --gc-default: False


async def main(args: argparse.Namespace) -> None:
    global SETTLE
    SETTLE = not args.gc_default
    logs.configure("error")  # the hub's own nats_disconnected warning at each broker stop is noise here
    vendors = [v.strip() for v in args.vendors.split(",") if v.strip()]
    if unknown := sorted(set(vendors) - set(ENTRIES)):
        raise SystemExit(f"unknown vendors {unknown} (known: {', '.join(ENTRIES)})")
    sims = Sims(args.meters, args.latency)
    for name, url in sims.urls.items():
        os.environ[f"METER_{name.upper()}_URL"] = url
    os.environ.update(SECRETS)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            _, _, pull = load(Path(tmp))  # fail early on a broken flow file
    except BaseException:
        sims.close()
        raise
    page_size = pull.page_size
    print(f"meter pull: {args.meters:,} meters per vendor, month since {START} (NOW {NOW.isoformat()}), "
          f"page_size {page_size}, latency {args.latency * 1000:.0f} ms per page; flow publishes on {pull.publish}; "
          f"simulators in their own process", flush=True)
    per_day = {v: 96 if ENTRIES[v]["format"].endswith("ESPI") else 1 for v in vendors}  # ESPI: 15-minute readings
    timeout = 60 + sum(args.meters * 31 * per_day[v] / page_size * (args.latency + 0.05) for v in vendors)
    results: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    try:
        for vendor in vendors:
            print(f"  {vendor}: reference ...", end="", flush=True)
            ref = await run_reference(sims, vendor, page_size)
            print(f" {ref['elapsed']:.1f} s; hub ...", end="", flush=True)
            hub = await run_hub(sims, [vendor], timeout)
            print(f" {hub['elapsed']:.1f} s", flush=True)
            results[vendor] = {"ref": ref, "hub": hub}
            rec = hub["vendors"][vendor]
            if not (hub["stored"] == rec["items"] == rec["published"] == ref["items"]) or rec["duplicates"]:
                problems.append(f"{vendor}: stored {hub['stored']}, items {rec['items']}, published {rec['published']}, "
                                f"duplicates {rec['duplicates']}, reference {ref['items']}")
        parallel = None
        if len(vendors) > 1:
            print(f"  {'+'.join(vendors)} in parallel: reference ...", end="", flush=True)
            ref_parallel = await run_reference_parallel(sims, vendors, page_size)
            print(f" {ref_parallel['elapsed']:.1f} s; one hub ...", end="", flush=True)
            parallel = await run_hub(sims, vendors, timeout)
            print(f" {parallel['elapsed']:.1f} s", flush=True)
            want = sum(results[v]["ref"]["items"] for v in vendors)
            if not parallel["stored"] == parallel["items"] == want:
                problems.append(f"parallel: stored {parallel['stored']}, items {parallel['items']}, reference {want}")
    finally:
        sims.close()

    print()
    print(HEADER)
    for vendor in vendors:
        ref, hub = results[vendor]["ref"], results[vendor]["hub"]
        print(row(vendor, "ref", ref))
        print(row(vendor, "hub", hub, (hub["items"] / hub["elapsed"]) / (ref["items"] / ref["elapsed"])))
    print(f"latency floor (pages x {args.latency * 1000:.0f} ms, sequential pages): "
          + ", ".join(f"{v} {results[v]['hub']['pages'] * args.latency:.2f} s" for v in vendors))
    print("hub pull step alone (record's finished_at - started_at): "
          + ", ".join(f"{v} {results[v]['hub']['vendors'][v]['pull_s']:.2f} s "
                      f"({results[v]['hub']['vendors'][v]['pull_s'] / max(1, results[v]['hub']['pages']) * 1000:.1f} ms/page)"
                      for v in vendors))
    print("checks: " + "; ".join(
        f"{v} stored {results[v]['hub']['stored']:,} = items {results[v]['hub']['vendors'][v]['items']:,}"
        f" (ref {results[v]['ref']['items']:,}), matched {results[v]['hub']['vendors'][v]['matched']},"
        f" max concurrent {results[v]['hub']['vendors'][v]['max_concurrent']}" for v in vendors))
    if parallel is not None:
        p, rp = parallel, ref_parallel
        print(f"\nall of {', '.join(vendors)} in parallel (hub: one tick each, one hub, flow concurrency; ref: asyncio.gather):")
        print(HEADER)
        print(row("all", "ref", rp))
        print(row("all", "hub", p, (p["items"] / p["elapsed"]) / (rp["items"] / rp["elapsed"])))
        print(f"  hub total: {p['items']:,} readings in {p['elapsed']:.2f} s = {p['items'] / p['elapsed']:,.0f} readings/s, "
              f"{p['pages'] / p['elapsed']:.1f} pages/s (stored {p['stored']:,}); hub process busy "
              f"{p['cpu'] / p['elapsed'] * 100:.0f}% of one core")
        print("  each vendor's record arrived after: " + ", ".join(
            f"{v} {r['elapsed']:.2f} s ({r['pages']} pages, max concurrent {r['max_concurrent']})"
            for v, r in sorted(p["vendors"].items())))
    for problem in problems:
        print(f"  ! {problem}")
    if problems:
        raise SystemExit(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meters", type=int, default=500, help="per vendor platform (~30 readings each)")
    parser.add_argument("--vendors", default=",".join(VENDORS), help="comma-separated, e.g. vendor1,vendor4")
    parser.add_argument("--latency", type=float, default=0.020, help="seconds per page at the simulators")
    parser.add_argument("--gc-default", action="store_true",
                        help="leave the garbage collector as Python sets it (runner.py run settles it: engine/heap.py)")
    asyncio.run(main(parser.parse_args()))
