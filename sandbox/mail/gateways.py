"""What servers between the ERP's people and the hub do to a mail on the way, each as documented:
- A relay without 8BITMIME must turn 8bit parts into quoted-printable or base64 before passing them on
  (RFC 6152 section 3; RFC 1652 before it): `downgrade_8bit`.
- Mailman 3's DMARC mitigation `wrap_message` puts the whole original in a message/rfc822 part after a
  text/plain note, From: the list (docs.mailman3.org "DMARC Mitigations"): `mailman_wrap`.
- Mailman's decoration of a multipart/mixed post: subject prefix, List-Id, the footer as a part of its own
  at the end: `mailman_footer`.
- MIMEDefang adding a disclaimer part makes the message multipart/mixed whatever it was
  (Mail::MIMEDefang::Actions, action_add_part / process_added_parts): `mimedefang_disclaimer`.
"""

from __future__ import annotations

import email
import email.policy
from email.message import Message

from sandbox.mail.wire import boundary, entity, multipart, quoted_printable

_WIRE = email.policy.compat32.clone(linesep="\r\n")


def _parse(raw: bytes) -> Message:
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def downgrade_8bit(raw: bytes, relay: str = "relay.erp.example.be") -> bytes:
    """Every 8bit part re-encoded quoted-printable (line ends become CRLF hard breaks), a Received line on top."""
    msg = _parse(raw)
    for part in msg.walk():
        if not part.is_multipart() and (part.get("Content-Transfer-Encoding") or "").lower() == "8bit":
            data = part.get_payload(decode=True) or b""
            part.replace_header("Content-Transfer-Encoding", "quoted-printable")
            part.set_payload(quoted_printable(data).decode("ascii"))
    received = f"Received: from mail.erp.example.be by {relay} (8BITMIME not offered by the next hop); " \
               "Tue, 01 Dec 2026 10:15:02 +0100\r\n"
    return received.encode() + msg.as_bytes(policy=_WIRE)


def mailman_wrap(raw: bytes, list_address: str = "erp-be@lists.erp.example.be") -> bytes:
    """Mailman 3 wrap_message: From the list, the original (unchanged) in message/rfc822 after a note."""
    original = _parse(raw)
    b = boundary("wrap" + str(original.get("Message-ID")), "==============={}==")[:40]
    note = entity([("Content-Type", 'text/plain; charset="us-ascii"'), ("Content-Transfer-Encoding", "7bit")],
                  b"A message from a domain with a DMARC reject or quarantine policy was wrapped.\r\n")
    wrapped = entity([("Content-Type", "message/rfc822"), ("MIME-Version", "1.0")], raw)
    fields = [("From", f"erp-be via ERP list <{list_address}>"), ("Reply-To", str(original.get("From", ""))),
              ("To", str(original.get("To", ""))), ("Subject", str(original.get("Subject", ""))),
              ("Date", str(original.get("Date", ""))), ("Message-ID", f"<wrapped.{b[15:31]}@lists.erp.example.be>"),
              ("List-Id", "<erp-be.lists.erp.example.be>"), ("MIME-Version", "1.0"),
              ("Content-Type", f'multipart/mixed; boundary="{b}"')]
    return entity(fields, multipart(b, [note, wrapped]))


def mailman_footer(raw: bytes, prefix: str = "[erp-be]") -> bytes:
    """Mailman decorating a multipart/mixed post: subject prefix, List-Id, a footer part at the end."""
    msg = _parse(raw)
    msg.replace_header("Subject", f"{prefix} {msg['Subject']}")
    msg["List-Id"] = "<erp-be.lists.erp.example.be>"
    footer = email.message.Message()
    footer["Content-Type"] = 'text/plain; charset="us-ascii"'
    footer["Content-Transfer-Encoding"] = "7bit"
    footer["Content-Disposition"] = "inline"
    footer.set_payload("_______________________________________________\r\nerp-be mailing list\r\n")
    msg.attach(footer)
    return msg.as_bytes(policy=_WIRE)


def mimedefang_disclaimer(raw: bytes) -> bytes:
    """MIMEDefang action_add_part on a single-part mail: the original part and the disclaimer under a new
    multipart/mixed; the message headers stay on top."""
    msg = _parse(raw)
    top = [(k, v) for k, v in msg.items() if not k.lower().startswith("content-") and k.lower() != "mime-version"]
    inner = [(k, v) for k, v in msg.items() if k.lower().startswith("content-")]
    body = raw.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in raw else raw.split(b"\n\n", 1)[-1]
    b = boundary("defang" + str(msg.get("Message-ID")), "----------=_{}")[:40]
    disclaimer = entity([("Content-Type", "text/plain; charset=us-ascii"), ("Content-Disposition", "inline")],
                        b"This e-mail is confidential. If you received it by mistake, delete it.\r\n")
    return entity(top + [("MIME-Version", "1.0"), ("Content-Type", f'multipart/mixed; boundary="{b}"'),
                         ("X-Scanned-By", "MIMEDefang 3.3")],
                  multipart(b, [entity(inner, body), disclaimer]))
