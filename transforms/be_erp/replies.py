"""Replies from Belgium's ERP: parse the mail, match it to its pending request, decide the events.

The pending request is a `state` record keyed by token (bucket be_requests). Each request record
(a CSW per site, an ACC) moves SENT → ACCEPTED → COMPLETED, or to REJECTED / LINKED; a reply that
moves nothing (the same reply mailed twice) produces no event. Events carry a stable `event_id`
(token, record, status), so the same fact is one message even when two copies race.
"""

from __future__ import annotations

import email
import email.policy
import re
from email.message import Message
from typing import Any

from engine.errors import PermanentError, UnparseablePayload
from schemas.be_flatfile import decode, token_in_subject

from transforms.be_erp.mail import MAIL_DOMAIN

_MSGID_TOKEN = re.compile(r"<([A-Za-z0-9._-]+)@" + re.escape(MAIL_DOMAIN) + r">")


class UnmatchedReply(PermanentError):
    """A reply that belongs to no pending request (unknown token, or one long expired)."""


# --- parsing -------------------------------------------------------------------------------------


def _flat_file(msg: Message) -> bytes | None:
    """The attached flat file wherever the client nested it (base64 or quoted-printable)."""
    for part in msg.walk():
        if part.is_multipart():
            continue
        name = part.get_filename() or ""
        if part.get_content_disposition() == "attachment" or name.upper().endswith(".TXT"):
            data = part.get_payload(decode=True)
            if data:
                return data
    return None


def parse_reply(raw: Any) -> dict[str, Any]:
    """Raw MIME bytes into {token, mail, file_type, records}; no attachment or a bad file is permanent."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    if not isinstance(raw, (bytes, bytearray)):
        raise UnparseablePayload(f"expected a raw mail, got {type(raw).__name__}")
    msg = email.message_from_bytes(bytes(raw), policy=email.policy.compat32)
    mail = {"message_id": (msg.get("Message-ID") or "").strip(), "from": msg.get("From", ""),
            "subject": str(msg.get("Subject", "")), "in_reply_to": (msg.get("In-Reply-To") or "").strip(),
            "references": " ".join(str(msg.get("References", "")).split())}
    data = _flat_file(msg)
    if data is None:
        raise UnparseablePayload(f"mail {mail['message_id'] or '(no Message-ID)'} from {mail['from']!r} has no "
                                 "flat-file attachment")
    file = decode(data)   # FlatFileError names the line and field
    threaded = _MSGID_TOKEN.findall(f"{mail['in_reply_to']} {mail['references']}")
    candidates = [file.header.correlation_token, token_in_subject(mail["subject"]), *threaded]
    token = next(t for t in candidates if t)
    return {"token": token, "mail": mail, "file_type": file.header.file_type,
            "records": [r.model_dump(mode="json") for r in file.records]}


# --- the pending request -------------------------------------------------------------------------


def open_request(ctx: dict[str, Any]) -> dict[str, Any]:
    """Record a request before its mail goes out; a redelivery finds it and keeps it as it is."""
    message, state = ctx["message"], ctx["state"]
    if state is None:
        kind = "switch" if "contract_id" in message else "account"
        request = {k: v for k, v in message.items() if k not in ("mail", "sent")}
        state = {"token": message["token"], "kind": kind, "message_id": message["mail"]["message_id"],
                 "request": request, "records": {}, "outcome": None, "replies": 0}
        count = len(message.get("sites", [])) if kind == "switch" else 1
        for n in range(1, count + 1):
            state["records"][str(n)] = {"status": "SENT"}
    return {"state": state, "payload": message}


def request_status(ctx: dict[str, Any]) -> dict[str, Any]:
    """Read only: the message with its request's status (PENDING until the ERP finished all records)."""
    state, message = ctx["state"], ctx["message"]
    if state is None:
        raise UnmatchedReply(f"no pending Belgian request for token {message.get('erp_ref')!r}")
    status = {"switched": "COMPLETED", "switch-failed": "FAILED", "linked": "COMPLETED",
              "link-failed": "FAILED"}.get(state["outcome"] or "", "PENDING")
    return {"state": state, "payload": {**message, "status": status}}


