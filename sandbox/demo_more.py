"""The Belgian, Power Sales and invoice-PDF parts of `runner.py demo`: a real SMTP/IMAP mail sandbox
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
from sandbox.mqtt_broker import VENDOR4_PASSWORD, VENDOR4_USER, MqttBroker
from sandbox.pdf_generator import PdfGenerator
from sandbox.powersales import PowerSalesSimulator
from sandbox.sftp_server import SftpServer

HUB_MAIL, ERP_MAIL, MAIL_PASSWORD = "hub@plu.example", "erp-be@plu.example", "demo-mail-secret"
SFTP_PASSWORD = "demo-sftp-secret"
VENDOR3_SECRET, FIELD_TOKEN = "demo-vendor3-secret", "demo-field-app-token"
METER_SECRETS = {"METER_VENDOR1_API_KEY": "v1-sandbox-api-key", "METER_VENDOR2_CLIENT_SECRET": "v2-sandbox-client-secret",
                 "METER_VENDOR3_PASSWORD": "v3-sandbox-password", "METER_VENDOR4_SECRET": "v4-sandbox-signing-secret"}
COLD_STORE_METER, COLD_STORE_SITE = "V3-COLD-0001", "INST-COLD-1"
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

        for vendor, cls in PLATFORMS.items():  # the four smart-meter platforms, 20 meters each
            self.platforms[vendor] = await cls(20).start()
            os.environ[f"METER_{vendor.upper()}_URL"] = self.platforms[vendor].url
        os.environ.update(METER_SECRETS)
        self.mqtt = await MqttBroker().start()
        os.environ.update({"VENDOR4_MQTT_HOST": self.mqtt.host, "VENDOR4_MQTT_PORT": str(self.mqtt.port),
                           "VENDOR4_MQTT_PASSWORD": MQTT_HUB_PASSWORD})
        return self

    def site_directory(self) -> dict[str, dict[str, Any]]:
        """What the CRM knows of the meter platforms' sites (GET /sites/<id> on the CRM bridge), and the
        cold store section 13 pushes for."""
        sites = {COLD_STORE_SITE: {"site_id": COLD_STORE_SITE, "account_id": "A-UK-COLD-1", "kind": "business"}}
        for vendor, platform in self.platforms.items():
            for i in range(platform.source.meters):
                meter = platform.source.meter(i)
                sites[meter.site_id] = {"site_id": meter.site_id, "account_id": f"A-{vendor}-{i}", "kind": meter.profile}
        return sites

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


async def section_push(readings: Any, hub: Any, outside: Outside, check: Check, wait_until: Any,
                       deadline: float) -> None:
    print("\n  11. Vendor 3 pushes signed readings, vendor 4 publishes on MQTT, a field agent sends one")
    from datetime import datetime, timedelta, timezone

    import aiohttp

    from sandbox.meters import MqttPublisher, Vendor3Platform, Vendor4Platform, WebhookSender

    before = len(readings.messages)
    push, manual = hub.ingresses["meter-vendor3-push"], hub.ingresses["meter-manual-readings"]
    day = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=2)
    batch = Vendor3Platform(meters=10).records(day, day + timedelta(days=1))
    async with WebhookSender(push.url, VENDOR3_SECRET) as sender:
        sent = await sender.send(batch)
        forged = await sender.send(batch, bad_signature=True)
        replayed = await sender.replay(sent)
    reading = {"meter_id": "M-BE-FIELD-1", "site_id": "S-BE-7", "read_at": day.isoformat(), "value": 4711.2,
               "unit": "kWh"}
    async with aiohttp.ClientSession() as http:
        async with http.post(manual.url, json=reading, headers={"Authorization": f"Bearer {FIELD_TOKEN}"}) as r:
            manual_status = r.status
    assert outside.mqtt is not None
    pushed = Vendor4Platform(meters=5).records(day, day + timedelta(days=1))
    async with MqttPublisher(outside.mqtt.host, outside.mqtt.port, username=VENDOR4_USER,
                             password=VENDOR4_PASSWORD) as publisher:
        await publisher.publish_many(pushed)
    print(f"       signed batch of {len(batch)}: {sent.status}; forged: {forged.status}; replayed: "
          f"{replayed.status}; manual reading: {manual_status}; {len(pushed)} published on MQTT (QoS 1)")
    want = len(batch) + 1 + len(pushed)
    ok = await wait_until(lambda: len(readings.messages) >= before + want, [readings.changed], deadline)
    new = [json.loads(m.data) for m in readings.messages[before:]]
    sources = sorted({n["source"] for n in new})
    check(ok and sent.status == 202 and manual_status == 202 and len(new) == want,
          f"{len(new)} readings stored before they were acknowledged, canonical on meter.reading.received "
          f"({', '.join(sources)})")
    check(forged.status == 401 and replayed.status == 409, "a forged signature (401) and a replay (409) stored nothing")


async def section_monthly_pull(js: Any, records: Any, hub: Any, check: Check, wait_until: Any,
                               deadline: float) -> None:
    print("\n  12. Ops run the monthly meter pull now (scheduled for the 2nd, 03:00 Europe/Brussels)")
    from datetime import datetime, timezone

    from engine.schedule import publish_ticks
    from transforms.meter_pulls import ZONES

    now = datetime.now(timezone.utc)  # a first run: last month, from its first midnight in each vendor's zone
    year, month = now.year - (now.month == 1), (now.month - 2) % 12 + 1
    first = {v: datetime(year, month, 1, tzinfo=tz) for v, tz in ZONES.items()}
    flow = next(lf.flow for lf in hub.project.flows if lf.flow.name == "meter-vendor-pulls")
    vendors = [e["vendor"] for e in flow.source.each]
    print(f"       $ runner.py trigger meter-vendor-pulls --payload '{{\"vendor\": …, \"from\": "
          f"\"{year}-{month:02d}-01…\"}}'   (a first run: last month, inside the platforms' 3 months)")
    before = len(records.messages)
    started = time.monotonic()
    await publish_ticks(js, flow, "demo", manual=True,
                        payloads=[{"vendor": v, "from": first[v].isoformat()} for v in vendors])
    ours = lambda: [json.loads(m.data) for m in records.messages[before:]  # noqa: E731
                    if json.loads(m.data).get("flow") == "meter-vendor-pulls"]
    ok = await wait_until(lambda: len(ours()) >= len(vendors), [records.changed], deadline)
    took = time.monotonic() - started
    rows = sorted(ours(), key=lambda r: r["checkpoint"])
    print(f"       {'vendor':<10}{'pages':>6}{'readings':>10}{'vendor total':>14}  matched")
    for r in rows:
        total = "-" if r["erp_total"] is None else r["erp_total"]
        print(f"       {r['checkpoint'].split(':')[1]:<10}{r['pages']:>6}{r['items']:>10}{total:>14}  {r['matched']}")
    count = sum(r["items"] for r in rows)
    check(ok and count > 0 and all(r["matched"] is not False for r in rows),
          f"{count} readings pulled from four platforms in {took:.1f}s, each paged its own way, a "
          "reconciliation record per vendor")


RULE_FLOWS = ("meter-reading-dedupe", "meter-month-totals", "meter-reading-forecast", "meter-keycustomer-detect")


async def settled(js: Any, durables: tuple[str, ...], deadline: float) -> bool:
    """Until each flow's consumer has nothing pending or unacknowledged (a consumer-info query: no event says so)."""
    while time.monotonic() < deadline:
        infos = [await js.consumer_info("METER", d) for d in durables]
        if all(i.num_pending == 0 and i.num_ack_pending == 0 for i in infos):
            return True
        await asyncio.sleep(0.05)
    return False


