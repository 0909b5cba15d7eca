"""The invoice PDF flows of flows/ as shipped (request, drop, get) and `runner.py pdf get`, against the PDF
Generator simulator, the real SFTP drop and a nats-server of each test's own."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pypdf
import pytest
import pytest_asyncio

from adapters.sftp.cli import main as pdf_main, register as register_pdf
from engine.embedded_nats import EmbeddedNats
from engine.messages import event_headers
from engine.runtime import Hub
from engine.validation import Project
from sandbox.pdf_generator import PdfGenerator
from sandbox.sftp_server import SftpServer
from tests.helpers import StreamReader, project_from, settled, wait_until
from transforms import invoice_pdfs

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "invoice-pdf-drop-pw"
FLOWS = ["invoice-pdf-request", "invoice-pdf-drop", "invoice-pdf-get"]


@pytest_asyncio.fixture(scope="module")
async def drop(tmp_path_factory) -> AsyncIterator[SftpServer]:
    server = await SftpServer(tmp_path_factory.mktemp("pdf-drop"), password=PASSWORD).start()
    yield server
    await server.stop()


@pytest_asyncio.fixture(scope="module")
async def generator(drop: SftpServer) -> AsyncIterator[PdfGenerator]:
    gen = await PdfGenerator(drop.root, delay=0.2).start()
    yield gen
    await gen.stop()


@pytest.fixture(autouse=True)
def fresh(generator: PdfGenerator, drop: SftpServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    generator.reset()
    for path in drop.root.iterdir():
        path.unlink()
    monkeypatch.setenv("PDF_SFTP_PASSWORD", PASSWORD)
    yield
    generator.reset()


@pytest.fixture
def js(broker_js: Any) -> Any:
    return broker_js


def project(tmp: Path, generator: PdfGenerator, drop: SftpServer, flow_changes: dict[str, str] | None = None) -> Project:
    """The shipped flows (polling every 0.2 s, and `flow_changes` made to their text) with a config of
    the test's own, pointing at the simulators."""
    known_hosts = drop.write_known_hosts(tmp / "pdf_known_hosts")
    config = f"""
        streams:
          - {{name: ERP, subjects: ["erp.>"], max_age: 7d}}
          # not invoice.>: a stream capturing invoice.pdf.get would answer the portal's requests with a PubAck
          - {{name: INVOICE, subjects: ["invoice.pdf.requested", "invoice.pdf.available"], max_age: 30d}}
          - {{name: OPS, subjects: ["ops.>"], max_age: 14d}}
        endpoints:
          pdf_generator:
            adapter: http
            base_url: {generator.url}
            operations: {{render: {{method: POST, path: /api/v2/render-jobs}}}}
            timeout: 5s
          pdf_drop:
            adapter: sftp
            host: 127.0.0.1
            port: {drop.port}
            username: hub
            password: {{env: PDF_SFTP_PASSWORD}}
            known_hosts: {known_hosts}
            timeout: 5s
        """
    texts = [(ROOT / "flows" / f"{name}.yaml").read_text().replace("poll: 5s", "poll: 0.2s") for name in FLOWS]
    for old, new in (flow_changes or {}).items():
        texts = [text.replace(old, new) for text in texts]
    return project_from(tmp, config, *texts)


async def hub_for(tmp: Path, generator: PdfGenerator, drop: SftpServer, broker: EmbeddedNats,
                  flow_changes: dict[str, str] | None = None) -> Hub:
    hub = Hub(project(tmp, generator, drop, flow_changes), servers=[broker.url])
    await hub.start()
    return hub


def invoice(n: int, **extra: Any) -> dict[str, Any]:
    return {"invoice_id": f"DE-INV-{n:06d}", "country": "DE", "erp_account_key": f"A-{n}", "amount": "84.20",
            "currency": "EUR", "changed_at": "2026-11-30T22:00:00Z", **extra}


async def updated(js: Any, body: dict[str, Any]) -> None:
    await js.publish("erp.invoice.updated", json.dumps(body).encode(),
                     headers=event_headers("/erp/de", "erp.invoice.updated"))


async def get(nc_url: str, invoice_id: Any) -> dict[str, Any]:
    nc = await nats.connect(nc_url)
    try:
        return json.loads((await nc.request("invoice.pdf.get", json.dumps({"invoice_id": invoice_id}).encode(),
                                            timeout=5)).data)
    finally:
        await nc.close()


