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
from transforms.be_erp import (NotBelgianReply, UnmatchedReply, account_mail, apply_reply, open_request, parse_reply, request_status,
                               switch_mail, switch_requested)
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
