"""`runner.py trigger` and `runner.py pending`: run a scheduled flow now, and see what waits.

Both talk to the broker the way `dlq` does (engine/connection.ops_connection): the running hub's,
config's, or an embedded one on the hub's store. A trigger stores ticks exactly like the schedule
would, so the running hub (any runner) does the work with its usual retries and checkpoints.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

TRIGGER_EPILOG = """\
examples:
  runner.py trigger erp-invoices-nightly                  one tick per `each` entry, now
  runner.py trigger erp-invoices-nightly --only country=DE   only the entries that match
  runner.py trigger erp-invoices-nightly --payload '{"country": "DE"}'   a tick of your own
  runner.py trigger meter-vendor-pulls --only vendor=vendor1 --payload '{"from": "2025-03-01T00:00:00+01:00"}'
                                                          the matching entries, with these fields set

The ticks are stored in JetStream (hub.schedule.<flow>); a running hub picks them up. The command
returns once they are stored, not when the work is done: follow it with the flow's output subjects
(e.g. ops.reconciliation) or its logs.
"""

PENDING_EPILOG = """\
examples:
  runner.py pending                                every wait of every flow, oldest first
  runner.py pending --flow contract-switch-track --overdue
  runner.py pending --json | jq '.[].key'
"""


def register(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=ROOT / "config" / "sandbox.yaml",
                        help="environment file (default: config/sandbox.yaml)")
    common.add_argument("--flows", type=Path, default=ROOT / "flows", help="flow directory (default: flows/)")
    common.add_argument("--nats", action="append", metavar="URL",
                        help="NATS server URL; default: config, else the running hub, else the hub's store")

    p = sub.add_parser("trigger", parents=[common], help="run a scheduled flow now (stores its ticks)",
                       description="Store the ticks of a scheduled flow now, as its schedule would.",
                       epilog=TRIGGER_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("flow", help="name of a flow with a `schedule` source")
    p.add_argument("--only", action="append", metavar="KEY=VALUE", help="only `each` entries with this value")
    p.add_argument("--payload", metavar="JSON", help="one tick with this payload instead of the `each` entries; "
                   "with --only, these fields set on each matching entry")

    p = sub.add_parser("pending", parents=[common], help="list waits of `until` steps (e.g. tariff switches)",
                       description="List the pending records of `until` steps: what waits, since when, "
                       "how often it was checked, when next, and whether its deadline passed.",
                       epilog=PENDING_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flow", help="only this flow")
    p.add_argument("--overdue", action="store_true", help="only waits past their deadline")
    p.add_argument("--json", action="store_true", help="as a JSON array")


def _fail(text: str, code: int = 2) -> int:
    print(text, file=sys.stderr)
    return code


def _entries(flow: Any, args: argparse.Namespace) -> list[dict[str, Any]] | str:
    payload: dict[str, Any] | None = None
    if args.payload is not None:
        try:
            payload = json.loads(args.payload)
        except ValueError as exc:
            return f"--payload is not JSON: {exc}"
        if not isinstance(payload, dict):
            return "--payload must be a JSON object"
        if not args.only:
            return [payload]
    entries = list(flow.source.each)
    for cond in args.only or []:
        key, sep, value = cond.partition("=")
        if not sep:
            return f"--only takes KEY=VALUE, got {cond!r}"
        entries = [e for e in entries if str(e.get(key)) == value]
    if payload is not None:  # an entry's own settings (a vendor's format and zone) plus the fields given
        entries = [{**e, **payload} for e in entries]
    return entries or "no `each` entry matches --only"


async def _with_js(args: argparse.Namespace, config: Any, body: Any) -> int:
    from engine.connection import ops_connection

    try:
        async with asyncio.timeout(15):
            async with ops_connection(config, args.nats) as nc:
                return await body(nc.jetstream())
    except TimeoutError:
        return _fail("timed out talking to NATS: is the hub's broker up? pass --nats URL", 1)
    except OSError as exc:
        return _fail(f"cannot reach NATS: {exc}", 1)


def cmd_trigger(args: argparse.Namespace, project: Any) -> int:
    from engine.schedule import publish_ticks, tick_subject

    flow = next((lf.flow for lf in project.flows if lf.flow.name == args.flow), None)
    if flow is None:
        return _fail(f"no flow {args.flow!r} in {args.flows} (flows: {', '.join(lf.flow.name for lf in project.flows)})")
    if not flow.is_scheduled:
        return _fail(f"flow {args.flow!r} has no schedule source; trigger runs scheduled flows only")
    entries = _entries(flow, args)
    if isinstance(entries, str):
        return _fail(entries)

    async def body(js: Any) -> int:
        label = "manual:" + datetime.now(timezone.utc).isoformat(timespec="seconds")
        ids = await publish_ticks(js, flow, label, manual=True, payloads=entries)
        for entry, msg_id in zip(entries, ids):
            print(f"stored tick {msg_id} on {tick_subject(flow.name)}: {json.dumps(entry)}")
        return 0

    return asyncio.run(_with_js(args, project.config, body))


def cmd_pending(args: argparse.Namespace, config: Any) -> int:
    from engine.waiting import pending_records

    async def body(js: Any) -> int:
        records = await pending_records(js, args.flow)
        now = datetime.now(timezone.utc).isoformat()
        if args.overdue:
            records = [r for r in records if r.get("deadline_at") and r["deadline_at"] < now]
        if args.json:
            print(json.dumps(records, indent=2))
            return 0
        if not records:
            print("nothing pending" + (f" for flow {args.flow}" if args.flow else ""))
            return 0
        print(f"{'FLOW':<26} {'KEY':<28} {'SINCE':<20} {'CHECKS':>6} {'NEXT CHECK':<20} DEADLINE")
        for r in records:
            overdue = r.get("deadline_at") and r["deadline_at"] < now
            print(f"{r['flow'][:26]:<26} {r['key'][:28]:<28} {r['since'][:19]:<20} {r['checks']:>6} "
                  f"{(r.get('next_check') or '')[:19]:<20} {(r.get('deadline_at') or '-')[:19]}"
                  f"{'  OVERDUE' if overdue else ''}")
        print(f"{len(records)} pending")
        return 0

    return asyncio.run(_with_js(args, config, body))
