"""The corpus of mails the hub's Belgian mailbox meets: replies from the major clients, what gateways do to
them, and bounces of the hub's own request mails. Every shape is written by sandbox/mail/clients.py,
gateways.py or bounces.py, whose docstrings name the documented behaviour; this file gives each one its
request, its file, a comment and what the hub must make of it, and writes the .eml files beside it.

    .venv/bin/python -m tests.mail_corpus.build      # rewrite the .eml files (tests check they are current)

An .eml file starts with `#` comment lines (the shape and its source), a `# ---` line, then the raw mail.
"""

from __future__ import annotations

import base64
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.smtp.compose import build_message, parse_payload, wire_bytes
from sandbox.mail import bounces, clients, gateways
from sandbox.mail.clients import ReplyTo
from schemas.be_flatfile import BeAccepted, BeFileHeader, BeFlatFile, BeSwitchCompleted, attachment_name, encode
from transforms.be_erp import switch_mail
from transforms.contracts import to_switch_request

HERE = Path(__file__).parent
HUB, ERP = "hub@plu.example", "erp-be@plu.example"
PERSON = "Marie Dupont <m.dupont@erp.example.be>"
CONTRACT = {"contract_id": "K-BE-CORPUS", "version": 1, "account_id": "A-BE-CORPUS", "country": "BE",
            "tariff_code": "GREEN-12", "signed_on": "2026-12-01", "key_customer": False,
            "sites": [{"site_id": "S-CORPUS-1", "postcode": "4000", "city": "Liège", "meter_ids": ["EAN1"]},
                      {"site_id": "S-CORPUS-2", "postcode": "1030", "city": "Schaerbeek", "meter_ids": ["EAN2"]}]}
SEPARATOR = b"# ---\n"


@dataclass(frozen=True)
class Shape:
    """One corpus mail and what the hub must make of it."""

    name: str
    comment: str
    raw: bytes
    expect: str                           # "reply", "bounce" or the error class the hub raises
    says: tuple[str, ...] = ()            # fragments the error (or the bounce's diagnostic) must contain
    extra: dict[str, Any] = field(default_factory=dict)


def request() -> tuple[dict[str, Any], bytes]:
    """The hub's request mail for CONTRACT, as the smtp adapter puts it on the wire (boundary and date fixed)."""
    payload = switch_mail(to_switch_request(CONTRACT))
    mail = parse_payload("be_erp_mail", {**payload["mail"], "to": [ERP]})
    raw = wire_bytes(build_message(mail, HUB, payload["mail"]["message_id"]))
    raw = re.sub(rb"={15}\d+==", b"===============0000000000000000001==", raw)
    raw = re.sub(rb"^Date: .*$", b"Date: Tue, 01 Dec 2026 09:02:11 +0000\r", raw, count=1, flags=re.MULTILINE)
    return payload, raw


def reply_file(token: str) -> bytes:
    return encode(BeFlatFile(header=BeFileHeader(file_type="RSP", correlation_token=token, sender="ERP-BE",
                                                 created="2026-12-01T10:10:00Z"),
                             records=[BeAccepted(ref_seq=1, ref_type="CSW", ref_key="K-BE-CORPUS", erp_ref="SW0000000101"),
                                      BeAccepted(ref_seq=2, ref_type="CSW", ref_key="K-BE-CORPUS", erp_ref="SW0000000102")]))


def completion_file(token: str) -> bytes:
    return encode(BeFlatFile(header=BeFileHeader(file_type="RSP", correlation_token=token, sender="ERP-BE",
                                                 created="2026-12-03T02:00:00Z"),
                             records=[BeSwitchCompleted(ref_seq=1, contract_id="K-BE-CORPUS", tariff_code="GREEN-12",
                                                        effective_on="2026-12-03", erp_ref="SW0000000101")]))


