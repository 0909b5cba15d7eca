"""What a mail in the hub's Belgian mailbox is: a reply file to apply, a bounce of one of our requests, or
something ops must look at, said precisely (which part, what it starts with, what was expected).

    parse_reply(raw) -> {"kind": "reply", "token", "mail", "file_type", "records", "file"}
                      | {"kind": "bounce", "token", "mail", "bounce": {action, recipient, status, diagnostic, ...}}

Order matters: an RFC 3464 report is recognised first (with RET=FULL it carries our own request file);
then the flat files (every part whose decoded bytes start with `HDR`, wherever it sits); then the
non-standard bounces. A reply file's type is checked before anything is applied: our own REQ file echoed
back (Outlook's reply with attachments) is skipped in favour of the RSP file beside it, and a mail holding
only our request is refused as such.
"""

from __future__ import annotations

from typing import Any

from engine.errors import UnparseablePayload
from schemas.be_flatfile import BeFlatFile, FlatFileError, decode, token_in_subject
from schemas.be_flatfile.codec import UTF8_BOM
from transforms.be_erp.bounces import rfc3464_report, text_bounce
from transforms.be_erp.mail import MAIL_DOMAIN
from transforms.be_erp.mime import Part, header, leaves, parse_mail

SHOWN_PARTS = 8


class NotBelgianReply(UnparseablePayload):
    """A mail in the Belgian mailbox that is neither a reply file nor a bounce the hub can use."""


class UnknownBounce(UnparseablePayload):
    """A bounce of a mail the hub did not send (or whose headers the bounce no longer carries)."""


def parse_reply(raw: Any) -> dict[str, Any]:
    """Raw MIME bytes into a reply or a bounce (module docstring); a clear permanent error otherwise."""
    msg = parse_mail(raw)
    mail = {"message_id": header(msg, "Message-ID"), "from": header(msg, "From"), "subject": header(msg, "Subject"),
            "in_reply_to": header(msg, "In-Reply-To"), "references": header(msg, "References")}
    label = f"mail {mail['message_id'] or '(no Message-ID)'} from {mail['from'] or '(no From)'!r}"
    report = rfc3464_report(msg)
    if report is not None:
        return _bounce(report, mail, label)
    parts = leaves(msg)
    found = [p for p in parts if p.data.startswith((b"HDR", UTF8_BOM + b"HDR"))]
    if found:
        return _reply(found, mail, label)
    bounce = text_bounce(msg, [p.data for p in parts if p.content_type == "text/plain" and p.disposition != "attachment"])
    if bounce is not None:
        return _bounce(bounce, mail, label)
    raise NotBelgianReply(_no_file(parts, label))


def _bounce(report: dict[str, Any], mail: dict[str, Any], label: str) -> dict[str, Any]:
    token = report.pop("token") or token_in_subject(mail["subject"])
    if not token:
        raise UnknownBounce(
            f"{label} is a delivery report ({report['shape']}, action {report['action']}, {report['diagnostic']}) "
            f"for a mail the hub did not send: the original's Message-ID "
            f"{report['original_message_id'] or '(not in the report)'} is not <token@{MAIL_DOMAIN}>, and neither an "
            "X-PLU-Token header nor a [PLU-BE:token] subject tag says which request it was")
    return {"kind": "bounce", "token": token, "mail": mail, "bounce": report}


def _reply(found: list[Part], mail: dict[str, Any], label: str) -> dict[str, Any]:
    files: list[tuple[Part, BeFlatFile]] = []
    for part in found:
        try:
            files.append((part, decode(part.data)))
        except FlatFileError as exc:
            raise exc.in_part(f"{label}, {part.describe()}") from None
    replies = [(p, f) for p, f in files if f.header.file_type == "RSP"]
    echoed = [(p, f) for p, f in files if f.header.file_type != "RSP"]
    if not replies:
        shown = "; ".join(f"{p.describe()}: a {f.header.file_type} file from {f.header.sender} with token "
                          f"{f.header.correlation_token}" for p, f in echoed)
        raise NotBelgianReply(f"{label} carries only our own request ({shown}), sent back by the mail client "
                              "(a reply or forward with the original's attachments); there is no reply file (an RSP "
                              "file from the ERP) to apply")
    tokens = sorted({f.header.correlation_token for _, f in replies})
    if len(tokens) > 1:
        raise NotBelgianReply(f"{label} carries reply files for {len(tokens)} requests ({', '.join(tokens)}; "
                              f"{', '.join(p.describe() for p, _ in replies)}); the hub applies one request's "
                              "replies per mail: ask the sender to send one mail per request")
    records: list[dict[str, Any]] = []
    seen: set[bytes] = set()
    for part, file in replies:
        if part.data in seen:
            continue  # the same file twice (a forward that keeps the attachment and quotes it again)
        seen.add(part.data)
        records.extend(r.model_dump(mode="json") for r in file.records)
    return {"kind": "reply", "token": tokens[0], "mail": mail, "file_type": "RSP", "records": records,
            "file": {"parts": [p.describe() for p, _ in replies],
                     "skipped": [f"{p.describe()}: our own {f.header.file_type} file echoed back" for p, f in echoed]}}


def _no_file(parts: list[Part], label: str) -> str:
    """Why no flat file was found, part by part, TNEF named."""
    tnef = [p for p in parts if "/tnef:" not in p.number and (p.notes or p.content_type in (
        "application/ms-tnef", "application/vnd.ms-tnef") or (p.filename or "").lower() == "winmail.dat")]
    if tnef:
        part = tnef[0]
        inside = f" ({'; '.join(part.notes)})" if part.notes else ""
        names = [p.filename or "(no name)" for p in parts if p.number.startswith(f"{part.number}/tnef:")]
        holds = f"; it holds {', '.join(repr(n) for n in names)}, none of which starts with 'HDR'" if names else ""
        return (f"{label}: Outlook sent the file as TNEF winmail.dat ({part.describe()}{inside}{holds}); ask the "
                "sender to send plain attachments (in Outlook: HTML or plain text format, not Rich Text, for this "
                "address)")
    shown = "; ".join(f"{p.describe()} starts with {p.opening()}" for p in parts[:SHOWN_PARTS])
    more = f"; and {len(parts) - SHOWN_PARTS} more" if len(parts) > SHOWN_PARTS else ""
    return (f"{label} has no flat file: expected a part whose decoded bytes start with 'HDR' (an RSP file from "
            f"the ERP); found {shown or 'no parts'}{more}")
