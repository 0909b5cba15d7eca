"""`runner.py pdf get INVOICE_ID --out FILE`: write a stored invoice PDF to a file, checked.

The reference comes from `invoice.pdf.get` (the invoice-pdf-get flow of a running hub); with no hub
answering, from the record that flow reads (KV `hub_state_invoice_pdfs`), so ops can get a PDF while
the hub is down. The bytes come from the Object Store, streamed to `FILE.part` while their SHA-256 is
computed, and renamed to FILE only when it matches the reference: a half-written or wrong PDF is never
left under the name asked for. Exit codes as for `dlq`: 0 written, 1 failed, 2 usage, 3 not found.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import nats.errors
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError, ObjectNotFoundError

from dlq.exits import FAILED, NOT_FOUND, OK, USAGE

ROOT = Path(__file__).resolve().parents[2]
GET_SUBJECT = "invoice.pdf.get"              # flows/invoice-pdf-get.yaml
STATE_BUCKET = "hub_state_invoice_pdfs"      # the `state: {bucket: invoice_pdfs}` of flows/invoice-pdf-drop.yaml

EPILOG = """\
examples:
  runner.py pdf get DE-INV-000123 --out /tmp/DE-INV-000123.pdf
  runner.py pdf get DE-INV-000123 --out inv.pdf --nats nats://10.0.0.5:4222

exit codes: 0 written, 1 failed (checksum, broker), 2 usage or configuration, 3 no PDF stored for the invoice.
"""


class Missing(Exception):
    """No PDF for the invoice (no record, or the object it names is gone)."""


def register(sub: Any) -> None:
    p = sub.add_parser("pdf", help="invoice PDFs kept by the hub (Object Store claim checks)",
                       description="Invoice PDFs fetched from the PDF Generator's SFTP drop.")
    pdf = p.add_subparsers(dest="pdf_command", required=True, metavar="PDF_COMMAND")
    g = pdf.add_parser("get", help="write an invoice's newest stored PDF to a file, SHA-256 checked",
                       description="Write the newest stored PDF of an invoice to FILE (streamed, checked).",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("invoice_id", metavar="INVOICE_ID")
    g.add_argument("--out", type=Path, required=True, metavar="FILE", help="where to write the PDF")
    g.add_argument("--config", type=Path, default=ROOT / "config" / "sandbox.yaml",
                   help="environment file (default: config/sandbox.yaml)")
    g.add_argument("--nats", action="append", metavar="URL",
                   help="NATS server URL; default: config, else the running hub, else the hub's store")
    g.add_argument("--timeout", type=float, default=30.0, help="seconds for the whole command (default 30)")


def main(args: argparse.Namespace) -> int:
    """The `pdf` command's body: runner.py calls it with the parsed arguments; answers the exit code."""
    from engine.errors import ConfigError
    from engine.validation import load_config

    if getattr(args, "pdf_command", "get") != "get":
        print(f"unknown pdf command {args.pdf_command!r}", file=sys.stderr)
        return USAGE
    try:
        config, _ = load_config(args.config)
    except ConfigError as exc:
        for line in exc.issues:
            print(line, file=sys.stderr)
        return USAGE
    try:
        return asyncio.run(asyncio.wait_for(_get(args, config), args.timeout))
    except TimeoutError:
        print(f"timed out after {args.timeout:g}s talking to NATS: is the hub's broker up? pass --nats URL",
              file=sys.stderr)
        return FAILED
    except OSError as exc:
        print(f"cannot reach NATS or write {args.out}: {exc}", file=sys.stderr)
        return FAILED


async def _get(args: argparse.Namespace, config: Any) -> int:
    from engine.connection import ops_connection

    async with ops_connection(config, args.nats) as nc:
        js = nc.jetstream()
        try:
            ref = await _reference(nc, js, args.invoice_id)
            written = await _write(js, ref, args.out)
        except Missing as exc:
            print(str(exc), file=sys.stderr)
            return NOT_FOUND
        except (ValueError, nats.errors.Error) as exc:
            print(f"invoice {args.invoice_id}: {exc}", file=sys.stderr)
            return FAILED
    print(f"wrote {written} bytes to {args.out} (invoice {args.invoice_id}, object {ref['bucket']}/{ref['name']}, "
          f"sha256 {ref['sha256']})")
    return OK


async def _reference(nc: Any, js: Any, invoice_id: str) -> dict[str, Any]:
    """The object reference: asked of the running hub, else read from the record it keeps."""
    try:
        msg = await nc.request(GET_SUBJECT, json.dumps({"invoice_id": invoice_id}).encode(), timeout=5)
    except nats.errors.NoRespondersError:
        print(f"no hub answers {GET_SUBJECT}: reading the invoice record from KV {STATE_BUCKET}", file=sys.stderr)
        return await _from_kv(js, invoice_id)
    answer = json.loads(msg.data)
    error = answer.get("error")
    if error:
        if error.get("class") == "NotFound":
            raise Missing(error.get("message") or f"no PDF stored for invoice {invoice_id!r}")
        raise ValueError(f"{error.get('class')}: {error.get('message')}")
    return answer["object"]


async def _from_kv(js: Any, invoice_id: str) -> dict[str, Any]:
    from engine.keyed_state import safe_key

    try:
        entry = await (await js.key_value(STATE_BUCKET)).get(safe_key(invoice_id))
    except (BucketNotFoundError, KeyNotFoundError):
        raise Missing(f"no PDF stored for invoice {invoice_id!r}") from None
    latest = (json.loads(entry.value) or {}).get("latest")
    if not latest:
        raise Missing(f"no PDF stored for invoice {invoice_id!r}")
    return latest["object"]


class _HashingFile:
    """Write-only file for ObjectStore.get(writeinto=): SHA-256 and size as the chunks arrive."""

    def __init__(self, fh: Any) -> None:
        self.fh, self.sha, self.size = fh, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.fh.write(data)


async def _write(js: Any, ref: dict[str, Any], out: Path) -> int:
    """Stream the object to OUT.part, check size and SHA-256 against the reference, then rename."""
    part = out.with_name(f".{out.name}.part")
    try:
        with open(part, "wb") as fh:
            sink = _HashingFile(fh)
            try:
                await (await js.object_store(ref["bucket"])).get(ref["name"], writeinto=sink)
            except (BucketNotFoundError, ObjectNotFoundError, NotFoundError):
                raise Missing(f"the reference names {ref['bucket']}/{ref['name']}, which the Object Store "
                              "does not hold") from None
            fh.flush()
            os.fsync(fh.fileno())
        if (sink.size, sink.sha.hexdigest()) != (ref["size"], ref["sha256"]):
            raise ValueError(f"object {ref['bucket']}/{ref['name']}: read {sink.size} bytes with SHA-256 "
                             f"{sink.sha.hexdigest()}, the reference says {ref['size']} and {ref['sha256']}; "
                             f"{out} not written")
        os.replace(part, out)
    finally:
        part.unlink(missing_ok=True)
    return sink.size
