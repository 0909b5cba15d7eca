"""Move meter-reading-dedupe's KV records to their slot keys: a one-off upgrade, safe to run again, with
the hub running or stopped.

Until this version the flow kept one record per meter register (`{meter_id}.{register}`), every reading
of the last 100 days in it: ~550 KB for a 15-minute meter, rewritten on every reading. Now a record is
kept per register and `seen_slot` (the reading's UTC day for intervals under 12 h, else its UTC month;
transforms/meter_rules.py). The new flow never reads the old records: left alone they expire 100 days
after their last write, and meanwhile a copy of a reading seen before the upgrade that comes by another
path (last month's pushes in the next monthly pull) goes on to meter.reading.received once more, where
an estimate after an actual would replace the actual in its month's total. This moves them:

    .venv/bin/python tools/migrate_meter_seen.py [--config config/sandbox.yaml] [--nats URL] [--dry-run]

Each old record's entries go into the slot records (merged with what the new flow already wrote there:
per reading the better quality; compare-and-set), then the old record is deleted, compare-and-set on the
revision read (one an old runner changed meanwhile is kept for the next run). Exit 0 when every old
record moved, 1 when some were left (run it again), 2 for a bad --config.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).absolute().parent.parent))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError  # noqa: E402

from engine.keyed_state import PREFIX, safe_key  # noqa: E402
from transforms.meter_rules import merge_seen, split_seen  # noqa: E402

BUCKET = PREFIX + "meter_seen"
# a key the new flow wrote: safe_key("{meter_id}.{register}.{seen_slot}"), its '.' escaped as '=2e.'
SLOT_SUFFIX = re.compile(r"=2e\.\d{4}-\d{2}(-\d{2})?$")
ATTEMPTS = 8


def is_old(kv_key: str) -> bool:
    return not SLOT_SUFFIX.search(kv_key)


def slot_key(old_key: str, slot: str) -> str:
    """The slot record's key: `safe_key` escapes character by character, so the old key's escaped
    text followed by the escaped `.{slot}` is the key the flow renders."""
    return old_key + safe_key(f".{slot}")


@dataclass
class Tally:
    old: int = 0
    moved: int = 0
    left: int = 0
    slots: int = 0
    old_bytes: int = 0
    largest_slot: int = 0


async def _merge_into(kv: Any, key: str, moved: dict[str, Any]) -> int:
    """Merge `moved` into the slot record compare-and-set; the size written."""
    for _ in range(ATTEMPTS):
        try:
            entry = await kv.get(key)
            current, revision = json.loads(entry.value), entry.revision
        except KeyNotFoundError:
            current, revision = None, None
        data = json.dumps(merge_seen(current, moved)).encode()
        try:
            if revision is None:
                await kv.create(key, data)
            else:
                await kv.update(key, data, last=revision)
            return len(data)
        except KeyWrongLastSequenceError:
            continue  # the running flow wrote it meanwhile: merge again
    raise RuntimeError(f"{key}: changed {ATTEMPTS} times while being merged")


async def migrate(kv: Any, *, dry_run: bool = False, progress: Any = print) -> Tally:
    tally = Tally()
    try:
        keys = [k for k in await kv.keys() if is_old(k)]
    except NoKeysError:
        keys = []
    tally.old = len(keys)
    for i, kv_key in enumerate(keys, 1):
        try:
            entry = await kv.get(kv_key)
        except KeyNotFoundError:
            continue  # expired or moved by another run meanwhile
        tally.old_bytes += len(entry.value)
        slots = split_seen(json.loads(entry.value))
        tally.slots += len(slots)
        if not dry_run:
            for slot, moved in sorted(slots.items()):
                size = await _merge_into(kv, slot_key(kv_key, slot), moved)
                tally.largest_slot = max(tally.largest_slot, size)
            try:
                await kv.delete(kv_key, last=entry.revision)
                tally.moved += 1
            except KeyWrongLastSequenceError:
                tally.left += 1  # an old runner wrote it after our read: its new entries move next run
        else:
            tally.largest_slot = max([tally.largest_slot] + [len(json.dumps(m)) for m in slots.values()])
        if i % 1000 == 0:
            progress(f"  {i:,} of {len(keys):,} old records")
    return tally


async def main(args: argparse.Namespace) -> int:
    from engine.connection import ops_connection
    from engine.errors import ConfigError
    from engine.validation import load_config

    try:
        config, _ = load_config(args.config)
    except ConfigError as exc:
        print("\n".join(exc.issues), file=sys.stderr)
        return 2
    async with ops_connection(config, args.nats) as nc:
        js = nc.jetstream()
        try:
            kv = await js.key_value(BUCKET)
        except BucketNotFoundError:
            print(f"no bucket {BUCKET}: nothing to migrate")
            return 0
        tally = await migrate(kv, dry_run=args.dry_run)
    verb = "would move" if args.dry_run else "moved"
    print(f"{BUCKET}: {tally.old:,} old records ({tally.old_bytes / 1024:,.1f} KB), {verb} "
          f"{tally.old if args.dry_run else tally.moved:,} into {tally.slots:,} slot records "
          f"(largest {tally.largest_slot / 1024:,.1f} KB)" + (f"; {tally.left:,} changed meanwhile: run again"
                                                              if tally.left else ""))
    return 1 if tally.left else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("config/sandbox.yaml"), help="the hub's environment file")
    parser.add_argument("--nats", action="append", metavar="URL", help="NATS server (repeat for a cluster); "
                        "default: the config's, the running hub's, or its store opened for the run")
    parser.add_argument("--dry-run", action="store_true", help="count and size what would move; change nothing")
    sys.exit(asyncio.run(main(parser.parse_args())))