async def run_cli(*argv: str) -> int:
    """`runner.py pdf …` as runner.py will wire it, in a thread (it runs its own event loop)."""
    parser = argparse.ArgumentParser(prog="runner.py")
    register_pdf(parser.add_subparsers(dest="command", required=True))
    return await asyncio.to_thread(pdf_main, parser.parse_args(["pdf", *argv]))


# --- end to end ----------------------------------------------------------------------------------

async def test_an_updated_invoice_becomes_a_stored_pdf_that_the_portal_and_the_cli_can_get(
        tmp_path: Path, broker: EmbeddedNats, js: Any, generator: PdfGenerator, drop: SftpServer) -> None:
    """erp.invoice.updated -> a render job (invoice.pdf.requested) -> the PDF on SFTP -> the Object Store
    (invoice.pdf.available) -> invoice.pdf.get gives the reference -> `pdf get` writes the same bytes."""
    hub = await hub_for(tmp_path, generator, drop, broker)
    try:
        requested = await StreamReader.open(js, "invoice.pdf.requested")
        available = await StreamReader.open(js, "invoice.pdf.available")
        await updated(js, invoice(123, customer_name="Jürgen Müller"))
        [req] = await requested.wait_for(1)
        [job] = await generator.wait_rendered(1)
        [msg] = await available.wait_for(1)
        await wait_until(lambda: settled(js, "HUB_INGRESS", "invoice-pdf-drop"))
        answer = await get(broker.url, "DE-INV-000123")
        out = tmp_path / "portal" / "DE-INV-000123.pdf"
        out.parent.mkdir()
        code = await run_cli("get", "DE-INV-000123", "--out", str(out), "--nats", broker.url,
                             "--config", str(tmp_path / "config.yaml"))
    finally:
        await hub.stop()
    body = json.loads(req.data)
    assert (body["invoice_id"], body["job_id"], body["status"]) == ("DE-INV-000123", job.job_id, "QUEUED")
    event = json.loads(msg.data)
    ref = {"bucket": "invoices", "name": job.file_name, "size": job.size, "sha256": job.sha256}
    assert event["invoice_id"] == "DE-INV-000123" and event["object"] == ref
    assert answer["object"] == ref and answer["file_name"] == job.file_name
    assert code == 0 and hashlib.sha256(out.read_bytes()).hexdigest() == job.sha256
    text = pypdf.PdfReader(io.BytesIO(out.read_bytes())).pages[0].extract_text()
    assert "DE-INV-000123" in text and "Jürgen Müller" in text
    assert not list(out.parent.glob(".*.part"))


async def test_one_invoice_change_renders_once_and_a_busy_generator_is_retried(
        tmp_path: Path, broker: EmbeddedNats, js: Any, generator: PdfGenerator, drop: SftpServer) -> None:
    """The same change published twice makes one render job although the first request met a 503."""
    generator.fail_next(1, 503)
    hub = await hub_for(tmp_path, generator, drop, broker)
    try:
        requested = await StreamReader.open(js, "invoice.pdf.requested")
        await updated(js, invoice(7))
        await requested.wait_for(1)
        await updated(js, invoice(7))
        await wait_until(lambda: settled(js, "ERP", "invoice-pdf-request"))
        await generator.wait_rendered(1)
    finally:
        await hub.stop()
    assert len(generator.jobs) == 1 and len(requested.messages) == 1


async def test_two_copies_of_one_change_pulled_together_render_once(
        tmp_path: Path, broker: EmbeddedNats, js: Any, generator: PdfGenerator, drop: SftpServer) -> None:
    """Two copies of one change (two message ids, one idempotency key) reach the flow's workers at the
    same moment: the second waits for the first to settle, finds its mark and is skipped: one job."""
    hub = await hub_for(tmp_path, generator, drop, broker)
    try:
        requested = await StreamReader.open(js, "invoice.pdf.requested")
        await asyncio.gather(updated(js, invoice(8)), updated(js, invoice(8)))
        await wait_until(lambda: settled(js, "ERP", "invoice-pdf-request"))
        await generator.wait_rendered(1)
    finally:
        await hub.stop()
    assert len(generator.jobs) == 1 and len(requested.messages) == 1
    assert hub.runners["invoice-pdf-request"].stats.skipped == 1


