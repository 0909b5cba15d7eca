"""`runner.py status [--watch [S]] [--json]`: the command line around engine/status.py."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

EPILOG = """\
examples:
  runner.py status                       one screen: flows, circuits, waits near their deadline
  runner.py status --watch               refresh every 2 s until Ctrl-C (--watch 10: every 10 s)
  runner.py status --json | jq '.flows[] | select(.dead_letters > 0)'
  runner.py status --nats nats://10.0.0.5:4222   a hub on a cluster (every runner answers)

columns: RUNNERS consuming/answering runners; RATE/s messages settled per second and ERR/min failed
deliveries per minute over the last minute (from the runners); PENDING not yet delivered; UNACKED
delivered, not acknowledged; LAG age of the oldest unacknowledged message; DLQ records in dlq.<flow>;
WAITS messages in an `until` step. A `!` marks a flow with dead letters or a runner not consuming it.
With the hub stopped, the columns the store knows are still shown (read-only).
"""


def register(sub: Any) -> None:
    p = sub.add_parser("status", help="one screen for ops: flows, backlog, lag, errors, circuits, waits",
                       description="Show every flow's rate, backlog, lag, errors and dead letters, the circuits "
                       "of the endpoints and the waits nearest their deadline, from the running runners and "
                       "the hub's store.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "config" / "sandbox.yaml",
                   help="environment file (default: config/sandbox.yaml)")
    p.add_argument("--flows", type=Path, default=ROOT / "flows", help="flow directory (default: flows/)")
    p.add_argument("--nats", action="append", metavar="URL",
                   help="NATS server URL; default: config, else the running hub, else the hub's store")
    p.add_argument("--json", action="store_true", help="the same as JSON (one object per refresh with --watch)")
    p.add_argument("--watch", nargs="?", const=2.0, type=float, metavar="SECONDS",
                   help="refresh every SECONDS (default 2) until Ctrl-C")
    p.add_argument("--near", type=float, default=6.0, metavar="HOURS",
                   help="list waits whose deadline is this close or past (default 6)")


def cmd_status(args: argparse.Namespace, project: Any) -> int:
    if args.watch is not None and args.watch <= 0:
        print("--watch takes a positive number of seconds", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run(args, project))
    except KeyboardInterrupt:
        return 0


async def _run(args: argparse.Namespace, project: Any) -> int:
    from engine.clock import SYSTEM
    from engine.connection import ops_connection
    from engine.status import collect_status, render

    tty = sys.stdout.isatty()
    try:
        async with ops_connection(project.config, args.nats) as nc:
            js = nc.jetstream()
            while True:
                now = SYSTEM.now()
                async with asyncio.timeout(15):
                    status = await collect_status(nc, js, project, now, near=args.near * 3600)
                if args.json:
                    print(json.dumps(status, indent=None if args.watch else 2), flush=True)
                else:
                    if args.watch and tty:
                        print("\x1b[H\x1b[2J", end="")  # clear the screen: one screen, refreshed
                    print(render(status, now), flush=True)
                    if args.watch:
                        print(f"\n(refreshing every {args.watch:g}s; Ctrl-C to stop)", flush=True)
                if not args.watch:
                    return 0
                await asyncio.sleep(args.watch)
    except TimeoutError:
        print("timed out talking to NATS: is the hub's broker up? pass --nats URL", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cannot reach NATS: {exc}", file=sys.stderr)
        return 1
