"""The pending Belgian request: recorded before its mail leaves, moved by replies and bounces, and the
events the CRM and ops see.

The request is a `state` record keyed by token (bucket be_requests). Each request record (a CSW per
site, an ACC) moves SENT → ACCEPTED → COMPLETED, or to REJECTED / LINKED; a bounce of the request mail
moves SENT → UNDELIVERABLE. A reply that moves nothing (the same reply mailed twice) produces no event.
Events carry a stable `event_id` (token, status), so the same fact is one message even when two copies race.

A bounce is told to the CRM as the failure it already knows from every country (erp.contract.switch-failed,
erp.account.link-failed) with reason "mail to the Belgian ERP bounced: <diagnostic>" and the bounce's
details under `undeliverable`: the CRM shows it without new code, and be-contract-switch-track stops
waiting (status UNDELIVERABLE) instead of alerting 48 h later. `undeliverable_alerts` turns it into
ops.alert.be-erp-replies. A resend of the request (same token) starts over at SENT; a reply that still
comes after a bounce (the ERP got a copy after all) moves the request on as usual.
"""

from __future__ import annotations

from typing import Any

from engine.errors import PermanentError

NOTES_KEPT = 10


class UnmatchedReply(PermanentError):
    """A reply or bounce that belongs to no pending request (unknown token, or one long expired)."""


def open_request(ctx: dict[str, Any]) -> dict[str, Any]:
    """Record a request before its mail goes out; a redelivery keeps the record as it is, a resend after a
    bounce starts its records over at SENT."""
    message, state = ctx["message"], ctx["state"]
    if state is None:
        kind = "switch" if "contract_id" in message else "account"
        request = {k: v for k, v in message.items() if k not in ("mail", "sent")}
        state = {"token": message["token"], "kind": kind, "message_id": message["mail"]["message_id"],
                 "request": request, "records": {}, "outcome": None, "replies": 0}
        count = len(message.get("sites", [])) if kind == "switch" else 1
        for n in range(1, count + 1):
            state["records"][str(n)] = {"status": "SENT"}
    elif state.get("outcome") == "undeliverable":
        state = {**state, "outcome": None, "resent": state.get("resent", 0) + 1,
                 "records": {k: {"status": "SENT"} for k in state["records"]}}
    return {"state": state, "payload": message}


def request_status(ctx: dict[str, Any]) -> dict[str, Any]:
    """Read only: the message with its request's status (PENDING until the ERP finished all records)."""
    state, message = ctx["state"], ctx["message"]
    if state is None:
        raise UnmatchedReply(f"no pending Belgian request for token {message.get('erp_ref')!r}")
    status = {"switched": "COMPLETED", "switch-failed": "FAILED", "linked": "COMPLETED", "link-failed": "FAILED",
              "undeliverable": "UNDELIVERABLE"}.get(state["outcome"] or "", "PENDING")
    return {"state": state, "payload": {**message, "status": status}}


_MOVES = {"ACK": "ACCEPTED", "REJ": "REJECTED", "SWC": "COMPLETED", "LNK": "LINKED"}
_ORDER = {"SENT": 0, "UNDELIVERABLE": 0, "ACCEPTED": 1, "REJECTED": 2, "COMPLETED": 2, "LINKED": 2}


def apply_reply(ctx: dict[str, Any]) -> dict[str, Any]:
    """Move the request's records as the reply (or bounce) says; emit the events the CRM knows."""
    state, message = ctx["state"], ctx["message"]
    if message.get("kind") == "bounce":
        return _apply_bounce(state, message)
    if state is None:
        raise UnmatchedReply(f"reply {message['mail']['message_id'] or '(no Message-ID)'} carries token "
                             f"{message['token']!r}, which matches no pending request")
    state = {**state, "records": {k: dict(v) for k, v in state["records"].items()}, "replies": state["replies"] + 1}
    if state["outcome"] == "undeliverable":
        state["outcome"] = None  # the ERP answered after all: the request is alive again
    for rec in message["records"]:
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


def _apply_bounce(state: dict[str, Any] | None, message: dict[str, Any]) -> dict[str, Any]:
    bounce, token = message["bounce"], message["token"]
    if state is None:
        raise UnmatchedReply(f"bounce {message['mail']['message_id'] or '(no Message-ID)'} ({bounce['shape']}) is "
                             f"about request mail {bounce['original_message_id'] or token} (token {token!r}), which "
                             "matches no pending request: answered and expired, or not sent by this hub")
    note = {k: bounce[k] for k in ("action", "recipient", "status", "diagnostic", "at")}
    state = {**state, "records": {k: dict(v) for k, v in state["records"].items()},
             "deliveries": [*state.get("deliveries", []), note][-NOTES_KEPT:]}
    statuses = {r["status"] for r in state["records"].values()}
    if bounce["action"] != "failed" or statuses != {"SENT"}:
        return {"state": state, "payload": []}  # a delay warning, the same bounce again, or the ERP answered
    for record in state["records"].values():
        record["status"] = "UNDELIVERABLE"
    state["bounces"] = state.get("bounces", 0) + 1
    state["outcome"] = "undeliverable"
    reason = f"mail to the Belgian ERP bounced: {bounce['diagnostic']}"
    details = {k: bounce[k] for k in ("recipient", "status", "diagnostic", "reporting_mta", "at",
                                      "original_message_id", "shape")}
    event_id = f"{token}:UNDELIVERABLE:{state['bounces']}"
    if state["kind"] == "account":
        event = {"topic": "account.link-failed", "outcome": "link-failed", "event_id": event_id,
                 "account_id": state["request"]["account_id"], "country": "BE", "reason": reason}
    else:
        event = _switch_event(state, "FAILED", reason) | {"event_id": event_id}
    return {"state": state, "payload": [event | {"undeliverable": details, "token": token}]}


def undeliverable_alerts(events: Any) -> list[dict[str, Any]]:
    """ops.alert.be-erp-replies for every bounced request among the events just published (usually none),
    shaped as the engine's alerts (engine/alerts.py publish_alert): flow, alert, state, details, at."""
    alerts = []
    for event in events if isinstance(events, list) else []:
        details = event.get("undeliverable") if isinstance(event, dict) else None
        if not details:
            continue
        subject = event.get("contract_id") or event.get("account_id")
        alerts.append({"flow": "be-erp-replies", "alert": "request_undeliverable", "state": "firing",
                       "alert_id": f"{event['event_id']}:alert", "token": event.get("token"), "request": subject,
                       "told_crm": f"erp.{event['topic']}", **details,
                       "message": f"the request mail for {subject} to the Belgian ERP bounced ({details['status']}: "
                                  f"{details['diagnostic']}); the CRM got erp.{event['topic']}. Check the ERP's "
                                  "address (endpoint be_erp_mail), then resend the request"})
    return alerts


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