async def test_copies_of_changes_spread_over_two_runners_render_once_each(
        tmp_path: Path, broker: EmbeddedNats, js: Any, generator: PdfGenerator, drop: SftpServer) -> None:
    """Two copies each of eight changes, one after the other, to two runners taking one message at a
    time: the second copy goes to the other runner while the first is being rendered, meets its
    claim, waits and is skipped; each change is rendered once."""
    generator.set_answer_delay(0.3)  # the render API answers slowly: the copies overlap
    one_at_a_time = {"limits: {concurrency: 8}": "limits: {concurrency: 1, batch: 1, max_in_flight: 1}"}
    hubs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        hubs.append(await hub_for(tmp_path / name, generator, drop, broker, one_at_a_time))
    consumer = (await js.consumer_info("ERP", "invoice-pdf-request")).config
    consumer.max_ack_pending = 2  # one message at each runner: a copy cannot wait behind its twin in one
    await js.add_consumer("ERP", consumer)
    try:
        for n in range(20, 28):
            await updated(js, invoice(n))
            await updated(js, invoice(n))
        await wait_until(lambda: settled(js, "ERP", "invoice-pdf-request"), timeout=30)
        await generator.wait_rendered(8)
    finally:
        for hub in hubs:
            await hub.stop()
    runs = [hub.runners["invoice-pdf-request"].stats for hub in hubs]
    assert sorted(job.invoice_id for job in generator.jobs.values()) == [f"DE-INV-{n:06d}" for n in range(20, 28)]
    assert sum(r.skipped for r in runs) == 8 and all(r.acked + r.skipped for r in runs)


async def test_an_invoice_the_generator_refuses_is_dead_lettered_with_its_answer(
        tmp_path: Path, broker: EmbeddedNats, js: Any, generator: PdfGenerator, drop: SftpServer) -> None:
    """A 400 from the render API (an amount it cannot read) is a permanent failure: the DLQ, not a retry loop."""
    hub = await hub_for(tmp_path, generator, drop, broker)
    try:
        dead = await StreamReader.open(js, "dlq.invoice-pdf-request")
        await updated(js, invoice(8, amount="lots"))
        [record] = await dead.wait_for(1)
    finally:
        await hub.stop()
    assert record.headers["Hub-Dlq-Error-Class"] == "TargetRejected"
    assert "400" in record.headers["Hub-Dlq-Error"] and "amount" in record.headers["Hub-Dlq-Error"]
    assert generator.jobs == {}


async def test_a_pdf_landed_again_after_the_duplicate_window_is_not_announced_again(
        tmp_path: Path, broker: EmbeddedNats, js: Any, generator: PdfGenerator, drop: SftpServer) -> None:
    """The landing record stored a second time under a new message id (as after a crash outliving JetStream's
    duplicate window) is dropped by the per-invoice record; a newer PDF of the invoice is announced and is
    what invoice.pdf.get answers from then on."""
    hub = await hub_for(tmp_path, generator, drop, broker)
    try:
        available = await StreamReader.open(js, "invoice.pdf.available")
        first = generator.drop_pdf("DE-INV-000042")
        [msg] = await available.wait_for(1)
        landing = await js.get_last_msg("HUB_INGRESS", "hub.ingress.invoice-pdf-drop")
        await js.publish("hub.ingress.invoice-pdf-drop", landing.data,
                         headers={**event_headers("/test/replay", "hub.ingress.invoice-pdf-drop")})
        await wait_until(lambda: settled(js, "HUB_INGRESS", "invoice-pdf-drop"))
        assert len(available.messages) == 1
        newer = drop.root / first.name.replace(first.name[-18:-4], "29991231235959")
        newer.write_bytes(first.read_bytes().replace(b"Sandbox Customer", b"Sandbox Kundin!!"))
        await available.wait_for(2)
        answer = await get(broker.url, "DE-INV-000042")
    finally:
        await hub.stop()
    assert json.loads(msg.data)["object"]["name"] == first.name
    assert answer["file_name"] == newer.name
    assert answer["object"]["sha256"] == hashlib.sha256(newer.read_bytes()).hexdigest()


