"""A `send` payload as the MIME message that goes on the wire (pure: no I/O).

Attachments are always base64 with the bytes given: a flat file in ISO-8859-1 with CRLF line ends comes
out of the recipient's mailbox exactly as it went in, which quoted-printable or 8bit would not promise
(line ends get normalised on the way). The body is 7-bit or quoted-printable, so no server needs 8BITMIME.
"""

from __future__ import annotations

import base64
import email.policy
import email.utils
from email.message import EmailMessage, Message
from typing import Any

from pydantic import ValidationError

from adapters.smtp.config import MailAttachment, MailPayload
from engine.errors import ValidationFailed

# headers the adapter writes itself; a payload setting them would make an ambiguous message
RESERVED = frozenset({"from", "to", "cc", "bcc", "subject", "message-id", "date", "mime-version",
                      "content-type", "content-transfer-encoding", "content-disposition", "sender", "return-path"})
WIRE_POLICY = email.policy.SMTP  # CRLF line ends, as DATA wants them


def parse_payload(endpoint: str, payload: Any) -> MailPayload:
    """The payload as a MailPayload; ValidationFailed names the first bad field."""
    if hasattr(payload, "model_dump"):
        payload = payload.model_dump(mode="json")
    if not isinstance(payload, dict):
        raise ValidationFailed(f"{endpoint}: send needs an object {{to, subject, text, …}}, "
                               f"got {type(payload).__name__}")
    try:
        return MailPayload.model_validate(payload)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "payload"
        raise ValidationFailed(f"{endpoint}: send payload {where}: {err['msg']}") from None


def envelope_address(address: str) -> str:
    """The bare address of `Name <addr>` for MAIL FROM / RCPT TO; ValueError when there is none."""
    _, bare = email.utils.parseaddr(address)
    if not bare or "@" not in bare:
        raise ValueError(f"not an email address: {address!r}")
    return bare


def attachment_bytes(att: MailAttachment) -> tuple[bytes, str, str, dict[str, str]]:
    """The attachment's exact bytes, its maintype and subtype, and its content-type parameters."""
    probe = Message()
    probe["Content-Type"] = att.content_type
    maintype, subtype = probe.get_content_maintype(), probe.get_content_subtype()
    params = {k: v for k, v in (probe.get_params() or [])[1:]}
    if att.text is not None:
        charset = att.charset or params.get("charset") or "utf-8"
        try:
            data = att.text.encode(charset)
        except (LookupError, UnicodeEncodeError) as exc:
            raise ValidationFailed(f"attachment {att.filename!r}: text cannot be encoded as {charset}: {exc}") from None
        if maintype == "text":
            params["charset"] = charset
    else:
        data = base64.b64decode(att.data_b64 or "")
    return data, maintype, subtype, params


def build_message(mail: MailPayload, from_address: str, message_id: str) -> EmailMessage:
    """The EmailMessage for `mail`; ValidationFailed for a header that would break or forge the message."""
    msg = EmailMessage(policy=email.policy.default)
    try:
        msg["From"] = from_address
        msg["To"] = ", ".join(mail.to)
        msg["Subject"] = mail.subject
        msg["Date"] = email.utils.formatdate(localtime=False)
        msg["Message-ID"] = message_id
        for name, value in mail.headers.items():
            if name.lower() in RESERVED:
                raise ValidationFailed(f"header {name!r} is set by the adapter; put it in the payload's own field")
            msg[name] = value
        msg.set_content(mail.text, cte=None if mail.text.isascii() else "quoted-printable")
        for att in mail.attachments:
            data, maintype, subtype, params = attachment_bytes(att)
            msg.add_attachment(data, maintype=maintype, subtype=subtype, cte="base64", disposition="attachment",
                               filename=att.filename, params=params)
    except ValidationFailed:
        raise
    except (ValueError, TypeError) as exc:  # linefeeds in a header value, a malformed header name…
        raise ValidationFailed(f"cannot build the mail: {exc}") from None
    return msg


def wire_bytes(msg: EmailMessage) -> bytes:
    """What DATA sends: the message with CRLF line ends."""
    return msg.as_bytes(policy=WIRE_POLICY)


def message_domain(from_address: str) -> str:
    """The domain of the from address, for Message-IDs and EHLO."""
    return envelope_address(from_address).rpartition("@")[2] or "localhost"
