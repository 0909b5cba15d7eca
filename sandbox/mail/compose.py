"""Mails as the systems around the hub write them: a system's mail with one attachment, or a person's reply.

The two shapes differ the way real ones do, so the hub's reader is tested against both: a system sends
multipart/mixed with a base64 attachment and threads its reply (In-Reply-To, References); a person
answering from a mail client quotes the original, nests the attachment under multipart/alternative,
re-encodes it quoted-printable, prefixes the subject with "RE:" and, in the worst clients, drops the
threading headers. `find_attachment` reads either back.
"""

from __future__ import annotations

import email.utils
import html
import quopri
from email.message import EmailMessage, Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

MAIL_DOMAIN = "plu.example"


def _attachment(data: bytes, filename: str, charset: str, quoted_printable: bool) -> Message:
    if not quoted_printable:
        msg = EmailMessage()
        msg.set_content(data, maintype="text", subtype="plain", cte="base64", disposition="attachment",
                        filename=filename, params={"charset": charset})
        return msg
    part = MIMEBase("text", "plain", charset=charset)
    part.set_payload(quopri.encodestring(data, quotetabs=False).decode("ascii"))
    part["Content-Transfer-Encoding"] = "quoted-printable"
    part.add_header("Content-Disposition", "attachment", filename=filename)
    return part


def system_mail(sender: str, to: str, subject: str, body: str, attachment: bytes, filename: str, *,
                in_reply_to: str | None = None, references: str | None = None,
                charset: str = "iso-8859-1") -> EmailMessage:
    """A machine's mail: a text body and one base64 attachment, threaded when it answers a mail."""
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg["Date"] = email.utils.formatdate(localtime=True)
    msg["Message-ID"] = email.utils.make_msgid(domain=MAIL_DOMAIN)
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = f"{references} {in_reply_to}" if references else in_reply_to
    msg.set_content(body)
    msg.make_mixed()
    msg.attach(_attachment(attachment, filename, charset, quoted_printable=False))
    return msg


def client_reply(original: Message, sender: str, subject: str, body: str, attachment: bytes, filename: str, *,
                 charset: str = "iso-8859-1", keep_threading: bool = False) -> MIMEMultipart:
    """A person's reply from a mail client: the original quoted, multipart/mixed (HTML + a quoted-printable
    attachment) inside multipart/alternative, and no In-Reply-To/References unless `keep_threading`."""
    quoted_text = _text_of(original)
    when, who = original.get("Date", "?"), original.get("From", "?")
    plain = f"{body}\n\nLe {when}, {who} a écrit :\n" + "".join(f"> {line}\n" for line in quoted_text.splitlines())
    rich = (f"<html><body><p>{html.escape(body)}</p><p>Le {html.escape(when)}, {html.escape(who)} a écrit :</p>"
            f"<blockquote>{html.escape(quoted_text).replace(chr(10), '<br>')}</blockquote></body></html>")
    mixed = MIMEMultipart("mixed")
    mixed.attach(MIMEText(rich, "html", "utf-8"))
    mixed.attach(_attachment(attachment, filename, charset, quoted_printable=True))
    msg = MIMEMultipart("alternative")
    msg.attach(MIMEText(plain, "plain", "utf-8"))
    msg.attach(mixed)
    msg["From"], msg["To"], msg["Subject"] = sender, original.get("Reply-To") or original.get("From", ""), subject
    msg["Date"] = email.utils.formatdate(localtime=True)
    msg["Message-ID"] = email.utils.make_msgid(domain=MAIL_DOMAIN)
    msg["X-Mailer"] = "Microsoft Outlook 16.0"
    if keep_threading and original.get("Message-ID"):
        msg["In-Reply-To"] = original["Message-ID"]
    return msg


def _text_of(msg: Message) -> str:
    for part in msg.walk():
        if part.get_content_type() == "text/plain" and part.get_content_disposition() != "attachment":
            payload = part.get_payload(decode=True) or b""
            return payload.decode(part.get_content_charset() or "utf-8", "replace")
    return ""


def find_attachment(msg: Message, starts_with: bytes) -> bytes | None:
    """The decoded bytes of the first non-multipart part that starts with `starts_with`, at any depth."""
    for part in msg.walk():
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes) and payload.startswith(starts_with):
            return payload
    return None
