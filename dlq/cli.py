"""`runner.py dlq …`: list, show, replay, edit, purge and count dead-letter records.

Thin over dlq/store.py: it parses, selects, confirms and prints. Exit codes a script can rely on:
0 ok, 1 an operation failed, 2 usage or configuration error (or refused), 3 record not found.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from dlq import store
from dlq.store import Record

OK, FAILED, USAGE, NOT_FOUND = 0, 1, 2, 3
ROOT = Path(__file__).resolve().parents[1]
CONNECT_TIMEOUT = 15.0
PROGRESS_FROM = 5  # records; fewer replay without a progress line
DONE = {"replay": "replayed", "purge": "purged"}


class Stop(Exception):
    """End the command with an exit code and a message that says what to do."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# --- argument types ----------------------------------------------------------------------------


def when(text: str) -> datetime:
    """`2h` / `30m` / `7d` ago, or an ISO time (UTC unless it names an offset)."""
    from engine.durations import parse_duration

    try:
        return datetime.now(timezone.utc) - timedelta(seconds=parse_duration(text))
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


async def run(args: argparse.Namespace) -> int:
    from engine.connection import ops_connection
    from engine.errors import ConfigError
    from engine.validation import load_config

    handler = HANDLERS[args.dlq_command]
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


# --- list, show, stats -------------------------------------------------------------------------


async def cmd_list(args: argparse.Namespace, js: Any, stream: str) -> int:
    records = await _list(js, stream, args)
    if args.json:
        print(json.dumps([r.as_dict() for r in records], ensure_ascii=False, indent=2, default=str))
    else:
        print_table(records)
    more = " (--limit reached; more may match)" if args.limit and len(records) >= args.limit else ""
    print(f"{len(records)} record(s) in {stream}{_described(args)}{more}", file=sys.stderr)
    return OK


async def cmd_show(args: argparse.Namespace, js: Any, stream: str) -> int:
    r = await _get(js, stream, args.seq)
    if args.json:
        print(json.dumps(r.as_dict(), ensure_ascii=False, indent=2, default=str))
        return OK
    s = r.summary
    transient = r.headers.get("Hub-Dlq-Transient")
    facts = [
        ("record", f"{r.seq} in {stream} ({r.subject}), dead-lettered {r.time.isoformat(timespec='seconds')} "
                   f"({fmt_age(r.age())} ago)"),
        ("flow", r.flow), ("step", s.get("step") or "-"),
        ("error class", f"{r.error_class}" + (f" ({'transient' if transient == 'true' else 'permanent'})" if transient else "")),
        ("error", r.error), ("attempts", s.get("attempts")),
        ("first failure", s.get("first_failure") or "-"), ("last failure", s.get("last_failure") or "-"),
        ("original", f"subject {s.get('subject')}, stream {s.get('stream')}, sequence {s.get('sequence')}"),
    ]
    for label, value in facts:
        print(f"{label + ':':<15}{value}")
    if s.get("history"):
        print("history:")
        for h in s["history"]:
            print(f"  {h.get('at', '?')}  delivery {h.get('delivery', '?')}  {h.get('step') or '-'}  "
                  f"{h.get('error_class', '?')}: {h.get('error', '')}")
    print("headers:")
    for key, value in r.headers.items():
        print(f"  {key}: {value}")
    encoding, payload = r.payload()
    print(f"payload ({encoding}, {len(r.data)} bytes):")
    print(json.dumps(payload, ensure_ascii=False, indent=2) if encoding == "json" else payload)
    return OK


async def cmd_stats(args: argparse.Namespace, js: Any, stream: str) -> int:
    result = await store.stats(js, stream, flow=args.flow)
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
        return OK
    rows = [(flow, str(f["count"]), fmt_age(f["oldest_age_s"]),
             ", ".join(f"{c} {n}" for c, n in f["error_classes"].items())) for flow, f in result["flows"].items()]
    table(("FLOW", "RECORDS", "OLDEST", "ERROR CLASSES"), rows, right={1})
    print(f"{result['total']} record(s) in {len(result['flows'])} flow(s), stream {stream}", file=sys.stderr)
    return OK


# --- replay, edit, purge -----------------------------------------------------------------------


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