async def test_an_unknown_invoice_is_not_found_and_the_cli_exits_3_without_writing(
        tmp_path: Path, broker: EmbeddedNats, js: Any, generator: PdfGenerator, drop: SftpServer) -> None:
    """invoice.pdf.get answers NotFound for an invoice with no PDF and ValidationFailed for a malformed id;
    `pdf get` exits 3 and leaves no file."""
    hub = await hub_for(tmp_path, generator, drop, broker)
    out = tmp_path / "none.pdf"
    try:
        missing = await get(broker.url, "DE-INV-999999")
        malformed = await get(broker.url, "../etc/passwd")
        code = await run_cli("get", "DE-INV-999999", "--out", str(out), "--nats", broker.url,
                             "--config", str(tmp_path / "config.yaml"))
    finally:
        await hub.stop()
    assert missing["error"]["class"] == "NotFound" and "DE-INV-999999" in missing["error"]["message"]
    assert malformed["error"]["class"] == "ValidationFailed" and "invoice_id" in malformed["error"]["message"]
    assert code == 3 and not out.exists() and not list(tmp_path.glob(".none.pdf.part"))


async def test_with_the_hub_down_the_cli_reads_the_record_and_writes_the_pdf(
        tmp_path: Path, broker: EmbeddedNats, js: Any, generator: PdfGenerator, drop: SftpServer,
        capsys: pytest.CaptureFixture[str]) -> None:
    """No hub answering invoice.pdf.get: `pdf get` takes the reference from KV and still writes a checked PDF."""
    hub = await hub_for(tmp_path, generator, drop, broker)
    try:
        available = await StreamReader.open(js, "invoice.pdf.available")
        path = generator.drop_pdf("DE-INV-000077", mb=2)
        await available.wait_for(1)
        await wait_until(lambda: settled(js, "HUB_INGRESS", "invoice-pdf-drop"))
    finally:
        await hub.stop()
    out = tmp_path / "saved.pdf"
    code = await run_cli("get", "DE-INV-000077", "--out", str(out), "--nats", broker.url,
                         "--config", str(tmp_path / "config.yaml"))
    printed = capsys.readouterr()
    assert code == 0 and out.read_bytes() == path.read_bytes()
    assert "no hub answers invoice.pdf.get" in printed.err and f"wrote {path.stat().st_size} bytes" in printed.out


# --- the transforms (pure) -------------------------------------------------------------------------

def test_remember_keeps_the_newest_pdf_and_drops_a_repeat_and_lookup_answers_from_it() -> None:
    """An older file arriving late is announced but not made the newest; a repeat of an announced one is dropped."""
    def event(name: str, mtime: str, digest: str) -> dict[str, Any]:
        return invoice_pdfs.available({"invoice_id": "X1", "file_name": name, "bucket": "invoices", "object": name,
                                       "size": 10, "sha256": digest, "server_mtime": mtime, "fetched_at": mtime})

    new = event("INV-X1-20260102000000.pdf", "2026-01-02T00:00:00+00:00", "b" * 64)
    old = event("INV-X1-20260101000000.pdf", "2026-01-01T00:00:00+00:00", "a" * 64)
    one = invoice_pdfs.remember({"state": None, "message": new})
    two = invoice_pdfs.remember({"state": one["state"], "message": old})
    again = invoice_pdfs.remember({"state": two["state"], "message": new})
    assert one["payload"] == new and two["payload"] == old and again == {"state": two["state"], "payload": None}
    assert two["state"]["latest"]["file_name"] == new["file_name"] and two["state"]["versions"] == 2
    found = invoice_pdfs.lookup({"state": two["state"], "message": {"invoice_id": "X1"}})["payload"]
    assert found["object"] == new["object"]
    none = invoice_pdfs.lookup({"state": None, "message": {"invoice_id": "X2"}})["payload"]
    assert none["error"]["class"] == "NotFound"


def test_render_request_builds_the_generators_job_body_and_refuses_what_it_would_refuse() -> None:
    """The job body has the generator's field names; an id it cannot name a file by is a ValidationFailed."""
    from engine.errors import ValidationFailed

    body = invoice_pdfs.render_request(invoice(5))["render"]
    assert body == {"invoiceId": "DE-INV-000005", "customerName": "Account A-5", "amount": "84.20",
                    "currency": "EUR", "lines": [{"text": "Invoice DE-INV-000005", "amount": "84.20"}]}
    with pytest.raises(ValidationFailed, match="invoice_id"):
        invoice_pdfs.render_request(invoice(5, invoice_id="../x"))
    with pytest.raises(ValidationFailed, match="invoice_id: missing"):
        invoice_pdfs.available({"file_name": "x.pdf"})
