"""Requests to Belgium's ERP as mails: the flat file, its token, and the smtp adapter's payload."""

from __future__ import annotations

import base64
import hashlib
from datetime import date
from typing import Any

from schemas.be_flatfile import (BeAccountChange, BeContractSwitch, BeFileHeader, BeFlatFile, attachment_name,
                                 encode, subject_tag)
from schemas.be_flatfile.envelope import ATTACHMENT_CHARSET, ATTACHMENT_CONTENT_TYPE

MAIL_DOMAIN = "hub.plu.example"
SENDER = "PLU-HUB"


def token_for(kind: str, key: str) -> str:
    """The correlation token of a request: derived from its business key, so a resend is recognisable."""
    return f"{kind}-{hashlib.blake2b(key.encode(), digest_size=8).hexdigest().upper()}"


def message_id_for(token: str) -> str:
    """The request mail's Message-ID; a reply's In-Reply-To names it, so it also carries the token."""
    return f"<{token}@{MAIL_DOMAIN}>"


def _mail(token: str, file: BeFlatFile, subject: str, text: str, to: str | None) -> dict[str, Any]:
    data = encode(file)
    mail: dict[str, Any] = {
        "subject": f"{subject} {subject_tag(token)}",
        "text": text,
        "message_id": message_id_for(token),
        "headers": {"X-PLU-Token": token},
        "attachments": [{"filename": attachment_name("REQ", token),
                         "content_type": f"{ATTACHMENT_CONTENT_TYPE}; charset={ATTACHMENT_CHARSET}",
                         "data_b64": base64.b64encode(data).decode("ascii")}],
    }
    if to:  # else the smtp endpoint's `to` (the ERP's mailbox is the environment's, not the payload's)
        mail["to"] = [to]
    return mail


def switch_mail(req: dict[str, Any]) -> dict[str, Any]:
    """A tariff switch request (transforms/contracts.to_switch_request) as a REQ file: one CSW record
    per site, the meters of the contract spread over them as the CRM gave them."""
    token = token_for("CSW", req["request_key"])
    meters = list(req.get("meter_ids", []))
    records = [BeContractSwitch(contract_id=req["contract_id"], contract_version=req.get("version", 1),
                                account_id=req["account_id"], tariff_code=req["tariff_code"],
                                signed_on=date.fromisoformat(str(req["effective_from"])), site_id=site["site_id"],
                                postcode=site["postcode"], city=site["city"],
                                meter_ids=meters[i * 3:(i + 1) * 3] if len(req["sites"]) > 1 else meters[:3],
                                key_customer=bool(req.get("key_customer")))
               for i, site in enumerate(req["sites"])]
    file = BeFlatFile(header=BeFileHeader(file_type="REQ", correlation_token=token, sender=SENDER,
                                          created=_noon(req["effective_from"])), records=records)
    mail = _mail(token, file, f"Tariefwijziging / changement de tarif {req['contract_id']}",
                 "Demande de changement de tarif en pièce jointe. / Tariefwijziging in bijlage.\n", req.get("to"))
    return {**req, "token": token, "mail": mail}


def account_mail(acc: dict[str, Any]) -> dict[str, Any]:
    """An account change (schemas/crm.py AccountChanged) as a REQ file with one ACC record; the token
    covers the content, so a real change is a new request and a redelivery is the same one."""
    content = "|".join(str(acc.get(k) or "") for k in ("account_id", "kind", "name", "street", "postcode", "city",
                                                        "email", "phone"))
    token = token_for("ACC", content)
    record = BeAccountChange(account_id=acc["account_id"], kind=acc["kind"], name=acc["name"], street=acc["street"],
                             postcode=acc["postcode"], city=acc["city"], email=acc.get("email"),
                             phone=acc.get("phone"))
    file = BeFlatFile(header=BeFileHeader(file_type="REQ", correlation_token=token, sender=SENDER,
                                          created=_noon("2000-01-01")), records=[record])
    mail = _mail(token, file, f"Klantgegevens / données client {acc['account_id']}",
                 "Mise à jour client en pièce jointe. / Klantgegevens in bijlage.\n", acc.get("to"))
    return {**acc, "token": token, "mail": mail}


def switch_requested(p: dict[str, Any]) -> dict[str, Any]:
    """What the SOAP countries publish once the ERP has the request: the token is the reference until
    the ERP gives its own."""
    out = {k: v for k, v in p.items() if k not in ("mail", "sent")}
    return {**out, "erp_ref": p["token"], "status": "PENDING", "reason": None}


def _noon(day: Any) -> Any:
    """A fixed `created` stamp (transforms have no clock): the file's day, so a resend is byte-identical."""
    from datetime import datetime, timezone

    d = date.fromisoformat(str(day)[:10])
    return datetime(d.year, d.month, d.day, 12, tzinfo=timezone.utc)
