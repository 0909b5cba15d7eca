"""The PDF Generator as a real HTTP service that renders invoice PDFs into the SFTP drop after a delay.

The hub asks for a PDF and later finds it on SFTP (poll + claim check), so the simulator behaves like the
vendor's: a JSON API answers 202 with a job at once, the PDF (a real one, fpdf2) appears `delay` seconds
later as `INV-<invoiceId>-<yyyyMMddHHmmss>.pdf` (UTC). It is written as `.<name>.part` and renamed, so a
watcher never sees half a file. Controls drop the files the hub must quarantine and make PDFs large.

    gen = await PdfGenerator(drop_dir, delay=0.2).start()
    POST gen.jobs_url  {"invoiceId": "DE-INV-000123", "customerName": "Erika Muster", "amount": "84.20",
                        "currency": "EUR", "lines": [{"text": "Energy May", "amount": "84.20"}]}
      -> 202 {"jobId": "J000001", "status": "QUEUED", ...}; 400 {"error": "VALIDATION", "details": [...]}
    GET  gen.jobs_url + "/J000001"  -> {"status": "QUEUED|RENDERING|DONE", "fileName", "sizeBytes", "sha256"}

Controls: `set_delay(s)`, `set_large(mb)` (pad each PDF with an incompressible attachment), `fail_next(n,
status)`, `drop_pdf(id)` (at once, no API), `drop_bad_name()`, `drop_not_pdf(id)`; `rendered`, `wait_rendered(n)`.
A second job for the same invoice within the same second replaces the first file (the vendor's naming).
Run alone: `python -m sandbox.pdf_generator DROP_DIR [PORT]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import re
import sys
import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from aiohttp import web
from fpdf import FPDF

from engine.tasks import cancel_and_wait

INVOICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
FILE_NAME = re.compile(r"INV-(?P<invoice_id>[A-Za-z0-9][A-Za-z0-9_-]*)-(?P<stamp>\d{14})\.pdf")  # for readers


def _latin1(text: str) -> str:
    return text.encode("latin-1", "replace").decode("latin-1")  # fpdf2's core fonts are Latin-1 only


def render_invoice_pdf(invoice_id: str, customer_name: str, amount: Decimal, currency: str,
                       lines: list[dict[str, Any]], padding: int = 0) -> bytes:
    """A one-page invoice PDF; `padding` bytes of random data ride along as an attachment (large PDFs)."""
    pdf = FPDF()
    pdf.set_title(f"Invoice {invoice_id}")
    pdf.set_creator("PLU PDF Generator (sandbox)")
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 16)
    pdf.cell(0, 10, _latin1(f"PLU Energy - Invoice {invoice_id}"), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=11)
    pdf.cell(0, 8, _latin1(f"Customer: {customer_name}"), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    for line in lines:
        pdf.cell(140, 7, _latin1(str(line.get("text", ""))), border="B")
        pdf.cell(40, 7, f"{Decimal(str(line.get('amount', 0))):.2f} {currency}", border="B", align="R",
                 new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "B", 12)
    pdf.cell(140, 9, "Total")
    pdf.cell(40, 9, f"{amount:.2f} {currency}", align="R", new_x="LMARGIN", new_y="NEXT")
    if padding:
        pdf.embed_file(bytes=os.urandom(padding), basename="archive-scan.bin", desc="archived scan")
    return bytes(pdf.output())


def write_atomically(path: Path, data: bytes) -> None:
    """Write beside the target under a hidden .part name, then rename: readers see all or nothing."""
    tmp = path.with_name(f".{path.name}.part")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@dataclass
class Job:
    """One render request and, once DONE, the file it produced."""

    job_id: str
    invoice_id: str
    request: dict[str, Any] = field(repr=False)
    status: str = "QUEUED"
    file_name: str | None = None
    size: int | None = None
    sha256: str | None = None

    def view(self) -> dict[str, Any]:
        return {"jobId": self.job_id, "invoiceId": self.invoice_id, "status": self.status,
                "fileName": self.file_name, "sizeBytes": self.size, "sha256": self.sha256,
                "links": {"self": f"/api/v2/render-jobs/{self.job_id}"}}


class PdfGenerator:
    """The generator's render-job API on an aiohttp app, writing into `drop_dir` (an SFTP server's folder)."""

    def __init__(self, drop_dir: Path | str, *, delay: float = 0.2, large_mb: float = 0.0) -> None:
        self.drop_dir = Path(drop_dir)
        self.drop_dir.mkdir(parents=True, exist_ok=True)
        self.delay, self.large_mb, self._defaults = delay, large_mb, (delay, large_mb)
        self.jobs: dict[str, Job] = {}
        self.rendered: list[Job] = []  # DONE jobs, in the order their files appeared
        self.url = self.jobs_url = ""
        self._seq = itertools.count(1)
        self._failures: list[int] = []
        self.answer_delay = 0.0  # set_answer_delay
        self._tasks: set[asyncio.Task[None]] = set()
        self._done = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> "PdfGenerator":
        app = web.Application()
        app.router.add_post("/api/v2/render-jobs", self._create)
        app.router.add_get("/api/v2/render-jobs/{job_id}", self._status)
        app.router.add_get("/api/v2/health", self._health)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port, reuse_address=True).start()
        self.url = f"http://{host}:{self._runner.addresses[0][1]}"
        self.jobs_url = f"{self.url}/api/v2/render-jobs"
        return self

    async def stop(self) -> None:
        await cancel_and_wait(list(self._tasks))
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- controls ----------------------------------------------------------------------------

    def set_delay(self, seconds: float) -> None:
        """Files appear this long after their job was accepted."""
        self.delay = max(0.0, seconds)

    def set_large(self, mb: float) -> None:
        """Pad every PDF from now on to about `mb` MiB (0: normal, a few KiB)."""
        self.large_mb = max(0.0, mb)

    def set_answer_delay(self, seconds: float) -> None:
        """A slow render API: job requests are answered (and their jobs created) this long after they arrive."""
        self.answer_delay = max(0.0, seconds)

    def fail_next(self, n: int = 1, status: int = 503) -> None:
        """The next `n` job requests answer `status` with a JSON error and render nothing."""
        self._failures.extend([status] * n)

    def reset(self) -> None:
        """As constructed again (between tests): its delay and size, no failures, pending jobs cancelled, no records."""
        (self.delay, self.large_mb), self._failures, self.answer_delay = self._defaults, [], 0.0
        for task in self._tasks:
            task.cancel()  # a write already in its thread still lands, unrecorded
        self.jobs.clear()
        self.rendered.clear()

    def drop_pdf(self, invoice_id: str, mb: float | None = None) -> Path:
        """Drop a real invoice PDF at once, bypassing the API (for hub tests and benchmarks); `mb` pads it."""
        path = self.drop_dir / self._name(invoice_id)
        padding = int((self.large_mb if mb is None else mb) * 1024 * 1024)
        write_atomically(path, render_invoice_pdf(invoice_id, "Sandbox Customer", Decimal("42.00"), "EUR",
                                                  [{"text": "Energy", "amount": "42.00"}], padding))
        return path

    def drop_bad_name(self, name: str = "invoice_final (2).pdf") -> Path:
        """Drop a real PDF whose name does not parse as INV-<id>-<yyyyMMddHHmmss>.pdf."""
        path = self.drop_dir / name
        write_atomically(path, render_invoice_pdf("UNKNOWN", "?", Decimal(0), "EUR", []))
        return path

    def drop_not_pdf(self, invoice_id: str = "BROKEN-1") -> Path:
        """Drop a well-named file whose content is not a PDF (the vendor's HTML error page, saved as .pdf)."""
        path = self.drop_dir / self._name(invoice_id)
        write_atomically(path, b"<html><body><h1>Render error</h1><p>template not found</p></body></html>\n")
        return path

    async def wait_rendered(self, count: int, timeout: float = 10) -> list[Job]:
        """Return once at least `count` PDFs have been written; TimeoutError otherwise."""
        async with asyncio.timeout(timeout):
            async with self._done:
                await self._done.wait_for(lambda: len(self.rendered) >= count)
        return self.rendered

    # --- HTTP --------------------------------------------------------------------------------

    async def _create(self, request: web.Request) -> web.Response:
        if self.answer_delay:
            await asyncio.sleep(self.answer_delay)
        if self._failures:
            status = self._failures.pop(0)
            return web.json_response({"error": "UNAVAILABLE", "message": "render farm busy"}, status=status)
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "VALIDATION", "details": ["body: not JSON"]}, status=400)
        details = _validate(body)
        if details:
            return web.json_response({"error": "VALIDATION", "details": details}, status=400)
        job = Job(f"J{next(self._seq):06d}", body["invoiceId"], body)
        self.jobs[job.job_id] = job
        task = asyncio.get_running_loop().create_task(self._render(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.json_response(job.view(), status=202, headers={"Location": job.view()["links"]["self"]})

    async def _health(self, request: web.Request) -> web.Response:
        pending = sum(j.status in ("QUEUED", "RENDERING") for j in self.jobs.values())
        return web.json_response({"status": "UP", "pendingJobs": pending})

    async def _status(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["job_id"])
        if job is None:
            return web.json_response({"error": "NOT_FOUND"}, status=404)
        return web.json_response(job.view())

    async def _render(self, job: Job) -> None:
        await asyncio.sleep(self.delay)
        job.status, r = "RENDERING", job.request
        try:
            data = await asyncio.to_thread(
                render_invoice_pdf, job.invoice_id, r["customerName"], Decimal(str(r["amount"])),
                r.get("currency", "EUR"), r.get("lines", []), int(self.large_mb * 1024 * 1024))
            name = self._name(job.invoice_id)
            await asyncio.to_thread(write_atomically, self.drop_dir / name, data)
        except Exception:  # a simulator bug or a full disk: visible in the job, never a silent hang
            job.status = "FAILED"
            raise
        job.file_name, job.size, job.sha256 = name, len(data), hashlib.sha256(data).hexdigest()
        job.status = "DONE"
        async with self._done:
            self.rendered.append(job)
            self._done.notify_all()

    @staticmethod
    def _name(invoice_id: str) -> str:
        return f"INV-{invoice_id}-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}.pdf"


def _validate(body: Any) -> list[str]:
    if not isinstance(body, dict):
        return ["body: a JSON object expected"]
    details = []
    if not isinstance(body.get("invoiceId"), str) or not INVOICE_ID.fullmatch(body["invoiceId"]):
        details.append("invoiceId: 1-64 of A-Z a-z 0-9 _ - required")
    if not isinstance(body.get("customerName"), str) or not body["customerName"].strip():
        details.append("customerName: required")
    if not _is_number(body.get("amount")):
        details.append("amount: a decimal number required")
    lines = body.get("lines", [])
    if not isinstance(lines, list) or not all(isinstance(x, dict) for x in lines):
        details.append("lines: a list of {text, amount} expected")
    else:
        details += [f"lines[{n}].amount: a decimal number required"
                    for n, line in enumerate(lines) if not _is_number(line.get("amount", 0))]
    if not isinstance(body.get("currency", "EUR"), str):
        details.append("currency: a code like EUR expected")
    return details


def _is_number(value: Any) -> bool:
    try:
        return not isinstance(value, bool) and Decimal(str(value)).is_finite()
    except InvalidOperation:
        return False


async def _serve(drop_dir: str, port: int) -> None:
    gen = await PdfGenerator(drop_dir).start(port=port)
    print(f"render jobs: {gen.jobs_url}  drop: {gen.drop_dir}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await gen.stop()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m sandbox.pdf_generator DROP_DIR [PORT]")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0))