async def _selected(args: argparse.Namespace, js: Any, stream: str) -> tuple[list[Record], list[int]]:
    """The records a replay/purge acts on, and the requested numbers that are not there."""
    if not args.seqs:
        return await _list(js, stream, args), []
    seqs = list(dict.fromkeys(args.seqs))
    found = await asyncio.gather(*(store.get_record(js, stream, s) for s in seqs), return_exceptions=True)
    for f in found:
        if isinstance(f, BaseException) and not isinstance(f, store.RecordNotFound):
            raise f
    missing = [s for s, f in zip(seqs, found) if isinstance(f, store.RecordNotFound)]
    for s in missing:
        print(f"record {s} is not in {stream} (replayed, purged or expired?): see `dlq list`", file=sys.stderr)
    return [f for f in found if isinstance(f, Record)], missing


async def cmd_replay(args: argparse.Namespace, js: Any, stream: str) -> int:
    records, missing = await _selected(args, js, stream)
    if not records:
        print(f"no records match{_described(args)}: nothing replayed", file=sys.stderr)
        return NOT_FOUND if missing else OK
    if args.dry_run:
        print_table(records)
        print(f"would replay {len(records)} record(s) to their original subjects; run again without --dry-run to do it",
              file=sys.stderr)
        return NOT_FOUND if missing else OK
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


async def cmd_purge(args: argparse.Namespace, js: Any, stream: str) -> int:
    records, missing = await _selected(args, js, stream)
    if not records:
        print(f"no records match{_described(args)}: nothing purged", file=sys.stderr)
        return NOT_FOUND if missing else OK
    if args.dry_run:
        print_table(records)
        print(f"would purge {len(records)} record(s); run again without --dry-run to do it", file=sys.stderr)
        return NOT_FOUND if missing else OK
    if not args.yes:
        if not _interactive():
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


def check_edit(args: argparse.Namespace) -> None:
    if args.patch is not None:
        try:
            patch = json.loads(args.patch)
        except ValueError as exc:
            raise Stop(USAGE, f"--patch is not JSON ({exc}): give a JSON array like "
                       """'[{"op": "replace", "path": "/a", "value": 1}]'""") from None
        if not isinstance(patch, list):
            raise Stop(USAGE, "--patch must be a JSON array of operations (RFC 6902)")
        args.patch_ops = patch
    for item in args.sets or []:
        if "=" not in item or not item.partition("=")[0].strip():
            raise Stop(USAGE, f"--set {item!r} needs PATH=VALUE, e.g. --set 'sites[0].postcode=\"1000\"'")


async def cmd_edit(args: argparse.Namespace, js: Any, stream: str) -> int:
    from engine.messages import encode

    r = await _get(js, stream, args.seq)
    encoding, payload = r.payload()
    if args.patch is not None or args.sets:
        if encoding != "json":
            raise Stop(USAGE, f"record {r.seq}'s payload is not JSON ({encoding}): --patch/--set need JSON; "
                       "edit it by hand with $EDITOR (no --patch/--set)")
        edited = apply_edits(payload, getattr(args, "patch_ops", None), args.sets or [])
        if edited == payload:
            raise Stop(USAGE, f"the edit changes nothing: record {r.seq} not replayed")
    else:
        edited = await edit_in_editor(r, encoding, payload)
    model = None if args.no_validate else flow_schema(args, r.flow)
    if model is None and not args.no_validate:
        print(f"flow {r.flow} has no schema: the edited payload is not validated", file=sys.stderr)
    if model is not None:
        problems = schema_problems(model, edited)
        if problems:
            print(f"the edited payload does not match schema {model.__name__} of flow {r.flow}:", file=sys.stderr)
            for line in problems:
                print(f"  {line}", file=sys.stderr)
            raise Stop(USAGE, f"nothing replayed; record {r.seq} stays in the DLQ: fix these fields and run edit again")
    data = edited.encode() if isinstance(edited, str) and encoding != "json" else encode(edited)
    if args.dry_run:
        print(json.dumps(edited, ensure_ascii=False, indent=2) if not isinstance(edited, str) else edited)
        checked = f"matches {model.__name__}" if model is not None else "not validated"
        print(f"edited payload {checked}; would replay record {r.seq} to {r.summary.get('subject')}", file=sys.stderr)
        return OK
    try:
        done = await store.replay(js, r, keep=args.keep, payload=data)
    except store.ReplayRefused as exc:
        raise Stop(FAILED, f"{exc}: it cannot be replayed") from None
    except store.DeleteFailed as exc:
        raise Stop(FAILED, str(exc)) from None
    except Exception as exc:
        raise Stop(FAILED, f"replay of record {r.seq} failed ({store._why(exc)}); the record stays in the DLQ: "
                   "try again when the stream is reachable") from None
    kept = "kept in the DLQ" if args.keep else "deleted from the DLQ"
    print(f"replayed record {r.seq} with the edited payload to {done.subject} as {done.msg_id}; record {kept}")
    return OK


