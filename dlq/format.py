"""What the dlq commands print: record tables, ages, a record in full with its payload, JSON, and
the replay progress line; kept apart so the commands read as what they do, not how it looks."""

from __future__ import annotations

import json
import shutil
import sys
import time
from datetime import datetime
from typing import Any

from dlq.store import Record
from engine.clock import SYSTEM


def fmt_age(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def as_json(value: Any) -> str:
    """Indented, non-ASCII kept, times and other non-JSON values as strings."""
    return json.dumps(value, ensure_ascii=False, indent=2, default=str)


def payload_text(encoding: str, payload: Any) -> str:
    """A payload as `Record.payload()` decodes it: JSON indented, text and base64 as they are."""
    return json.dumps(payload, ensure_ascii=False, indent=2) if encoding == "json" else str(payload)


SHOWN_BYTES = 256 * 1024  # `show` prints at most this much of a payload; --json prints it whole


def fmt_bytes(n: int) -> str:
    for unit, size in (("M", 1024 * 1024), ("K", 1024)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n}B"


def payload_cell(r: Record) -> str:
    """What the record holds: the body's size, `claim 5.0M` (the bytes are in the Object Store), or
    `omitted` (too big to keep next to the headers)."""
    if r.payload_omitted:
        return "omitted"
    if r.claim is not None:
        return f"claim {fmt_bytes(r.claim.size)}" if r.claim.size is not None else "claim"
    return fmt_bytes(len(r.data))


def print_table(records: list[Record], now: datetime | None = None) -> None:
    """SEQ, AGE (to `now`, the CLI's clock; the system's by default), flow, class, attempts (failed
    deliveries), deliveries, calls the target received, the payload, error."""
    now = now or SYSTEM.now()
    rows = [(str(r.seq), fmt_age(r.age(now)), r.flow, r.error_class or "?", str(r.summary.get("attempts", 0)),
             str(r.summary.get("deliveries", 0)), str(r.summary.get("calls", 0)), payload_cell(r), r.error)
            for r in records]
    table(("SEQ", "AGE", "FLOW", "ERROR CLASS", "ATT", "DLV", "CALLS", "PAYLOAD", "ERROR"), rows, right={0, 4, 5, 6, 7})


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


def print_record(r: Record, stream: str, now: datetime | None = None) -> None:
    """One record for a person: failure facts, failure history, headers, payload."""
    s = r.summary
    stored = f"; stored {r.stored.isoformat(timespec='seconds')} by the server" if r.stored else ""
    transient = r.headers.get("Hub-Dlq-Transient")
    facts = [
        ("record", f"{r.seq} in {stream} ({r.subject}), dead-lettered {r.time.isoformat(timespec='seconds')} "
                   f"({fmt_age(r.age(now))} ago{stored})"),
        ("flow", r.flow), ("step", s.get("step") or "-"),
        ("error class", f"{r.error_class}" + (f" ({'transient' if transient == 'true' else 'permanent'})" if transient else "")),
        ("error", r.error), ("attempts", f"{s.get('attempts')} failed deliveries"),
        ("deliveries", f"{s.get('deliveries')} by JetStream (outage waits and restarts included)"),
        ("calls", f"{s.get('calls')} requests the failing endpoints received"),
        ("first failure", s.get("first_failure") or "-"), ("last failure", s.get("last_failure") or "-"),
        ("original", f"subject {s.get('subject')}, stream {s.get('stream')}, sequence {s.get('sequence')}"),
    ]
    if r.claim is not None:
        facts.append(("payload", r.claim.describe()))
    if r.payload_omitted:
        facts.append(("payload", f"OMITTED from the record: {r.payload_omitted}"))
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
    size = len(r.payload_bytes)
    print(f"payload ({encoding}, {size} bytes{', by claim check' if r.claim and r.claim.data is not None else ''}):")
    text = payload_text(encoding, payload)
    if len(text) > SHOWN_BYTES:
        text = text[:SHOWN_BYTES] + f"\n… cut at {SHOWN_BYTES // 1024} KB of {len(text) // 1024} KB: `dlq show {r.seq} --json` prints it whole"
    print(text)


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
