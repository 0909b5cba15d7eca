"""Bounces of the hub's own request mails: what failed, for whom, why, and which request it was.

Recognised shapes, each documented by its producer:
- RFC 3464 delivery status notifications: `multipart/report; report-type=delivery-status` with a
  `message/delivery-status` part (per-message fields, then one block per recipient: Final-Recipient,
  Action, Status, Diagnostic-Code ...) and the original as `message/rfc822` (RET=FULL) or its headers only
  as `text/rfc822-headers` (RET=HDRS, or a big original). Postfix, Exchange/Microsoft 365, Gmail and Exim
  send these; RFC 6533's `message/global-delivery-status` and `message/global-headers` (SMTPUTF8) too.
- qmail's QSBMF: a plain-text body that begins "Hi. This is the", recipient paragraphs "<addr>:" with the
  reason, a break paragraph starting with "-", then the original message.
- Any other text bounce from a mailer daemon that quotes the original's headers (older Exim and the like).

The original is matched to a request by its Message-ID (<token@hub.plu.example>), its X-PLU-Token header or
the [PLU-BE:token] tag of its subject. `Action: delayed` is a warning (the MTA still tries), `failed` a bounce.
"""

from __future__ import annotations

import email
import email.policy
import re
from email.message import Message
from typing import Any

from schemas.be_flatfile import token_in_subject
from transforms.be_erp.mail import MAIL_DOMAIN
from transforms.be_erp.mime import clean, header

_OUR_MSGID = re.compile(r"<([A-Za-z0-9._-]{1,40})@" + re.escape(MAIL_DOMAIN) + r">")
_TOKEN_HEADER = re.compile(r"^X-PLU-Token:[ \t]*([A-Za-z0-9._-]{1,40})[ \t]*$", re.IGNORECASE | re.MULTILINE)
_STATUS = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")
_DAEMON = re.compile(r"(mailer-daemon|postmaster|mail delivery (sub)?system)", re.IGNORECASE)
STATUS_TYPES = ("message/delivery-status", "message/global-delivery-status")
ORIGINAL_TYPES = ("message/rfc822", "message/global", "text/rfc822-headers", "message/global-headers")
TEXT_LIMIT = 300


def rfc3464_report(msg: Message) -> dict[str, Any] | None:
    """The RFC 3464 delivery report a mail is, or None. Checked before any flat file is looked for: a
    bounce with the full original carries our own request file."""
    try:
        ctype = msg.get_content_type()
        report_type = str(msg.get_param("report-type") or "").lower() if ctype == "multipart/report" else ""
    except Exception:
        return None
    if ctype == "multipart/report" and report_type in ("delivery-status", "global-delivery-status"):
        return _rfc3464(msg)
    return None


def text_bounce(msg: Message, text_parts: list[bytes]) -> dict[str, Any] | None:
    """The non-standard bounce a mail without a flat file is (QSBMF, or a daemon's text quoting our
    headers), or None. `text_parts` are its leaf text/plain parts, decoded, in order."""
    body = text_parts[0].decode("latin-1") if text_parts else ""
    if body.lstrip("\r\n").startswith("Hi. This is the"):
        return _qsbmf(body)
    sender = f"{header(msg, 'From')} {header(msg, 'Return-Path')}"
    if _DAEMON.search(sender) or header(msg, "Return-Path") == "<>":
        for data in text_parts:
            text = data.decode("latin-1")
            if _OUR_MSGID.search(text) or _TOKEN_HEADER.search(text):
                return _quoting_text(text)
    return None


def _rfc3464(msg: Message) -> dict[str, Any]:
    blocks: list[dict[str, str]] = []
    original: dict[str, str] = {}
    original_kind = None
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype in STATUS_TYPES and not blocks:
            blocks = _status_blocks(part)
        elif ctype in ORIGINAL_TYPES and original_kind is None:
            original, original_kind = _original_headers(part), ctype
    per_message = blocks[0] if blocks else {}
    recipients = [b for b in blocks[1:] if b.get("action") or b.get("final-recipient")]
    actions = [b.get("action", "").lower() for b in recipients]
    action = next((a for a in ("failed", "delayed", "delivered", "relayed", "expanded") if a in actions), "unknown")
    chosen = next((b for b in recipients if b.get("action", "").lower() == action), recipients[0] if recipients else {})
    shape = "RFC 3464 report" + {"message/rfc822": " with the full original", "message/global": " with the full "
                                 "original", None: " without the original"}.get(original_kind, " with the original's "
                                                                                   "headers only")
    return _report(action, _address(chosen.get("final-recipient") or chosen.get("original-recipient", "")),
                   chosen.get("status", ""), _diagnostic(chosen.get("diagnostic-code", "")),
                   _mta(per_message.get("reporting-mta", "")), chosen.get("last-attempt-date") or
                   per_message.get("arrival-date"), original, shape)


