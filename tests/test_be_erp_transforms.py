"""The Belgian ERP's pure transforms: requests as mails with flat files, replies matched and turned into
the events the SOAP countries produce, duplicates producing nothing."""

from __future__ import annotations

import base64
import email
import email.policy

import pytest

from sandbox.mail.compose import client_reply, system_mail
from schemas.be_flatfile import (BeAccepted, BeAccountLinked, BeFileHeader, BeFlatFile, BeRejected, BeSwitchCompleted,
                                 FlatFileError, attachment_name, decode, encode, subject_tag)
from transforms.be_erp import (NotBelgianReply, UnmatchedReply, account_mail, apply_reply, open_request, parse_reply,
                               request_status, switch_mail, switch_requested, undeliverable_alerts)
from transforms.contracts import to_switch_request

CONTRACT = {"contract_id": "K-BE-1", "version": 2, "account_id": "A-BE-1", "country": "BE", "tariff_code": "GREEN-12",
            "signed_on": "2026-12-01", "key_customer": True,
            "sites": [{"site_id": "S1", "postcode": "4000", "city": "Liège", "meter_ids": ["EAN1"]},
                      {"site_id": "S2", "postcode": "1030", "city": "Schaerbeek", "meter_ids": ["EAN2"]}]}
ACCOUNT = {"account_id": "A-BE-9", "country": "BE", "name": "Jürgen Müller", "kind": "household",
           "street": "Rue Royale 1", "postcode": "1030", "city": "Schaerbeek", "email": None, "phone": None}


def request_mail(payload: dict) -> tuple[dict, email.message.Message]:
    """The request as the smtp adapter would send it, parsed back as the ERP receives it."""
    mail = payload["mail"]
    data = base64.b64decode(mail["attachments"][0]["data_b64"])
    msg = system_mail("hub@plu.example", "erp-be@plu.example", mail["subject"], mail["text"], data,
                      mail["attachments"][0]["filename"])
    msg.replace_header("Message-ID", mail["message_id"])
    return mail, msg


def reply_bytes(request: email.message.Message, token: str, *records, client: bool = False) -> bytes:
    data = encode(BeFlatFile(header=BeFileHeader(file_type="RSP", correlation_token=token, sender="ERP-BE"),
                             records=list(records)))
    if client:
        msg = client_reply(request, "erp-be@plu.example", f"RE: {request['Subject']}", "Voici.", data,
                           attachment_name("RSP", token))
    else:
        msg = system_mail("erp-be@plu.example", "hub@plu.example", f"antwoord {subject_tag(token)}", "auto\n", data,
                          attachment_name("RSP", token), in_reply_to=request["Message-ID"])
    return msg.as_bytes(policy=email.policy.SMTP)


def opened(payload: dict) -> dict:
    return open_request({"state": None, "message": payload})["state"]


def test_a_switch_becomes_one_csw_record_per_site_in_latin1_with_a_stable_token():
    """Every site is a record, names survive in ISO-8859-1, and the same contract version always gets the
    same token and Message-ID (a resend is recognisable)."""
    payload = switch_mail(to_switch_request(CONTRACT))
    mail, _ = request_mail(payload)
    file = decode(base64.b64decode(mail["attachments"][0]["data_b64"]))
    assert [r.site_id for r in file.records] == ["S1", "S2"] and file.records[0].city == "Liège"
    assert file.header.correlation_token == payload["token"] and payload["token"] in mail["subject"]
    again = switch_mail(to_switch_request(CONTRACT))
    assert again["mail"] == mail
    other = switch_mail(to_switch_request({**CONTRACT, "version": 3}))
    assert other["token"] != payload["token"]


def test_accepted_then_completed_replies_emit_one_switched_event_and_duplicates_emit_nothing():
    """ACK for every site moves nothing the CRM sees; SWC for every site emits erp.contract.switched once,
    shaped as the SOAP countries' events; the same reply again emits nothing."""
    payload = switch_mail(to_switch_request(CONTRACT))
    token = payload["token"]
    state = opened(payload)
    _, request = request_mail(payload)
    ack = parse_reply(reply_bytes(request, token, BeAccepted(ref_seq=1, ref_type="CSW", ref_key="K-BE-1", erp_ref="BE77"),
                                  BeAccepted(ref_seq=2, ref_type="CSW", ref_key="K-BE-1", erp_ref="BE78")))
    step = apply_reply({"state": state, "message": ack})
    assert step["payload"] == [] and {r["status"] for r in step["state"]["records"].values()} == {"ACCEPTED"}
    done = parse_reply(reply_bytes(request, token, BeSwitchCompleted(  # one SWC completes the contract
        ref_seq=1, contract_id="K-BE-1", contract_version=2, tariff_code="GREEN-12", effective_on="2026-12-01")))
    step = apply_reply({"state": step["state"], "message": done})
    [event] = step["payload"]
    assert event["topic"] == "contract.switched" and event["status"] == "COMPLETED" and event["erp_ref"] == "BE77,BE78"
    assert {k for k in ("contract_id", "account_id", "country", "tariff_code", "erp_ref", "status", "reason",
                        "sites", "key_customer", "outcome")} <= set(event)
    assert apply_reply({"state": step["state"], "message": done})["payload"] == []
    assert request_status({"state": step["state"], "message": switch_requested(payload)})["payload"]["status"] == \
        "COMPLETED"