async def section_meter_rules(js: Any, readings: Any, records: Any, totals: Any, forecasts: Any, candidates: Any,
                              hub: Any, check: Check, wait_until: Any, deadline: float) -> None:
    print("\n  13. The rules on the readings: one per meter and time, month totals, forecasts, key customers")
    from datetime import datetime, timedelta, timezone
    from zoneinfo import ZoneInfo

    from sandbox.meters import Vendor3Platform, WebhookSender

    await settled(js, RULE_FLOWS, deadline)
    received = [json.loads(m.data) for m in readings.messages]
    pulled = [r for r in received if r["source"].endswith("/pull") and r.get("interval_start")]
    pushed = {(r["meter_id"], r["register"], r["read_at"]) for r in received if r["source"].endswith("/push")}
    pull_items = sum(r["items"] for r in map(lambda m: json.loads(m.data), records.messages)
                     if r.get("flow") == "meter-vendor-pulls")
    registers = {(r["meter_id"], r["register"]) for r in pulled}
    ok = await wait_until(lambda: len(forecasts.messages) >= len(registers), [forecasts.changed], deadline)
    keys = [(r["meter_id"], r["register"], r["read_at"]) for r in received]
    dropped = pull_items - len(pulled)
    check(len(keys) == len(set(keys)) and dropped == len(pushed) and dropped > 0,
          f"every reading once on meter.reading.received: the pull's {dropped} copies of the readings vendors 3 "
          "and 4 pushed in section 11 were dropped (KV per meter register, not the stream's 2-minute window)")
    month = json.loads(totals.messages[0].data)["month"] if totals.messages else "?"
    example = json.loads(forecasts.messages[0].data) if forecasts.messages else {}
    total = next((json.loads(m.data) for m in totals.messages
                  if json.loads(m.data)["meter_id"] == example.get("meter_id")
                  and json.loads(m.data)["register"] == example.get("register")), {})
    if example:
        print(f"       e.g. {example['meter_id']} {example['register']}: {month} {total.get('total')} "
              f"{example['unit']} -> forecast {example['value']} {example['unit']} until {example['read_at']}")
    check(ok and len(forecasts.messages) == len(registers),
          f"{len(totals.messages)} meter registers completed {month}; {len(forecasts.messages)} forecasts for the "
          "next month on meter.reading.forecast")

    london, today = ZoneInfo("Europe/London"), datetime.now(timezone.utc)
    end = datetime(today.year, today.month, 1, tzinfo=london)   # vendor 3's days are London days
    back = end - timedelta(days=85)
    start = datetime(back.year, back.month, 1, tzinfo=london)   # the first of the month three months back
    records = []
    for record in Vendor3Platform(meters=8).records(start, end, meters=range(7, 8)):  # a business meter ...
        record = json.loads(json.dumps(record))
        record["device"] = {"id": COLD_STORE_METER, "installation": COLD_STORE_SITE}
        record["reading"]["value"] = record["reading"]["value"] * 3 // 2  # ... of a cold store: half as much again
        records.append(record)
    before = len(candidates.messages)
    async with WebhookSender(hub.ingresses["meter-vendor3-push"].url, VENDOR3_SECRET) as sender:
        sent = [await sender.send(records[i:i + 40]) for i in range(0, len(records), 40)]
    print(f"       vendor 3 pushes {len(records)} daily readings of a cold store ({COLD_STORE_SITE}), "
          f"{start:%B} to {end - timedelta(days=1):%B}: {', '.join(sorted({str(d.status) for d in sent}))}")
    ok = await wait_until(lambda: len(candidates.messages) > before, [candidates.changed], deadline)
    ok = ok and await settled(js, RULE_FLOWS, deadline)
    new = [json.loads(m.data) for m in candidates.messages[before:]]
    if new:
        months = ", ".join(f"{m} {kwh:,.0f} kWh" for m, kwh in new[0]["months"].items())
        print(f"       crm.keycustomer.candidate: {new[0]['site_id']} (account {new[0]['account_id']}): {months}")
    check(ok and len(new) == 1 and new[0]["site_id"] == COLD_STORE_SITE,
          "one key-customer candidate, once: the cold store, above 5,000 kWh in three months (the CRM says "
          "it is a business); no other site raised one")