def _status_blocks(part: Message) -> list[dict[str, str]]:
    """The report's field blocks (per message, then per recipient) as lower-cased name -> text."""
    payload = part.get_payload()
    if isinstance(payload, list):
        blocks = []
        for block in payload:
            if isinstance(block, Message):
                blocks.append({k.lower(): " ".join(str(v).split()) for k, v in block.raw_items()})
        return blocks
    data = part.get_payload(decode=True)
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(payload or "")
    return [_fields(chunk) for chunk in re.split(r"\r?\n[ \t]*\r?\n", text.strip()) if chunk.strip()]


def _fields(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        if line[:1] in (" ", "\t") and name:
            fields[name] += " " + line.strip()
        elif ":" in line:
            name, value = line.split(":", 1)
            name = name.strip().lower()
            fields[name] = value.strip()
    return fields


def _original_headers(part: Message) -> dict[str, str]:
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        inner = payload[0]
    else:
        data = part.get_payload(decode=True)
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(payload or "")
        inner = email.message_from_string(text.lstrip("\r\n"), policy=email.policy.compat32)
    return {name: header(inner, name) for name in ("Message-ID", "Subject", "X-PLU-Token", "To", "Date")}


def _qsbmf(body: str) -> dict[str, Any]:
    paragraphs = re.split(r"\r?\n[ \t]*\r?\n", body.strip())
    recipient, reason, original_text = "", "", ""
    for i, paragraph in enumerate(paragraphs[1:], 1):
        if paragraph.startswith("-"):  # the break paragraph: the original follows
            original_text = "\n\n".join(paragraphs[i + 1:])
            break
        if not recipient and paragraph.startswith("<"):
            first, _, rest = paragraph.partition("\n")
            recipient, reason = first.strip().rstrip(":").strip("<>"), " ".join(rest.split())
    original = email.message_from_string(original_text, policy=email.policy.compat32)
    status = _STATUS.search(reason)
    return _report("failed", recipient, status.group(1) if status else "5.0.0", reason, "", None,
                   {name: header(original, name) for name in ("Message-ID", "Subject", "X-PLU-Token", "To", "Date")},
                   "qmail bounce (QSBMF)")


def _quoting_text(text: str) -> dict[str, Any]:
    """A daemon's plain-text bounce that quotes our headers: the first SMTP reply line is the reason."""
    reply = re.search(r"^\s*([45]\d\d[ -].+)$", text, re.MULTILINE)
    token = _TOKEN_HEADER.search(text)
    msgid = _OUR_MSGID.search(text)
    original = {"Message-ID": msgid.group(0) if msgid else "", "X-PLU-Token": token.group(1) if token else "",
                "Subject": "", "To": "", "Date": ""}
    recipient = re.search(r"<([^<>@\s]+@[^<>\s]+)>", text)
    status = _STATUS.search(reply.group(1) if reply else text)
    return _report("failed", recipient.group(1) if recipient else "", status.group(1) if status else "5.0.0",
                   " ".join(reply.group(1).split()) if reply else "", "", None, original,
                   "plain-text bounce quoting the original's headers")


def _report(action: str, recipient: str, status: str, diagnostic: str, mta: str, when: str | None,
            original: dict[str, str], shape: str) -> dict[str, Any]:
    token = _token_of(original)
    return {"action": clean(action), "recipient": clean(recipient)[:TEXT_LIMIT], "status": clean(status)[:20],
            "diagnostic": clean(diagnostic)[:TEXT_LIMIT] or f"status {clean(status) or 'unknown'}",
            "reporting_mta": clean(mta)[:TEXT_LIMIT], "at": clean(when)[:60] if when else None,
            "original_message_id": clean(original.get("Message-ID", ""))[:TEXT_LIMIT],
            "original_subject": clean(original.get("Subject", ""))[:TEXT_LIMIT], "token": token, "shape": shape}


def _token_of(original: dict[str, str]) -> str | None:
    found = _OUR_MSGID.search(original.get("Message-ID", ""))
    if found:
        return found.group(1)
    if re.fullmatch(r"[A-Za-z0-9._-]{1,40}", original.get("X-PLU-Token", "")):
        return original["X-PLU-Token"]
    return token_in_subject(original.get("Subject"))


def _address(value: str) -> str:
    """`rfc822; erp@x` -> `erp@x`."""
    return value.split(";", 1)[-1].strip()


def _mta(value: str) -> str:
    return value.split(";", 1)[-1].strip()


def _diagnostic(value: str) -> str:
    """`smtp; 550 5.1.1 <x>: Recipient address rejected` -> the SMTP reply itself."""
    kind, _, rest = value.partition(";")
    return " ".join((rest if rest and kind.strip().lower() in ("smtp", "x-postfix", "x-local", "x-unix") else
                     value).split())