def apply_edits(payload: Any, patch: list[Any] | None, sets: list[str]) -> Any:
    import copy

    doc = copy.deepcopy(payload)
    if patch is not None:
        import jsonpatch

        try:
            doc = jsonpatch.apply_patch(doc, patch)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError, KeyError, IndexError) as exc:
            raise Stop(USAGE, f"the patch does not apply: {exc}; check the paths with `dlq show SEQ`") from None
    for item in sets:
        path, _, raw = item.partition("=")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        doc = set_path(doc, path.strip(), value)
    return doc


def split_path(path: str) -> list[str | int]:
    """`sites[0].postcode` or `sites.0.postcode` → ['sites', 0, 'postcode']."""
    parts: list[str | int] = []
    for token in path.replace("[", ".").replace("]", "").split("."):
        if token == "":
            continue
        parts.append(int(token) if token.isdigit() else token)
    return parts


def set_path(doc: Any, path: str, value: Any) -> Any:
    parts = split_path(path)
    if not parts:
        raise Stop(USAGE, f"--set path {path!r} is empty: name a field like contract_id or sites[0].postcode")
    node = doc
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(str(p) for p in parts[:i + 1])
        if isinstance(node, dict):
            key = str(part)
            if last:
                node[key] = value
            else:
                node = node.setdefault(key, [] if isinstance(parts[i + 1], int) else {})
        elif isinstance(node, list) and isinstance(part, int):
            if part > len(node) or (not last and part == len(node)):
                raise Stop(USAGE, f"--set {path}: {where} is past the end of a list of {len(node)}")
            if last:
                node[part:part + 1] = [value]
            else:
                node = node[part]
        else:
            kind = "a list" if isinstance(node, list) else "a value" if not isinstance(node, dict) else "an object"
            raise Stop(USAGE, f"--set {path}: {where} cannot be set, its parent is {kind}; see `dlq show SEQ`")
    return doc


async def edit_in_editor(r: Record, encoding: str, payload: Any) -> Any:
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR")
    if not editor:
        raise Stop(USAGE, "no editor: set $EDITOR (e.g. EDITOR=nano) or give --patch / --set")
    before = json.dumps(payload, ensure_ascii=False, indent=2) + "\n" if encoding == "json" else str(payload)
    fd, path = tempfile.mkstemp(prefix=f"dlq-{r.seq}-", suffix=".json" if encoding == "json" else ".txt")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(before)
        code = await asyncio.to_thread(subprocess.call, [*shlex.split(editor), path])
        if code != 0:
            raise Stop(USAGE, f"the editor exited with {code}: nothing replayed (record {r.seq} stays in the DLQ)")
        after = Path(path).read_text(encoding="utf-8")
    finally:
        os.unlink(path)
    if after.strip() == before.strip():
        raise Stop(USAGE, f"payload unchanged: edit aborted, nothing replayed (record {r.seq} stays in the DLQ)")
    if encoding != "json":
        return after
    try:
        return json.loads(after)
    except ValueError as exc:
        raise Stop(USAGE, f"the edited payload is not JSON ({exc}): nothing replayed; run edit again") from None


def flow_schema(args: argparse.Namespace, flow_name: str) -> Any:
    """The pydantic model of the record's flow, from the loaded project (None: the flow has none)."""
    from engine.errors import ConfigError
    from engine.validation import flow_files, load_project, resolve_schema

    if not args.flows.is_dir():
        raise Stop(USAGE, f"flow directory {args.flows} not found: pass --flows DIR (or --no-validate)")
    try:
        project = load_project(args.config, flow_files(args.flows))
    except ConfigError as exc:
        raise Stop(USAGE, "\n".join(exc.issues) + "\nthe project does not load, so the flow's schema is unknown: "
                   "fix it (runner.py validate) or pass --no-validate") from None
    for lf in project.flows:
        if lf.flow.name == flow_name:
            return resolve_schema(lf.flow.schema_) if lf.flow.schema_ else None
    raise Stop(USAGE, f"flow {flow_name!r} is not defined in {args.flows}: pass --flows DIR where it is, "
               "or --no-validate to replay without a schema check")