def test_a_rejected_record_emits_switch_failed_with_the_erps_reason():
    """One site refused fails the switch with the ERP's code and text."""
    payload = switch_mail(to_switch_request(CONTRACT))
    _, request = request_mail(payload)
    reply = parse_reply(reply_bytes(request, payload["token"], BeRejected(
        ref_seq=2, ref_type="CSW", ref_key="K-BE-1", reason_code="T001", reason_text="Tarif inconnu / onbekend tarief")))
    [event] = apply_reply({"state": opened(payload), "message": reply})["payload"]
    assert event["topic"] == "contract.switch-failed" and event["reason"] == "T001: Tarif inconnu / onbekend tarief"


def test_a_mail_client_reply_without_threading_is_matched_by_its_token():
    """Quoted text, a quoted-printable attachment nested in multipart/alternative and no In-Reply-To: the
    token in the file header still finds the request."""
    payload = account_mail(ACCOUNT)
    _, request = request_mail(payload)
    reply = parse_reply(reply_bytes(request, payload["token"], BeAccountLinked(ref_seq=1, account_id="A-BE-9",
                                                                               erp_key="BE00012345"), client=True))
    assert reply["token"] == payload["token"] and reply["mail"]["in_reply_to"] == ""
    [event] = apply_reply({"state": opened(payload), "message": reply})["payload"]
    assert event == {"topic": "account.linked", "outcome": "linked", "event_id": f"{payload['token']}:LINKED",
                     "account_id": "A-BE-9", "country": "BE", "erp_account_key": "BE00012345", "created": None}


def test_a_reply_to_no_pending_request_and_a_mail_without_a_file_are_refused_for_quarantine():
    """Unknown token → UnmatchedReply; no file → NotBelgianReply (an UnparseablePayload); a broken file →
    FlatFileError naming the mail part."""
    payload = switch_mail(to_switch_request(CONTRACT))
    _, request = request_mail(payload)
    reply = parse_reply(reply_bytes(request, "CSW-UNKNOWN", BeAccepted(ref_seq=1, ref_type="CSW", ref_key="K")))
    with pytest.raises(UnmatchedReply, match="CSW-UNKNOWN"):
        apply_reply({"state": None, "message": reply})
    bare = email.message_from_string("From: x@y\nSubject: hello\nMessage-ID: <a@b>\n\nno file here\n")
    with pytest.raises(NotBelgianReply, match="has no flat file: expected a part whose decoded bytes start with 'HDR'"):
        parse_reply(bare.as_bytes())
    broken = system_mail("x@y", "h@p", "re", "t", b"HDR garbage\r\n", "PLU_RSP_x.txt")
    with pytest.raises(FlatFileError, match=r"part 2 \(text/plain, attachment 'PLU_RSP_x.txt'\): line 1"):
        parse_reply(broken.as_bytes())


# --- bounces of the request mail -----------------------------------------------------------------


def bounced(name: str = "postfix-dsn-full") -> dict:
    from tests.mail_corpus.build import load

    return parse_reply(load(name))


def corpus_request() -> dict:
    from tests.mail_corpus.build import request

    return request()[0]


