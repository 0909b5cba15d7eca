"""`runner.py dlq …`: list, show, replay, edit, purge and count dead-letter records.

The argparse surface and the dispatch: it parses, checks, connects and hands each sub-command to its
body (dlq/commands.py, dlq/edit.py), which select, confirm and print. Exit codes (dlq/exits.py) a script
can rely on: 0 ok, 1 an operation failed, 2 usage or configuration error (or refused), 3 record not found.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from contextlib import AsyncExitStack
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from dlq import commands, store
from dlq.edit import check_edit, cmd_edit
from dlq.exits import FAILED, USAGE, Stop
from dlq.selection import DONE, check_selector
from engine.clock import SYSTEM, Clock

ROOT = Path(__file__).resolve().parents[1]
CONNECT_TIMEOUT = 15.0


# --- argument types ----------------------------------------------------------------------------


def when(text: str) -> datetime | timedelta:
    """`2h` / `30m` / `7d` ago (a timedelta, read against the CLI's clock by `run`), or an ISO time
    (UTC unless it names an offset)."""
    from engine.durations import parse_duration

    try:
        return timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration ago (30m, 2h, 7d) nor an ISO time (2026-11-20T14:00)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def rate(text: str) -> float:
    """`50/s`, `600/m`, or a bare number meaning per second."""
    from engine.durations import parse_rate

    try:
        value = float(text)
    except ValueError:
        try:
            return parse_rate(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"a rate must be above zero, got {text!r}")
    return value


def seq_number(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a record number (the SEQ column of `dlq list`)")
    return int(text)


# --- parser ------------------------------------------------------------------------------------

DLQ_EPILOG = """\
examples:
  runner.py dlq stats                                   counts per flow and error class
  runner.py dlq list --flow contract-switch --since 2h  what failed lately
  runner.py dlq show 42                                 payload, headers and failure facts
  runner.py dlq replay 42                               send it back to its flow
  runner.py dlq edit 42 --set 'sites[0].postcode="1000"'  fix the payload, validate, replay
  runner.py dlq purge --flow demo --all --yes           drop every record of a flow

exit codes: 0 ok, 1 an operation failed, 2 usage/config error or refused, 3 record not found.
"""

EPILOGS = {
    "list": """\
examples:
  runner.py dlq list                            every record, oldest first
  runner.py dlq list --flow contract-switch --limit 20
  runner.py dlq list --error-class ValidationFailed --since 2h
  runner.py dlq list --grep C-10042 --json | jq '.[].payload'
""",
    "show": """\
examples:
  runner.py dlq show 42
  runner.py dlq show 42 --json | jq .headers
""",
    "replay": """\
A replay publishes the original payload to the original subject with the original headers (less
Hub-Dlq-*), a fresh Nats-Msg-Id, Hub-Replay-For: <flow> (only that flow takes it), Hub-Replay-Of:
<record seq> and the original Hub-Idempotency-Key (else its message id), so an effect that already
happened is not done twice. The record is deleted once the publish is confirmed (unless --keep).

examples:
  runner.py dlq replay 42 43                    these records
  runner.py dlq replay --flow contract-switch --error-class TargetRejected --since 1h
  runner.py dlq replay --flow meter-readings --all --rate 50/s   a whole flow, paced for the target
  runner.py dlq replay --flow meter-readings --all --dry-run     what would go
""",
    "edit": """\
The edited payload is checked against the flow's schema (the flow is the record's, found in --flows);
if it does not match, the field errors are printed and nothing is replayed (exit 2).
--set values are JSON when they parse as JSON, else strings: quote strings that look like numbers.

examples:
  runner.py dlq edit 42 --set 'sites[0].postcode="1000"'
  runner.py dlq edit 42 --set country=DE --set key_customer=true
  runner.py dlq edit 42 --patch '[{"op": "replace", "path": "/tariff_code", "value": "T2"}]'
  EDITOR=nano runner.py dlq edit 42             edit the payload by hand (unchanged: aborted)
