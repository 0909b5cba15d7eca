"""The Belgian, Power Sales and invoice-PDF parts of `runner.py demo` (the meters: sandbox/demo_meters.py): a real SMTP/IMAP mail sandbox
with the Belgian ERP simulator, the Power Sales simulator behind the website's `tariff.quote`, and the
PDF Generator writing to a real SFTP drop whose host key the hub pins.

Like sandbox/demo_erp.py, each section plays the outside world, waits for what a user would see and
reports checks through the demo's `check` callback.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from sandbox.be_erp import BeErpBehaviour, BelgianErpSimulator
from sandbox.mail import MailSandbox
from sandbox.mqtt_broker import HUB_PASSWORD as MQTT_HUB_PASSWORD
from sandbox.mqtt_broker import MqttBroker
from sandbox.pdf_generator import PdfGenerator
from sandbox.powersales import PowerSalesSimulator
from sandbox.sftp_server import SftpServer

HUB_MAIL, ERP_MAIL, MAIL_PASSWORD = "hub@plu.example", "erp-be@plu.example", "demo-mail-secret"
SFTP_PASSWORD = "demo-sftp-secret"
VENDOR3_SECRET, FIELD_TOKEN = "demo-vendor3-secret", "demo-field-app-token"
METER_SECRETS = {"METER_VENDOR1_API_KEY": "v1-sandbox-api-key", "METER_VENDOR2_CLIENT_SECRET": "v2-sandbox-client-secret",
                 "METER_VENDOR3_PASSWORD": "v3-sandbox-password", "METER_VENDOR4_SECRET": "v4-sandbox-signing-secret",
                 "METER_VENDOR5_CLIENT_SECRET": "v5 sandbox:s3cr=t+/é"}
Check = Callable[[bool, str], None]
LOOKUP = {"households": 3, "consumption": 4200, "postcode": "75001", "country": "FR", "gas": True}


class Outside:
    """The systems this module starts: the mail servers, the Belgian ERP, Power Sales."""

    def __init__(self) -> None:
        self.mail: MailSandbox | None = None
        self.be_erp: BelgianErpSimulator | None = None
        self.powersales: PowerSalesSimulator | None = None
        self.sftp: SftpServer | None = None
        self.pdfs: PdfGenerator | None = None
        self.mqtt: MqttBroker | None = None
        self.platforms: dict[str, Any] = {}
        self.work = Path(tempfile.mkdtemp(prefix="hub-demo-outside-"))

    async def start(self) -> "Outside":
        self.mail = await MailSandbox(users={HUB_MAIL: MAIL_PASSWORD, ERP_MAIL: MAIL_PASSWORD}).start()
        env = {"SMTP_HOST": self.mail.host, "SMTP_PORT": str(self.mail.smtp_port), "IMAP_HOST": self.mail.host,
               "IMAP_PORT": str(self.mail.imap_port), "MAIL_CA_BUNDLE": str(self.mail.ca_file),
               "HUB_MAIL_USER": HUB_MAIL, "HUB_MAIL_PASSWORD": MAIL_PASSWORD, "BE_ERP_ADDRESS": ERP_MAIL}
        os.environ.update(env)
        os.environ.update({"VENDOR3_WEBHOOK_SECRET": VENDOR3_SECRET, "FIELD_APP_TOKEN": FIELD_TOKEN,
                           "HTTP_INGRESS_PORT": "0"})  # the demo's webhook server takes a free port
        self.be_erp = await BelgianErpSimulator(self.mail, ERP_MAIL, MAIL_PASSWORD,
                                                BeErpBehaviour(completion_delay=1.0), idle_seconds=5).start()
        self.powersales = await PowerSalesSimulator(latency=0.3, capacity=4).start()
        os.environ["POWERSALES_URL"] = self.powersales.url
        self.sftp = await SftpServer(self.work / "drop", password=SFTP_PASSWORD).start()
        known_hosts = self.sftp.write_known_hosts(self.work / "known_hosts")  # pinned, as ops would
        self.pdfs = await PdfGenerator(self.sftp.root, delay=0.1).start()
        os.environ.update({"PDF_SFTP_HOST": self.sftp.host, "PDF_SFTP_PORT": str(self.sftp.port),
                           "PDF_SFTP_PASSWORD": SFTP_PASSWORD, "PDF_SFTP_KNOWN_HOSTS": str(known_hosts),
                           "PDF_GENERATOR_URL": self.pdfs.url})
        from sandbox.meters import PLATFORMS

        for vendor, cls in PLATFORMS.items():  # the smart-meter platforms, 20 meters each (ESPI: 2, 96 readings a day)
            self.platforms[vendor] = await cls(2 if vendor == "vendor5" else 20).start()
            os.environ[f"METER_{vendor.upper()}_URL"] = self.platforms[vendor].url
        os.environ.update(METER_SECRETS)
        self.mqtt = await MqttBroker().start()
        os.environ.update({"VENDOR4_MQTT_HOST": self.mqtt.host, "VENDOR4_MQTT_PORT": str(self.mqtt.port),
                           "VENDOR4_MQTT_PASSWORD": MQTT_HUB_PASSWORD})
        return self

    def describe(self) -> str:
        assert self.mail and self.powersales
        assert self.sftp and self.pdfs
        return (f"  sandbox mail (SMTP :{self.mail.smtp_port} STARTTLS, IMAPS :{self.mail.imap_port}) with the "
                f"Belgian ERP reading {ERP_MAIL}\n  sandbox Power Sales at {self.powersales.url} (0.3 s per answer)"
                f"\n  sandbox PDF Generator at {self.pdfs.url}, its SFTP drop at :{self.sftp.port} (host key pinned)")

    async def stop(self) -> None:
        for part in (self.be_erp, self.powersales, self.pdfs, self.sftp, self.mail, self.mqtt,
                     *self.platforms.values()):
            if part is not None:
                await part.stop()


async def section_belgium(switched: Any, hub: Any, outside: Outside, check: Check) -> None:
    print("\n  4. Belgium's ERP has no API: the contract went by email, its replies came back by email")
    assert outside.mail is not None and outside.be_erp is not None
    body = next((json.loads(m.data) for m in switched.messages if json.loads(m.data)["country"] == "BE"), None)
    de = next((json.loads(m.data) for m in switched.messages if json.loads(m.data)["country"] == "DE"), None)
    for b in (de, body):
        if b:
            print(f"       {b['country']}  {b['contract_id']:<10} ERP reference {b['erp_ref']:<14} {b['status']}")
    mails_in = await outside.mail.messages(HUB_MAIL, "Processed")
    ingress = hub.ingresses["be-erp-replies"]
    check(body is not None and body["status"] == "COMPLETED",
          "the Belgian switch completed like the German one: a flat file out, an ACK and an SWC back")
    check(len(outside.be_erp.handled) == 1 and len(mails_in) == 2 and ingress.stored == 2,
          f"{len(outside.be_erp.handled)} request mail out; {ingress.stored} replies stored in JetStream "
          f"before they were moved to Processed")


async def section_powersales(nc: Any, outside: Outside, check: Check) -> None:
    print("\n  10. The public website asks for tariffs; Power Sales is slow, then goes away")
    ps = outside.powersales
    assert ps is not None

    async def ask(**change: Any) -> tuple[dict[str, Any], float]:
        started = time.monotonic()
        reply = await nc.request("tariff.quote", json.dumps({**LOOKUP, **change}).encode(), timeout=5)
        return json.loads(reply.data), (time.monotonic() - started) * 1000

    first, t1 = await ask()
    again, t2 = await ask()
    print(f"       first lookup  {t1:6.0f} ms  {len(first.get('tariffs', []))} tariffs from Power Sales")
    print(f"       same lookup   {t2:6.0f} ms  from the cache (cached: {again.get('cached')})")
    await ps.go_away()
    down, t3 = await ask()
    unknown, t4 = await ask(postcode="69001")
    await ps.come_back()
    print(f"       Power Sales down: the known lookup {t3:.0f} ms (cached: {down.get('cached')}); "
          f"a new one {t4:.0f} ms: {unknown.get('error', {}).get('class', 'answered')}")
    check("tariffs" in first and not first.get("cached") and again.get("cached") is True,
          "a fresh quote from Power Sales, then the same lookup answered from the KV cache")
    check("tariffs" in down and "error" in unknown and unknown["error"]["transient"] and max(t3, t4) < 2500,
          "with Power Sales down the website still gets the quote, or a clear 'try later', never a hang")


async def section_pdfs(available: Any, invoices: int, outside: Outside, nats_url: str, check: Check,
                       wait_until: Any, deadline: float) -> None:
    print("\n  7. Every invoice of the batch gets its PDF, rescued from the SFTP drop before it is deleted")
    ok = await wait_until(lambda: len(available.messages) >= invoices, [available.changed], deadline)
    bodies = [json.loads(m.data) for m in available.messages]
    print(f"       {len(bodies)} PDFs rendered, fetched over SFTP into the Object Store (SHA-256 checked), "
          "announced on invoice.pdf.available")
    check(ok and len({b["invoice_id"] for b in bodies}) == invoices,
          f"all {invoices} invoices have a stored PDF, each announced once")
    if not bodies:
        return
    pick = bodies[0]
    out = outside.work / f"{pick['invoice_id']}.pdf"
    print(f"       $ runner.py pdf get {pick['invoice_id']} --out {out}")
    from adapters.sftp.cli import main as pdf_cli
    from runner import build_parser

    args = build_parser().parse_args(["pdf", "get", pick["invoice_id"], "--out", str(out), "--nats", nats_url])
    code = await asyncio.to_thread(pdf_cli, args)
    data = out.read_bytes() if out.exists() else b""
    check(code == 0 and data.startswith(b"%PDF-") and hashlib.sha256(data).hexdigest() == pick["object"]["sha256"],
          f"the portal's PDF of {pick['invoice_id']} written to a file, checksum right ({len(data)} bytes)")
