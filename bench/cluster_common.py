"""Shared pieces of bench/cluster_drill.py and bench/cluster_scaling.py: the flows and config they
run, runner processes started as an operator would (`runner.py run --nats …`), CPU read from /proc,
and the dead-letter records read back with their error class and text."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).absolute().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")
METER_FLOWS = ("meter-reading-dedupe", "meter-month-totals")


def config_text(sink_url: str, replicas: str = "auto") -> str:
    return textwrap.dedent(f"""
        nats: {{replicas: {replicas}}}
        streams:
          - {{name: DRILL, subjects: ["drill.>"], max_age: 1d}}
          - {{name: METER, subjects: ["meter.>"], max_age: 1d}}
        endpoints:
          target: {{adapter: http, base_url: "{sink_url}", path: "/effects/{{n}}", timeout: 2s,
                   circuit_breaker: {{failures: 20, window: 10s, reset: 2s}}}}
        dlq: {{stream: DLQ, max_age: 1d}}
        """)


CALL_FLOW = """
name: drill-call
description: A call per message to an idempotent HTTP target, the shape of the ERP and CRM flows.
source: {subject: drill.call}
steps:
  - call: {endpoint: target}
on_error: {retry: [200ms, 1s], redeliver: [2s, 5s, 10s, 30s]}
limits: {concurrency: 16}
"""

PASS_FLOW = """
name: drill-pass
description: Pass-through, no step but the publish, to measure the hub's own cost per message.
source: {subject: drill.pass}
steps:
  - publish: drill.passed
"""


def write_project(work: Path, sink_url: str, flows: list[str], replicas: str = "auto") -> list[str]:
    """Config and flow files under `work`; returns the `--config/--flows` arguments of runner.py."""
    (work / "flows").mkdir(parents=True, exist_ok=True)
    (work / "config.yaml").write_text(config_text(sink_url, replicas))
    for name in flows:
        if name == "drill-call":
            text = CALL_FLOW
        elif name == "drill-pass":
            text = PASS_FLOW
        else:
            text = (ROOT / "flows" / f"{name}.yaml").read_text()
        (work / "flows" / f"{name}.yaml").write_text(text)
    return ["--config", str(work / "config.yaml"), "--flows", str(work / "flows")]


async def start_runner(args: list[str], urls: list[str], log: Path) -> asyncio.subprocess.Process:
    nats_args = [a for url in urls for a in ("--nats", url)]
    return await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "runner.py"), "run", *nats_args, "--log-level", os.environ.get("RUNNER_LOG_LEVEL", "warning"), *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=open(log, "a"), env={**os.environ, "PYTHONUNBUFFERED": "1"})


async def stop_runner(proc: asyncio.subprocess.Process, timeout: float = 20.0) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU of a live process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS
    except (OSError, IndexError, ValueError):
        return 0.0


def readings(meters: int, days: int, run: str) -> list[dict[str, Any]]:
    """Daily interval readings per meter in time order (the order a vendor pull gives)."""
    start = datetime(2026, 11, 1, tzinfo=timezone.utc) - timedelta(hours=1)
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    return [{"meter_id": f"{run}-M{m:06d}", "site_id": f"{run}-S{m:06d}", "register": "1-0:1.8.0",
             "interval_start": (start + timedelta(days=d)).strftime(fmt),
             "read_at": (start + timedelta(days=d + 1)).strftime(fmt),
             "value": 10.0 + d, "unit": "kWh", "quality": "actual", "source": "vendor1/pull"}
            for d in range(days) for m in range(meters)]


async def dead_letters(js: Any, stream: str = "DLQ") -> list[dict[str, str]]:
    """Every record in the DLQ: flow, error class, error text and the original message's ce-id."""
    records: list[dict[str, str]] = []
    try:
        info = await js.stream_info(stream)
    except Exception:
        return records
    if not info.state.messages:
        return records
    sub = await js.subscribe("dlq.>", ordered_consumer=True)
    try:
        for _ in range(info.state.messages):
            msg = await sub.next_msg(timeout=10)
            h = msg.headers or {}
            records.append({"flow": h.get("Hub-Dlq-Flow", "?"), "class": h.get("Hub-Dlq-Error-Class", "?"),
                            "error": h.get("Hub-Dlq-Error", "")[:100], "id": h.get("ce-id", "")})
    finally:
        await sub.unsubscribe()
    return records


def causes(records: list[dict[str, str]]) -> Counter[tuple[str, str, str]]:
    """(flow, error class, error text) → records: which failure came from which cause."""
    return Counter((r["flow"], r["class"], r["error"]) for r in records)


def print_json(label: str, data: dict[str, Any]) -> None:
    print(f"{label} {json.dumps(data, sort_keys=True)}")