def test_a_bounce_marks_the_request_undeliverable_tells_the_crm_and_raises_an_alert():
    """SENT → UNDELIVERABLE; the CRM gets erp.contract.switch-failed with "mail to the Belgian ERP bounced: ..."
    and the bounce's details; ops get ops.alert.be-erp-replies naming the request, recipient and diagnostic;
    the tracking flow sees status UNDELIVERABLE and stops waiting."""
    payload = corpus_request()
    step = apply_reply({"state": opened(payload), "message": bounced()})
    assert {r["status"] for r in step["state"]["records"].values()} == {"UNDELIVERABLE"}
    [event] = step["payload"]
    assert event["topic"] == "contract.switch-failed" and event["status"] == "FAILED"
    assert event["reason"].startswith("mail to the Belgian ERP bounced: 550 5.1.1 <erp-be@plu.example>")
    assert event["undeliverable"]["recipient"] == "erp-be@plu.example" and event["contract_id"] == "K-BE-CORPUS"
    [alert] = undeliverable_alerts(step["payload"])
    assert alert["flow"] == "be-erp-replies" and alert["alert"] == "request_undeliverable" and alert["state"] == "firing"
    assert alert["request"] == "K-BE-CORPUS" and alert["status"] == "5.1.1" and "resend" in alert["message"]
    status = request_status({"state": step["state"], "message": switch_requested(payload)})["payload"]["status"]
    assert status == "UNDELIVERABLE"
    assert undeliverable_alerts([]) == [] and undeliverable_alerts(None) == []


def test_the_same_bounce_twice_or_a_delay_warning_tells_nobody_anything():
    """A second copy of the bounce changes nothing; a delay warning (Action: delayed) is noted on the request
    but it stays SENT and nothing is published."""
    payload = corpus_request()
    first = apply_reply({"state": opened(payload), "message": bounced()})
    again = apply_reply({"state": first["state"], "message": bounced("exchange-online-ndr")})
    assert again["payload"] == [] and again["state"]["bounces"] == 1
    delayed = apply_reply({"state": opened(payload), "message": bounced("postfix-delay-warning")})
    assert delayed["payload"] == [] and {r["status"] for r in delayed["state"]["records"].values()} == {"SENT"}
    assert delayed["state"]["deliveries"][0]["action"] == "delayed"


def test_a_resend_after_a_bounce_starts_over_and_a_second_bounce_is_a_new_event():
    """Ops fix the address and resend (same token): the records are SENT again; another bounce is told again
    under a new event id, so JetStream does not drop it as a duplicate."""
    payload = corpus_request()
    first = apply_reply({"state": opened(payload), "message": bounced()})
    resent = open_request({"state": first["state"], "message": payload})["state"]
    assert {r["status"] for r in resent["records"].values()} == {"SENT"} and resent["outcome"] is None
    second = apply_reply({"state": resent, "message": bounced("gmail-dsn")})
    assert [e["event_id"] for e in first["payload"] + second["payload"]] == [
        f"{payload['token']}:UNDELIVERABLE:1", f"{payload['token']}:UNDELIVERABLE:2"]


def test_a_reply_after_a_bounce_still_completes_the_switch():
    """The ERP got a copy after all (a second route, a resend): its ACK and SWC move the request on and the
    CRM hears erp.contract.switched."""
    from tests.mail_corpus.build import load

    payload = corpus_request()
    state = apply_reply({"state": opened(payload), "message": bounced()})["state"]
    state = apply_reply({"state": state, "message": parse_reply(load("outlook-web"))})["state"]
    [event] = apply_reply({"state": state, "message": parse_reply(load("completion-later-outlook"))})["payload"]
    assert event["topic"] == "contract.switched"


def test_a_bounce_after_the_erp_answered_changes_nothing():
    """A copy of the request bounced but the ERP has already accepted it: the request stands."""
    from tests.mail_corpus.build import load

    payload = corpus_request()
    state = apply_reply({"state": opened(payload), "message": parse_reply(load("outlook-web"))})["state"]
    step = apply_reply({"state": state, "message": bounced()})
    assert step["payload"] == [] and {r["status"] for r in step["state"]["records"].values()} == {"ACCEPTED"}


def test_a_bounce_of_an_account_change_is_told_as_link_failed():
    """An account change whose mail bounced ends as erp.account.link-failed with the bounce as the reason."""
    from sandbox.mail.bounces import qmail_bounce

    payload = account_mail(ACCOUNT)
    _, request = request_mail(payload)
    raw = qmail_bounce(request.as_bytes(policy=email.policy.SMTP), "erp-be@plu.example", "hub@plu.example")
    [event] = apply_reply({"state": opened(payload), "message": parse_reply(raw)})["payload"]
    assert event["topic"] == "account.link-failed" and "no mailbox here" in event["reason"]


def test_a_bounce_for_a_token_with_no_pending_request_says_so():
    """The original was ours but its request record is gone (expired): a DLQ record that says exactly that."""
    with pytest.raises(UnmatchedReply, match="bounce .* is about request mail <CSW-C66BAB223C2C4ECF@hub.plu.example> "
                                             ".*matches no pending request"):
        apply_reply({"state": None, "message": bounced()})
