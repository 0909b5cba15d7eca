"""The bodies of `dlq list`, `show`, `stats`, `replay` and `purge`: select through dlq/selection.py,
act through dlq/store.py, print through dlq/format.py, and return the exit code (dlq/exits.py)."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from typing import Any, Callable

from dlq import claims, store
from dlq.exits import FAILED, NOT_FOUND, OK, USAGE, Stop
from dlq.format import Progress, as_json, fmt_age, print_record, print_table, table
from dlq.selection import DONE, described, matching, one, selected
from dlq.store import Record

PROGRESS_FROM = 5  # records; fewer replay without a progress line


def _now(args: argparse.Namespace) -> datetime | None:
    """The CLI's clock reading (dlq/cli.py `run` sets it): record ages are counted to it."""
    return getattr(args, "now", None)


async def cmd_list(args: argparse.Namespace, js: Any, stream: str) -> int:
    records = await matching(js, stream, args)
    if args.json:
        print(as_json([r.as_dict(_now(args)) for r in records]))
    else:
        print_table(records, _now(args))
    more = " (--limit reached; more may match)" if args.limit and len(records) >= args.limit else ""
    print(f"{len(records)} record(s) in {stream}{described(args)}{more}", file=sys.stderr)
    return OK


async def cmd_show(args: argparse.Namespace, js: Any, stream: str) -> int:
    r = await one(js, stream, args.seq)
    if r.claim is not None:
        await claims.fetch(js, r.claim)  # a claim-checked payload is shown as itself, not as an empty body
    if args.json:
        print(as_json(r.as_dict(_now(args))))
    else:
        print_record(r, stream, _now(args))
    return OK


async def cmd_stats(args: argparse.Namespace, js: Any, stream: str) -> int:
    result = await store.stats(js, stream, flow=args.flow, now=_now(args))
    if args.json:
        print(as_json(result))
        return OK
    rows = [(flow, str(f["count"]), fmt_age(f["oldest_age_s"]),
             ", ".join(f"{c} {n}" for c, n in f["error_classes"].items())) for flow, f in result["flows"].items()]
    table(("FLOW", "RECORDS", "OLDEST", "ERROR CLASSES"), rows, right={1})
    print(f"{result['total']} record(s) in {len(result['flows'])} flow(s), stream {stream}", file=sys.stderr)
    return OK


def previewed(args: argparse.Namespace, records: list[Record], missing: list[int], *, to: str = "") -> int | None:
    """No records, or --dry-run: say what would be done and return the exit code; None: go ahead."""
    if records and not args.dry_run:
        return None
    verb = args.dlq_command
    if not records:
        print(f"no records match{described(args)}: nothing {DONE[verb]}", file=sys.stderr)
    else:
        print_table(records, _now(args))
        print(f"would {verb} {len(records)} record(s){to}; run again without --dry-run to do it", file=sys.stderr)
    return NOT_FOUND if missing else OK


async def cmd_replay(args: argparse.Namespace, js: Any, stream: str) -> int:
    records, missing = await selected(args, js, stream)
    code = previewed(args, records, missing, to=" to their original subjects")
    if code is not None:
        return code
    progress = Progress(len(records), "replayed") if len(records) > PROGRESS_FROM else None
    outcome = await store.replay_many(js, records, keep=args.keep, rate=args.rate,
                                      progress=progress.update if progress else None)
    if progress:
        progress.done()
    for seq, why in sorted(outcome.failed.items()):
        print(f"record {seq}: {why}", file=sys.stderr)
    kept = " (records kept in the DLQ)" if args.keep else ""
    print(f"replayed {len(outcome.replayed)}, failed {len(outcome.failed)}{kept}")
    if outcome.failed:
        print("failed records stay in the DLQ: check `dlq show SEQ`, then replay or purge them", file=sys.stderr)
        return FAILED
    return NOT_FOUND if missing else OK


async def cmd_purge(args: argparse.Namespace, js: Any, stream: str, *, can_ask: Callable[[], bool]) -> int:
    """Purge the selection; without --yes ask first, which needs a terminal (`can_ask`)."""
    records, missing = await selected(args, js, stream)
    code = previewed(args, records, missing)
    if code is not None:
        return code
    if not args.yes:
        if not can_ask():
            raise Stop(USAGE, f"refusing to purge {len(records)} record(s) without confirmation (no terminal to ask on): "
                       "pass --yes (check the selection first with --dry-run)")
        print(f"purge {len(records)} records? [y/N] ", end="", file=sys.stderr, flush=True)
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            print("nothing purged", file=sys.stderr)
            return USAGE
    deleted, failed = await store.delete(js, stream, [r.seq for r in records], erase=args.erase)
    for seq, why in sorted(failed.items()):
        print(f"record {seq}: {why}", file=sys.stderr)
    print(f"purged {len(deleted)}, failed {len(failed)}")
    return FAILED if failed else (NOT_FOUND if missing else OK)
