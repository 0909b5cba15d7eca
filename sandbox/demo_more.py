"""The Belgian and Power Sales parts of `runner.py demo`: a real SMTP/IMAP mail sandbox with the
Belgian ERP simulator, and the Power Sales simulator behind the website's `tariff.quote`.

Like sandbox/demo_erp.py, each section plays the outside world, waits for what a user would see and
reports checks through the demo's `check` callback.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

from sandbox.be_erp import BeErpBehaviour, BelgianErpSimulator
from sandbox.mail import MailSandbox
from sandbox.powersales import PowerSalesSimulator

HUB_MAIL, ERP_MAIL, MAIL_PASSWORD = "hub@plu.example", "erp-be@plu.example", "demo-mail-secret"
Check = Callable[[bool, str], None]
LOOKUP = {"households": 3, "consumption": 4200, "postcode": "75001", "country": "FR", "gas": True}


class Outside:
    """The systems this module starts: the mail servers, the Belgian ERP, Power Sales."""

    def __init__(self) -> None:
        self.mail: MailSandbox | None = None
        self.be_erp: BelgianErpSimulator | None = None
        self.powersales: PowerSalesSimulator | None = None

    async def start(self) -> "Outside":
        self.mail = await MailSandbox(users={HUB_MAIL: MAIL_PASSWORD, ERP_MAIL: MAIL_PASSWORD}).start()
        env = {"SMTP_HOST": self.mail.host, "SMTP_PORT": str(self.mail.smtp_port), "IMAP_HOST": self.mail.host,
               "IMAP_PORT": str(self.mail.imap_port), "MAIL_CA_BUNDLE": str(self.mail.ca_file),
               "HUB_MAIL_USER": HUB_MAIL, "HUB_MAIL_PASSWORD": MAIL_PASSWORD, "BE_ERP_ADDRESS": ERP_MAIL}
        os.environ.update(env)
        self.be_erp = await BelgianErpSimulator(self.mail, ERP_MAIL, MAIL_PASSWORD,
                                                BeErpBehaviour(completion_delay=1.0), idle_seconds=5).start()
        self.powersales = await PowerSalesSimulator(latency=0.3, capacity=4).start()
        os.environ["POWERSALES_URL"] = self.powersales.url
        return self

    def describe(self) -> str:
        assert self.mail and self.powersales
        return (f"  sandbox mail (SMTP :{self.mail.smtp_port} STARTTLS, IMAPS :{self.mail.imap_port}) with the "
                f"Belgian ERP reading {ERP_MAIL}\n  sandbox Power Sales at {self.powersales.url} (0.3 s per answer)")

    async def stop(self) -> None:
        for part in (self.be_erp, self.powersales, self.mail):
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
    print("\n  9. The public website asks for tariffs; Power Sales is slow, then goes away")
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