def shapes() -> list[Shape]:
    payload, req_raw = request()
    token = payload["token"]
    req_file = base64.b64decode(payload["mail"]["attachments"][0]["data_b64"])
    r = ReplyTo(request_id=payload["mail"]["message_id"], request_subject=payload["mail"]["subject"], hub=HUB,
                erp=PERSON, reply_file=reply_file(token), reply_name=attachment_name("RSP", token),
                request_file=req_file, request_name=attachment_name("REQ", token))
    system_reply = clients.whole_message_attachment(ReplyTo(**{**r.__dict__, "erp": ERP, "seed": "system"}))
    done = ReplyTo(**{**r.__dict__, "reply_file": completion_file(token), "seed": "completion"})
    odd = b"\xef\xbb\xbf" + r.reply_file  # saved by Notepad as "UTF-8 with BOM"
    stranger = (b"From: hub@plu.example\r\nTo: erp-be@plu.example\r\nSubject: Weekly meter report\r\n"
                b"Date: Mon, 30 Nov 2026 18:00:00 +0000\r\nMessage-ID: <20261130.4711@crm.plu.example>\r\n"
                b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nSee the portal.\r\n")
    C = clients
    return [
        Shape("outlook-logo-first", C.outlook_logo_first.__doc__, C.outlook_logo_first(r), "reply"),
        Shape("outlook-reply-with-attachments", C.outlook_reply_with_attachments.__doc__,
              C.outlook_reply_with_attachments(r), "reply", extra={"skipped": 1}),
        Shape("outlook-request-only", C.outlook_request_only.__doc__, C.outlook_request_only(r), "NotBelgianReply",
              ("only our own request", "REQ file from PLU-HUB", token, "no reply file")),
        Shape("outlook-tnef", C.outlook_tnef.__doc__, C.outlook_tnef(r), "reply"),
        Shape("outlook-tnef-rich-text-only", "Outlook TNEF winmail.dat holding the Rich Text body and no file.",
              C.outlook_tnef(r, with_file=False), "NotBelgianReply",
              ("Outlook sent the file as TNEF", "winmail.dat", "ask the sender to send plain attachments")),
        Shape("outlook-2047-name", C.outlook_2047_name.__doc__, C.outlook_2047_name(r), "reply",
              extra={"name": "Réponse ERP.txt"}),
        Shape("outlook-web", C.outlook_web.__doc__, C.outlook_web(r), "reply"),
        Shape("apple-mail-inline", C.apple_mail_inline.__doc__, C.apple_mail_inline(r), "reply",
              extra={"name": "réponse ERP.txt"}),
        Shape("apple-mail-2231", C.apple_mail_2231.__doc__, C.apple_mail_2231(r), "reply",
              extra={"name": "réponse ERP.txt"}),
        Shape("thunderbird", C.thunderbird.__doc__, C.thunderbird(r), "reply",
              extra={"name": "réponse de l'ERP belge au changement de tarif.txt"}),
        Shape("thunderbird-forward-attached", C.thunderbird_forward_attached.__doc__,
              C.thunderbird_forward_attached(r, system_reply), "reply"),
        Shape("gmail-web", C.gmail_web.__doc__, C.gmail_web(r), "reply", extra={"name": "réponse_ERP.txt"}),
        Shape("gmail-app-octet-stream", C.gmail_app_octet_stream.__doc__, C.gmail_app_octet_stream(r), "reply"),
        Shape("script-octet-stream", C.script_octet_stream.__doc__, C.script_octet_stream(r), "reply"),
        Shape("whole-message-attachment", C.whole_message_attachment.__doc__, system_reply, "reply"),
        Shape("eight-bit-inline", C.eight_bit_inline.__doc__, C.eight_bit_inline(r), "reply"),
        Shape("relay-8bit-downgrade", gateways.downgrade_8bit.__doc__, gateways.downgrade_8bit(C.eight_bit_inline(r)),
              "reply"),
        Shape("mailman-wrap", gateways.mailman_wrap.__doc__, gateways.mailman_wrap(C.gmail_web(r)), "reply"),
        Shape("mailman-footer", gateways.mailman_footer.__doc__, gateways.mailman_footer(C.thunderbird(r)), "reply"),
        Shape("mimedefang-disclaimer", gateways.mimedefang_disclaimer.__doc__,
              gateways.mimedefang_disclaimer(system_reply), "reply"),
        Shape("completion-later-outlook", "Outlook desktop reply carrying the later SWC file (switch completed).",
              C.outlook_web(done), "reply", extra={"records": ["SWC"]}),
        Shape("notepad-utf8-bom", "A reply file saved by Notepad as UTF-8 with a byte-order mark, sent by Outlook.",
              C.outlook_web(ReplyTo(**{**r.__dict__, "reply_file": odd, "seed": "bom"})), "FlatFileError",
              ("part 2 (text/plain, attachment", "UTF-8 byte-order mark")),
        Shape("no-file", "A person's answer without the file (Outlook web): text and HTML only.",
              C.outlook_request_only(ReplyTo(**{**r.__dict__, "request_file": b"Bonjour", "request_name": "note.txt",
                                                "seed": "nofile"})),
              "NotBelgianReply", ("has no flat file", "start with 'HDR'", "part 2 (text/plain, attachment 'note.txt')",
                                  "b'Bonjour'")),
        Shape("postfix-dsn-full", bounces.postfix_dsn.__doc__, bounces.postfix_dsn(req_raw, ERP, HUB), "bounce",
              ("550 5.1.1",), extra={"action": "failed", "status": "5.1.1"}),
        Shape("postfix-dsn-headers", bounces.postfix_dsn.__doc__ + " (RET=HDRS)",
              bounces.postfix_dsn(req_raw, ERP, HUB, ret="hdrs"), "bounce", ("550 5.1.1",),
              extra={"action": "failed", "status": "5.1.1"}),
        Shape("postfix-delay-warning", bounces.postfix_dsn.__doc__ + " (Action: delayed)",
              bounces.postfix_dsn(req_raw, ERP, HUB, "450 4.2.0 <{rcpt}>: Mailbox temporarily unavailable",
                                  ret="hdrs", action="delayed"), "bounce", ("450 4.2.0",),
              extra={"action": "delayed", "status": "4.2.0"}),
        Shape("exchange-online-ndr", bounces.exchange_ndr.__doc__, bounces.exchange_ndr(req_raw, ERP, HUB), "bounce",
              ("RecipientNotFound",), extra={"action": "failed", "status": "5.1.10"}),
        Shape("gmail-dsn", bounces.gmail_dsn.__doc__, bounces.gmail_dsn(req_raw, ERP, HUB), "bounce",
              ("does not exist",), extra={"action": "failed", "status": "5.1.1"}),
        Shape("qmail-qsbmf", bounces.qmail_bounce.__doc__, bounces.qmail_bounce(req_raw, ERP, HUB), "bounce",
              ("no mailbox here",), extra={"action": "failed", "status": "5.1.1"}),
        Shape("dsn-for-a-mail-we-did-not-send", "Postfix bounce of a mail the hub never sent (another system's).",
              bounces.postfix_dsn(stranger, ERP, HUB), "UnknownBounce",
              ("for a mail the hub did not send", "<20261130.4711@crm.plu.example>")),
    ]


def file_bytes(shape: Shape) -> bytes:
    comment = "".join(f"# {line}\n" if line.strip() else "#\n"
                      for line in [f"corpus shape: {shape.name}", *" ".join(shape.comment.split()).split(". ")])
    return comment.encode("utf-8") + SEPARATOR + shape.raw


def load(name: str) -> bytes:
    """The raw mail of a corpus file, without its comment."""
    data = (HERE / f"{name}.eml").read_bytes()
    return data.split(SEPARATOR, 1)[1]


def main() -> int:
    for shape in shapes():
        (HERE / f"{shape.name}.eml").write_bytes(file_bytes(shape))
    print(f"wrote {len(shapes())} corpus files to {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
