"""What an sftp source stores about a file: the landing record (the claim check the flow reads) and,
for a file it will not take, the quarantine record it dead-letters directly.

Quarantine goes straight to `dlq.<flow>` (stream DLQ) with the headers of engine/dead_letter.py rather than
through the flow: the flow never sees a file it cannot use, `runner.py dlq list --flow <flow>` shows
it at once with the reason as error text (ValidationFailed for a name, UnparseablePayload for content),
and the file's bytes are kept in the Object Store under `quarantine/<name>`, because the server's
janitor deletes the original. The record has the landing record's shape with `invoice_id` (or the
pattern's other groups) missing: ops who know which invoice a misnamed PDF is can `dlq edit --set
invoice_id=...` and replay it onto `hub.ingress.<flow>`, where the flow takes it like any landing.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

from adapters.sftp.session import RemoteFile
from adapters.sftp.transfer import Stored
from engine.dead_letter import build_headers, dlq_subject
from engine.errors import HubError, UnparseablePayload, ValidationFailed
from engine.messages import MSG_ID, derived_id, encode, event_headers
from engine.sources import INGRESS_STREAM

PDF_MAGIC = b"%PDF-"
QUARANTINE_PREFIX = "quarantine/"
QUARANTINE_HEADER = "Hub-Quarantine"
STEP = "source.sftp"


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


def name_problem(pattern: re.Pattern[str], remote: RemoteFile) -> str | None:
    """Why a file name is refused, or None when it matches the source's pattern."""
    if remote.raw_path is not None:
        return f"file name is not valid UTF-8: {remote.raw_path.rsplit(b'/', 1)[-1]!r}"
    if pattern.search(remote.name):
        return None
    return f"file name {remote.name!r} does not match the pattern {pattern.pattern!r}"


def content_problem(head: bytes, expect: bytes | None) -> str | None:
    """Why the first bytes are refused, or None (no check when the source expects nothing)."""
    if expect is None or head.startswith(expect):
        return None
    return f"content is not a PDF: it starts with {head[:len(expect)]!r}, not {expect!r}"


def landing_record(pattern: re.Pattern[str], remote: RemoteFile, stored: Stored, now: float) -> dict[str, Any]:
    """The claim check: the pattern's named groups (e.g. invoice_id), the file and where its bytes are."""
    match = pattern.search(remote.name)
    groups = {k: v for k, v in (match.groupdict() if match else {}).items() if v is not None}
    return {**groups, "file_name": remote.name, "path": remote.path, "size": stored.size, "sha256": stored.sha256,
            "bucket": stored.bucket, "object": stored.name, "fetched_at": iso(now),
            "server_mtime": iso(remote.mtime)}


def quarantine_record(remote: RemoteFile, stored: Stored, reason: str, now: float) -> dict[str, Any]:
    record = {"file_name": remote.name, "path": remote.path, "size": stored.size, "sha256": stored.sha256,
              "bucket": stored.bucket, "object": stored.name, "fetched_at": iso(now),
              "server_mtime": iso(remote.mtime), "quarantine": reason}
    if remote.raw_path is not None:  # the name's own bytes, for whoever must find or rename the file
        record["path_bytes_hex"] = remote.raw_path.hex()
    return record


def quarantine_error(reason: str, *, name_refused: bool) -> HubError:
    cls = ValidationFailed if name_refused else UnparseablePayload
    return cls(f"quarantined: {reason}", step=STEP)


def quarantine_message(flow: str, landing_subject: str, remote: RemoteFile, stored: Stored, reason: str,
                       name_refused: bool, now: float) -> tuple[str, bytes, dict[str, str]]:
    """Subject, data and headers of the dead letter for a refused file (one per file version)."""
    data = encode(quarantine_record(remote, stored, reason, now))
    original = event_headers(f"/plu-hub/ingress/sftp/{flow}", landing_subject)
    headers = build_headers(original, flow=flow, err=quarantine_error(reason, name_refused=name_refused),
                            attempts=1, subject=landing_subject, stream=INGRESS_STREAM, sequence=0,
                            consumer=flow, first_failure=None)
    headers[MSG_ID] = "dlq:sftp:" + derived_id("quarantine", flow, remote.identity)  # never stored: no stream seq
    headers[QUARANTINE_HEADER] = " ".join(reason.split())[:500]
    return dlq_subject(flow), data, headers
