"""Which records a dlq command acts on: its filters or record numbers turned into records, and the
refusal of a replay or purge whose selection is missing, ambiguous or "everything" by accident."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from dlq import store
from dlq.exits import NOT_FOUND, USAGE, Stop
from dlq.store import Record

DONE = {"replay": "replayed", "purge": "purged"}


def check_selector(args: argparse.Namespace) -> None:
    """Replay and purge act only on an explicit selection, never on "everything" by accident."""
    narrowing = any(v is not None for v in (args.error_class, args.grep, args.since, args.until, args.limit))
    verb = args.dlq_command
    if args.seqs and (narrowing or args.flow or args.all):
        raise Stop(USAGE, f"give record numbers or filters, not both: `dlq {verb} 12 15` or `dlq {verb} --flow F ...`")
    if args.seqs:
        return
    if args.all and not args.flow:
        raise Stop(USAGE, f"--all needs --flow F: {verb} one flow's records at a time (see `dlq stats` for the flows)")
    if not (narrowing or args.all):
        if args.flow:
            raise Stop(USAGE, f"--flow {args.flow} alone selects every record of that flow: add --all to confirm, "
                       "or narrow with --error-class, --grep, --since, --until or --limit")
        raise Stop(USAGE, f"nothing selected, nothing {DONE[verb]}: give record numbers (`dlq {verb} 12 15`), filters "
                   "(--flow, --error-class, --grep, --since, --until), or --all --flow F")


async def matching(js: Any, stream: str, args: argparse.Namespace) -> list[Record]:
    """The records the filters (--flow, --error-class, --grep, --since, --until, --limit) match."""
    try:
        return await store.list_records(js, stream, flow=args.flow, error_class=args.error_class, text=args.grep,
                                        since=args.since, until=args.until, limit=args.limit)
    except ValueError as exc:
        raise Stop(USAGE, f"--flow: {exc}") from None


async def one(js: Any, stream: str, seq: int) -> Record:
    """Record `seq`, or Stop(NOT_FOUND) saying where to look."""
    try:
        return await store.get_record(js, stream, seq)
    except store.RecordNotFound:
        raise Stop(NOT_FOUND, f"record {seq} is not in {stream}: it may have been replayed, purged or expired; "
                   "see `dlq list` for the records there are") from None


async def selected(args: argparse.Namespace, js: Any, stream: str) -> tuple[list[Record], list[int]]:
    """The records a replay/purge acts on, and the requested numbers that are not there."""
    if not args.seqs:
        return await matching(js, stream, args), []
    seqs = list(dict.fromkeys(args.seqs))
    found = await asyncio.gather(*(store.get_record(js, stream, s) for s in seqs), return_exceptions=True)
    for f in found:
        if isinstance(f, BaseException) and not isinstance(f, store.RecordNotFound):
            raise f
    missing = [s for s, f in zip(seqs, found) if isinstance(f, store.RecordNotFound)]
    for s in missing:
        print(f"record {s} is not in {stream} (replayed, purged or expired?): see `dlq list`", file=sys.stderr)
    return [f for f in found if isinstance(f, Record)], missing


def described(args: argparse.Namespace) -> str:
    """The filters in words, for "no records match …" and the count after a listing."""
    parts = [f"{name} {getattr(args, attr)}" for name, attr in
             (("flow", "flow"), ("error class", "error_class"), ("text", "grep")) if getattr(args, attr, None)]
    for name in ("since", "until"):
        if getattr(args, name, None):
            parts.append(f"{name} {getattr(args, name).isoformat(timespec='seconds')}")
    return f" matching {', '.join(parts)}" if parts else ""