_MOVES = {"ACK": "ACCEPTED", "REJ": "REJECTED", "SWC": "COMPLETED", "LNK": "LINKED"}
_ORDER = {"SENT": 0, "ACCEPTED": 1, "REJECTED": 2, "COMPLETED": 2, "LINKED": 2}


def apply_reply(ctx: dict[str, Any]) -> dict[str, Any]:
    """Move the request's records as the reply says; emit the events the CRM knows from SOAP countries."""
    state, reply = ctx["state"], ctx["message"]
    if state is None:
        raise UnmatchedReply(f"reply {reply['mail']['message_id'] or '(no Message-ID)'} carries token "
                             f"{reply['token']!r}, which matches no pending request")
    state = {**state, "records": {k: dict(v) for k, v in state["records"].items()}, "replies": state["replies"] + 1}
    for rec in reply["records"]:
        seq = str(rec["ref_seq"])
        if seq not in state["records"]:
            raise UnmatchedReply(f"reply record answers request record {seq}; the request had "
                                 f"{len(state['records'])}")
        # an SWC completes the contract's switch: every site record of the request, not only `ref_seq`
        targets = state["records"].values() if rec["record_type"] == "SWC" else [state["records"][seq]]
        new = _MOVES[rec["record_type"]]
        for current in targets:
            if _ORDER[new] > _ORDER[current["status"]]:
                current.update(status=new, **{k: rec[k] for k in ("erp_ref", "reason_code", "reason_text",
                                                                   "erp_key") if rec.get(k) is not None})
    events = _events(state)
    if events:
        state["outcome"] = events[-1]["outcome"]
    return {"state": state, "payload": events}


def _events(state: dict[str, Any]) -> list[dict[str, Any]]:
    if state["outcome"] is not None:
        return []  # told already: a late duplicate changes nothing
    records, request, token = state["records"].values(), state["request"], state["token"]
    if state["kind"] == "account":
        (rec,) = records
        if rec["status"] == "LINKED":
            return [{"topic": "account.linked", "outcome": "linked", "event_id": f"{token}:LINKED",
                     "account_id": request["account_id"], "country": "BE", "erp_account_key": rec["erp_key"],
                     "created": None}]
        if rec["status"] == "REJECTED":
            return [{"topic": "account.link-failed", "outcome": "link-failed", "event_id": f"{token}:REJECTED",
                     "account_id": request["account_id"], "country": "BE",
                     "reason": f"{rec['reason_code']}: {rec['reason_text']}"}]
        return []
    rejected = [r for r in records if r["status"] == "REJECTED"]
    if rejected:
        return [_switch_event(state, "FAILED", "; ".join(f"{r['reason_code']}: {r['reason_text']}" for r in rejected))]
    if all(r["status"] == "COMPLETED" for r in records):
        return [_switch_event(state, "COMPLETED", None)]
    return []


def _switch_event(state: dict[str, Any], status: str, reason: str | None) -> dict[str, Any]:
    """The same record transforms/contracts.switch_outcome gives for the SOAP countries."""
    req = state["request"]
    refs = sorted({r.get("erp_ref") for r in state["records"].values() if r.get("erp_ref")})
    outcome = "switched" if status == "COMPLETED" else "switch-failed"
    return {"topic": f"contract.{outcome}", "outcome": outcome, "event_id": f"{state['token']}:{status}",
            "contract_id": req["contract_id"], "version": req.get("version", 1), "account_id": req["account_id"],
            "country": "BE", "tariff_code": req["tariff_code"], "effective_from": req["effective_from"],
            "erp_ref": ",".join(refs) or state["token"], "status": status, "reason": reason,
            "sites": req.get("sites", []), "key_customer": req.get("key_customer", False)}