def schema_problems(model: Any, payload: Any) -> list[str]:
    from pydantic import ValidationError

    from engine.yaml_lines import format_loc

    try:
        model.model_validate(payload)
    except ValidationError as exc:
        out = []
        for e in exc.errors(include_url=False):
            got = e.get("input")
            shown = f" (got {json.dumps(got, ensure_ascii=False, default=str)})" if isinstance(got, (str, int, float, bool)) or got is None else ""
            out.append(f"{format_loc(tuple(e['loc']))}: {e['msg']}{shown}")
        return out
    return []


# --- helpers -----------------------------------------------------------------------------------


async def _list(js: Any, stream: str, args: argparse.Namespace) -> list[Record]:
    try:
        return await store.list_records(js, stream, flow=args.flow, error_class=args.error_class, text=args.grep,
                                        since=args.since, until=args.until, limit=args.limit)
    except ValueError as exc:
        raise Stop(USAGE, f"--flow: {exc}") from None


async def _get(js: Any, stream: str, seq: int) -> Record:
    try:
        return await store.get_record(js, stream, seq)
    except store.RecordNotFound:
        raise Stop(NOT_FOUND, f"record {seq} is not in {stream}: it may have been replayed, purged or expired; "
                   "see `dlq list` for the records there are") from None


def _described(args: argparse.Namespace) -> str:
    parts = [f"{name} {getattr(args, attr)}" for name, attr in
             (("flow", "flow"), ("error class", "error_class"), ("text", "grep")) if getattr(args, attr, None)]
    for name in ("since", "until"):
        if getattr(args, name, None):
            parts.append(f"{name} {getattr(args, name).isoformat(timespec='seconds')}")
    return f" matching {', '.join(parts)}" if parts else ""


def _interactive() -> bool:
    try:
        return sys.stdin.isatty() and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def fmt_age(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def print_table(records: list[Record]) -> None:
    now = datetime.now(timezone.utc)
    rows = [(str(r.seq), fmt_age(r.age(now)), r.flow, r.error_class or "?", str(r.summary.get("attempts", 0)), r.error)
            for r in records]
    table(("SEQ", "AGE", "FLOW", "ERROR CLASS", "ATT", "ERROR"), rows, right={0, 4})


def table(headers: tuple[str, ...], rows: list[tuple[str, ...]], right: set[int] = frozenset()) -> None:  # type: ignore[assignment]
    """Columns sized to their content; the last one cut to the terminal width."""
    if not rows:
        return
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers[:-1])]
    room = max(20, shutil.get_terminal_size((140, 24)).columns - sum(widths) - 2 * len(widths))

    def line(cells: tuple[str, ...]) -> str:
        out = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        last = cells[-1] if len(cells[-1]) <= room else cells[-1][:room - 1] + "…"
        return "  ".join([*out, last]).rstrip()

    print(line(headers))
    for row in rows:
        print(line(row))


class Progress:
    """done/total and rate on stderr: one rewritten line on a terminal, a line every few seconds otherwise."""

    def __init__(self, total: int, verb: str) -> None:
        self.total, self.verb = total, verb
        self.start = self.last = time.monotonic()
        self.tty = sys.stderr.isatty()

    def update(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.tty and now - self.last < 2.0 and done < total:
            return
        self.last = now
        rate_ = done / max(now - self.start, 1e-6)
        text = f"{self.verb} {done}/{total} ({100 * done // max(total, 1)}%, {rate_:,.0f}/s)"
        print(f"\r{text}" if self.tty else text, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.tty:
            print(file=sys.stderr)


HANDLERS = {"list": cmd_list, "show": cmd_show, "replay": cmd_replay, "edit": cmd_edit,
            "purge": cmd_purge, "stats": cmd_stats}
CHECKS = {"replay": check_selector, "purge": check_selector, "edit": check_edit}