""",
    "purge": """\
examples:
  runner.py dlq purge 42 43 --yes
  runner.py dlq purge --flow demo --error-class ValidationFailed --dry-run
  runner.py dlq purge --flow demo --all         asks "purge N records? [y/N]" on a terminal
""",
    "stats": """\
examples:
  runner.py dlq stats
  runner.py dlq stats --flow contract-switch --json
""",
}


def _sub(sub: Any, name: str, help: str, description: str, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=description, epilog=EPILOGS[name], parents=parents,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _filters(p: argparse.ArgumentParser, *, limit_help: str) -> None:
    p.add_argument("--flow", help="only this flow's records (subject dlq.<flow>)")
    p.add_argument("--error-class", metavar="CLASS", help="only this error class (e.g. ValidationFailed)")
    p.add_argument("--grep", metavar="TEXT", help="only records whose error text or payload contains TEXT (any case)")
    p.add_argument("--since", type=when, metavar="WHEN", help="dead-lettered at or after WHEN: 2h, 30m, 7d ago or an ISO time (UTC)")
    p.add_argument("--until", type=when, metavar="WHEN", help="dead-lettered at or before WHEN")
    p.add_argument("--limit", type=seq_number, metavar="N", help=limit_help)


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add `dlq` and its sub-commands to runner.py's sub-parsers."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("where")
    group.add_argument("--config", type=Path, default=ROOT / "config" / "sandbox.yaml",
                       help="environment file: NATS and the DLQ stream name (default: config/sandbox.yaml)")
    group.add_argument("--flows", type=Path, default=ROOT / "flows",
                       help="flow directory, for the schema `edit` validates against (default: flows/)")
    group.add_argument("--nats", action="append", metavar="URL",
                       help="NATS server URL (repeat for a cluster); default: config, else the running hub, "
                       "else an embedded server on the hub's store")

    p = subparsers.add_parser("dlq", help="inspect, replay, edit and purge dead-letter records",
                              description="Work with the dead-letter queue (stream DLQ, subjects dlq.<flow>).",
                              epilog=DLQ_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="dlq_command", required=True, metavar="SUBCOMMAND")

    s = _sub(sub, "list", "list records (table or --json)", "List dead-letter records, oldest first.", [common])
    _filters(s, limit_help="at most N records")
    s.add_argument("--json", action="store_true", help="one JSON array with every field, headers and payload")

    s = _sub(sub, "show", "one record: payload, headers, failure facts", "Show one record in full.", [common])
    s.add_argument("seq", type=seq_number, metavar="SEQ", help="record number (SEQ in `dlq list`)")
    s.add_argument("--json", action="store_true", help="the record as JSON")

    for name, help_, desc in (
            ("replay", "send records back to their flow", "Replay records to their original subjects."),
            ("purge", "delete records for good", "Delete records from the DLQ without replaying them.")):
        s = _sub(sub, name, help_, desc, [common])
        s.add_argument("seqs", type=seq_number, nargs="*", metavar="SEQ", help="record numbers")
        _filters(s, limit_help="at most the first N matching records")
        s.add_argument("--all", action="store_true", help="with --flow: every record of that flow")
        s.add_argument("--dry-run", action="store_true", help=f"list what would be {DONE[name]}; change nothing")
        if name == "replay":
            s.add_argument("--rate", type=rate, metavar="N/s", help="at most this many per second (50/s, 600/m)")
            s.add_argument("--keep", action="store_true", help="keep the records in the DLQ after replaying")
        else:
            s.add_argument("--yes", "-y", action="store_true", help="do not ask (needed without a terminal)")
            s.add_argument("--erase", action="store_true",
                           help="overwrite the records on disk too (slow; for data that must not linger)")

    s = _sub(sub, "edit", "fix a record's payload, validate it, replay it",
             "Change a record's payload (JSON patch, --set, or $EDITOR), validate it, replay it.", [common])
    s.add_argument("seq", type=seq_number, metavar="SEQ", help="record number")
    s.add_argument("--patch", metavar="JSON", help="an RFC 6902 JSON patch (a JSON array of operations)")
    s.add_argument("--set", action="append", metavar="PATH=VALUE", dest="sets",
                   help="set a field: dotted path (sites.0.postcode or sites[0].postcode); repeatable")
    s.add_argument("--keep", action="store_true", help="keep the record in the DLQ after replaying")
    s.add_argument("--dry-run", action="store_true", help="show and validate the edited payload; replay nothing")
    s.add_argument("--no-validate", action="store_true", help="replay without checking the flow's schema")

    s = _sub(sub, "stats", "counts per flow and error class, oldest record",
             "Count records per flow and error class.", [common])
    s.add_argument("--flow", help="only this flow")
    s.add_argument("--json", action="store_true", help="as JSON")
    return p


# --- running -----------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> int:
    logging.getLogger("nats").setLevel(logging.CRITICAL)  # connection tracebacks; we say it in one line
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        print("\ninterrupted: records already confirmed are replayed and deleted; replays in flight may be "
              "sent again by a rerun (their idempotency keys keep effects single)", file=sys.stderr)
        return FAILED


def _at(value: datetime | timedelta | None, now: datetime) -> datetime | None:
    """A `--since`/`--until` value as a time: a duration counts back from `now`."""
    return now - value if isinstance(value, timedelta) else value


async def run(args: argparse.Namespace, clock: Clock = SYSTEM) -> int:
    """One dlq command. `clock` is the CLI's: "2h ago" and record ages are read on it, against each
    record's own failure time (written on the failing runner's clock), never nats-server's."""
    from engine.connection import ops_connection
    from engine.errors import ConfigError
    from engine.validation import load_config

    handler = HANDLERS[args.dlq_command]
    args.now = clock.now()
    for name in ("since", "until"):
        if hasattr(args, name):
            setattr(args, name, _at(getattr(args, name), args.now))
    try:
        try:
            config, _ = load_config(args.config)
        except ConfigError as exc:
            raise Stop(USAGE, "\n".join(exc.issues) + "\nfix the configuration (runner.py validate) or pass --config") from None
        check = CHECKS.get(args.dlq_command)
        if check:
            check(args)
        stream = config.dlq.stream
        async with AsyncExitStack() as stack:
            where = ", ".join(args.nats or config.nats.urls) or "the embedded server"
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    nc = await stack.enter_async_context(ops_connection(config, args.nats))
            except Exception as exc:
                raise Stop(FAILED, f"cannot reach NATS at {where} ({store._why(exc)}): is the hub's broker up? "
                           "pass --nats URL or set nats.urls in --config") from None
            try:
                return await handler(args, nc.jetstream(), stream)
            except store.StreamMissing:
                raise Stop(USAGE, f"stream {stream} does not exist on {where}: start the hub once (runner.py run) "
                           "so it creates its streams, or check --nats and dlq.stream in --config") from None
            except (Stop, KeyboardInterrupt, asyncio.CancelledError):
                raise
            except Exception as exc:
                raise Stop(FAILED, f"dlq {args.dlq_command} failed: {store._why(exc)}; check that the broker at "
                           f"{where} is healthy (runner.py dlq stats) and run it again") from None
    except Stop as stop:
        print(stop, file=sys.stderr)
        return stop.code


def _interactive() -> bool:
    """Whether purge can ask for confirmation: stdin and stderr are a terminal."""
    try:
        return sys.stdin.isatty() and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


async def _purge(args: argparse.Namespace, js: Any, stream: str) -> int:
    """Purge, asking on a terminal: whether there is one is a question for the command line, not the body."""
    return await commands.cmd_purge(args, js, stream, can_ask=_interactive)


HANDLERS = {"list": commands.cmd_list, "show": commands.cmd_show, "replay": commands.cmd_replay, "edit": cmd_edit,
            "purge": _purge, "stats": commands.cmd_stats}
CHECKS = {"replay": check_selector, "purge": check_selector, "edit": check_edit}
