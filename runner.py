#!/usr/bin/env python3
"""PLU integration hub — the command line. Thin: it parses, then wires engine/, dlq/ and sandbox/."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_CONFIG = ROOT / "config" / "sandbox.yaml"
DEFAULT_FLOWS = ROOT / "flows"

EPILOG = """\
examples:
  runner.py validate                         check config/sandbox.yaml and every flows/*.yaml
  runner.py validate --flows tests/flows     check another flow directory
  runner.py run                              run all flows on the embedded nats-server
  runner.py run --nats nats://10.0.0.5:4222  run against an existing NATS (cluster: repeat --nats)
  runner.py cluster up                       a local 3-node NATS cluster to run against (docs/deploy.md)
  runner.py demo                             start broker + sandbox, drive a scenario, report
  runner.py demo --at 2027-03-28T01:30:00Z   the same scenario as of another instant (a DST night)
  runner.py dlq list --flow contract-switch-request     what failed, and why
  runner.py dlq edit 42 --set country=DE     fix a dead letter, validate it, replay it
  runner.py trigger erp-invoices-nightly     run a scheduled flow now
  runner.py pending                          tariff switches (and other waits) not done yet
  runner.py status --watch                   ops' screen: flows, backlog, lag, errors, circuits, waits
  runner.py pdf get INV-42 --out inv.pdf     an invoice's PDF from the hub's Object Store
  runner.py docs --out docs/                 write the reference, JSON Schemas, AsyncAPI, Grafana dashboard

exit codes: 0 ok, 1 the work failed (demo outcome, runtime error), 2 invalid configuration or usage.
"""


def _instant(text: str):  # noqa: ANN202  (argparse type: a usage error, exit 2, names the form)
    from engine.clock import parse_instant

    try:
        return parse_instant(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _project_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                   help="environment file: NATS, streams, endpoints (default: config/sandbox.yaml)")
    p.add_argument("--flows", type=Path, default=DEFAULT_FLOWS,
                   help="directory of flow YAML files (default: flows/)")
    p.add_argument("files", nargs="*", type=Path, help="only these flow files (default: all in --flows)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runner.py", description="PLU integration hub: declarative YAML flows over NATS JetStream.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check config and flows; print every problem with file and line",
                       description="Validate the config and flow files without connecting to anything.")
    _project_args(p)

    p = sub.add_parser("run", help="validate, then run the flows until Ctrl-C or SIGTERM",
                       description="Run every flow. Without --nats and with no URL in config, an "
                       "embedded nats-server is started on loopback and stopped on exit.")
    _project_args(p)
    p.add_argument("--nats", action="append", metavar="URL", help="NATS server URL (repeat for a cluster)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="override config")

    p = sub.add_parser("demo", help="run the scripted demo against the sandbox systems",
                       description="Start the embedded broker, the sandbox systems and the flows, drive a "
                       "short scenario, print what happened per flow; exit 0 only if every expected "
                       "outcome occurred.")
    p.add_argument("--keep-data", action="store_true", help="keep the demo's JetStream store afterwards")
    p.add_argument("--at", type=_instant, metavar="INSTANT",
                   help="run the scenario as of this ISO 8601 instant with its offset, e.g. 2027-03-28T01:30:00Z "
                   "or 2028-02-29T12:00:00+01:00 (default: now); the hub, the sandbox platforms and the CLI "
                   "take their dates from it, and it runs on at the real rate")

    from adapters.sftp.cli import register as register_pdf
    from dlq.cli import register as register_dlq
    from engine.ops_cli import register as register_ops
    from engine.status_cli import register as register_status

    register_dlq(sub)
    register_ops(sub)
    register_pdf(sub)
    from sandbox.cluster import register as register_cluster

    register_cluster(sub)
    register_status(sub)

    p = sub.add_parser("docs", help="write the flow reference, JSON Schemas, the AsyncAPI document and dashboard",
                       description="Write the flow and config reference (with the landscape of systems, "
                       "endpoints, flows and subjects), JSON Schemas for editors, an AsyncAPI 3.0 document "
                       "of every subject the flows consume and publish, and a Grafana dashboard of the metrics.")
    _project_args(p)
    p.add_argument("--out", type=Path, default=ROOT / "docs", help="output directory (default: docs/)")
    return parser


def _load(args: argparse.Namespace):  # noqa: ANN202
    from engine.errors import ConfigError
    from engine.validation import flow_files, load_project

    chosen = getattr(args, "files", None)
    files = chosen or (flow_files(args.flows) if args.flows.is_dir() else [])
    if not chosen and not args.flows.is_dir():
        raise ConfigError([f"{args.flows}: flow directory not found"])
    return load_project(args.config, files)


def _print_issues(issues: list[str], closing: str) -> int:
    for line in issues:
        print(line, file=sys.stderr)
    print(closing, file=sys.stderr)
    return 2


def cmd_validate(args: argparse.Namespace) -> int:
    from engine.errors import ConfigError
    from engine.streams import declared_streams

    try:
        project = _load(args)
    except ConfigError as exc:
        return _print_issues(exc.issues, f"invalid: {len(exc.issues)} problem(s)")
    print(f"ok: {len(project.flows)} flow(s), {len(project.endpoints)} endpoint(s), "
          f"{len(declared_streams(project.config))} stream(s) in {args.config}")
    for lf in project.flows:
        print(f"  {lf.flow.name:<32} {lf.file}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from engine import heap, logs
    from engine.errors import ConfigError
    from engine.runtime import Hub

    try:
        project = _load(args)
    except ConfigError as exc:
        return _print_issues(exc.issues, "refusing to start: fix the configuration first (runner.py validate)")
    cfg = project.config.logging
    logs.configure(args.log_level or cfg.level, cfg.format)

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        hub = Hub(project, servers=args.nats)
        lost: str | None = None
        try:
            await hub.start()
            heap.settle()  # the start-up heap frozen, young garbage collected in larger steps
            # never run on without NATS: a connection closed for good ends the runner (exit 1)
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(hub.wait_closed())]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
            lost = hub.closed_reason if hub.closed_for_good else None
        finally:
            await hub.stop()
        if lost is not None:
            print(f"runner stopped: the NATS connection closed for good ({lost}); exiting 1 so a supervisor "
                  "restarts the runner", file=sys.stderr)
            return 1
        return 0

    try:
        return asyncio.run(main())
    except Exception as exc:
        print(f"runner stopped: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def cmd_demo(args: argparse.Namespace) -> int:
    from engine.clock import SYSTEM, ShiftedClock
    from sandbox.demo import run_demo

    clock = ShiftedClock(args.at) if args.at is not None else SYSTEM
    return asyncio.run(run_demo(ROOT, keep_data=args.keep_data, clock=clock))


def cmd_trigger(args: argparse.Namespace) -> int:
    from engine.errors import ConfigError
    from engine.ops_cli import cmd_trigger as trigger

    try:
        project = _load(args)
    except ConfigError as exc:
        return _print_issues(exc.issues, "fix the configuration first (runner.py validate)")
    return trigger(args, project)


def cmd_pending(args: argparse.Namespace) -> int:
    from engine.errors import ConfigError
    from engine.ops_cli import cmd_pending as pending
    from engine.validation import load_config

    try:
        config, _ = load_config(args.config)
    except ConfigError as exc:
        return _print_issues(exc.issues, "fix the configuration first (runner.py validate)")
    return pending(args, config)


def cmd_docs(args: argparse.Namespace) -> int:
    from engine.docs import write_docs
    from engine.errors import ConfigError

    try:
        project = _load(args)
    except ConfigError as exc:
        return _print_issues(exc.issues, "fix the configuration first (runner.py validate)")
    from engine.landscape import unmatched

    for problem in unmatched(project):
        print(f"warning: {problem}", file=sys.stderr)
    for path in write_docs(args.out, project):
        print(f"wrote {path}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from engine.errors import ConfigError
    from engine.status_cli import cmd_status as status

    try:
        project = _load(args)
    except ConfigError as exc:
        return _print_issues(exc.issues, "fix the configuration first (runner.py validate)")
    return status(args, project)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from adapters.sftp.cli import main as cmd_pdf
    from dlq.cli import main as cmd_dlq

    from sandbox.cluster import main as cmd_cluster

    commands = {"validate": cmd_validate, "run": cmd_run, "demo": cmd_demo, "docs": cmd_docs, "dlq": cmd_dlq,
                "trigger": cmd_trigger, "pending": cmd_pending, "pdf": cmd_pdf, "cluster": cmd_cluster,
                "status": cmd_status}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
