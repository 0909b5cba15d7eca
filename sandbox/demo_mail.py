"""The demo's section on mail as the outside world really sends it (issue 13): a reply from Outlook that
carries the hub's own request file first, and a request mail that bounces.

    await section_mail(nc, js, outside, check)   # after demo_more.section_belgium; `outside` is its Outside

It changes the Belgian ERP simulator's behaviour and the mail sandbox for its own contracts only, and puts
both back before it returns, so later sections see the demo's normal Belgian ERP.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable

from engine.messages import event_headers
from sandbox.be_erp import BeErpBehaviour

Check = Callable[[bool, str], None]


def _contract(contract_id: str) -> dict[str, Any]:
    return {"contract_id": contract_id, "version": 1, "account_id": f"A-{contract_id}", "country": "BE",
            "tariff_code": "GREEN-12", "signed_on": "2026-12-01", "key_customer": False,
            "sites": [{"site_id": f"S-{contract_id}", "postcode": "4000", "city": "Liège", "meter_ids": ["EAN-D1"]}]}


async def _first(nc: Any, subject: str, contract_id: str | None, start: Any, timeout: float) -> dict[str, Any] | None:
    """Run `start`, then wait for the first message on `subject` (for `contract_id`, when given)."""
    got: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    async def seen(msg: Any) -> None:
        body = json.loads(msg.data)
        if not got.done() and (contract_id is None or contract_id in (body.get("contract_id"), body.get("request"))):
            got.set_result(body)

    sub = await nc.subscribe(subject, cb=seen)
    try:
        await start()
        return await asyncio.wait_for(got, timeout)
    except TimeoutError:
        return None
    finally:
        await sub.unsubscribe()


async def section_mail(nc: Any, js: Any, outside: Any, check: Check, timeout: float = 30.0) -> None:
    """`outside`: demo_more.Outside (its `mail` sandbox and `be_erp` simulator)."""
    print("\n  Mail as clients and mail servers really send it (Belgium)")
    assert outside.mail is not None and outside.be_erp is not None
    erp, mail, normal = outside.be_erp, outside.mail, outside.be_erp.behaviour

    async def sign(contract_id: str) -> None:
        await js.publish("crm.contract.signed", json.dumps(_contract(contract_id)).encode(),
                         headers=event_headers("/crm/salesforce", "crm.contract.signed"))

    erp.behaviour = BeErpBehaviour(completion_delay=1.0, client="outlook-reply-with-attachments")
    try:
        done = await _first(nc, "erp.contract.switched", "K-BE-MAIL-1", lambda: sign("K-BE-MAIL-1"), timeout)
    finally:
        erp.behaviour = normal
    print("       Outlook 'reply with attachments': our request file first, the ERP's reply file second")
    check(done is not None and done["status"] == "COMPLETED",
          "the ERP's file was found after our own request file (named and skipped by its type): switch completed")

    mail.bounce(erp.address)
    alerted = asyncio.Event()
    alerts: list[dict[str, Any]] = []

    async def alert(msg: Any) -> None:
        alerts.append(json.loads(msg.data))
        if alerts[-1].get("alert") == "request_undeliverable" and alerts[-1].get("request") == "K-BE-MAIL-2":
            alerted.set()

    alert_sub = await nc.subscribe("ops.alert.be-erp-replies", cb=alert)
    try:
        failed = await _first(nc, "erp.contract.switch-failed", "K-BE-MAIL-2", lambda: sign("K-BE-MAIL-2"), timeout)
        try:
            await asyncio.wait_for(alerted.wait(), timeout)
        except TimeoutError:
            pass
    finally:
        mail.deliver_again(erp.address)
        await alert_sub.unsubscribe()
    reason = (failed or {}).get("reason", "")
    print(f"       the ERP's mailbox refused the next request; the CRM was told: {reason[:90]}")
    check(failed is not None and reason.startswith("mail to the Belgian ERP bounced: 550 5.1.1"),
          "a bounced request mail failed the switch with the server's words (erp.contract.switch-failed)")
    check(alerted.is_set(), "ops were alerted on ops.alert.be-erp-replies: request_undeliverable, with recipient "
          "and diagnostic")
