"""Bounces of a mail as mail servers send them back to its envelope sender, each as documented:
- Postfix: RFC 3464 multipart/report (report-type=delivery-status): a text/plain notice ("This is the mail
  system at host ..."), message/delivery-status, then the original as message/rfc822 (RET=FULL) or its
  headers as text/rfc822-headers (RET=HDRS); `Action: delayed` for a delay warning.
- Exchange / Microsoft 365: multipart/report with the notice as multipart/alternative, Subject
  "Undeliverable: ...", content-class urn:content-classes:dsn, the original's headers only
  (Microsoft KB 323484; Exchange Online NDR documentation).
- Gmail: "Delivery Status Notification (Failure)" from mailer-daemon@googlemail.com, multipart/report with
  the full original.
- qmail: QSBMF, a plain-text body "Hi. This is the qmail-send program at ...", a recipient paragraph, the
  break paragraph "--- Below this line is a copy of the message." and the original (cr.yp.to/proto/qsbmf.txt).
The sandbox SMTP server sends `postfix_dsn` for recipients set to bounce (MailSandbox.bounce).
"""

from __future__ import annotations

import email
import email.policy

from sandbox.mail.wire import boundary, entity, multipart

WHEN = "Tue, 01 Dec 2026 09:02:14 +0000"


def _headers_only(original: bytes) -> bytes:
    end = original.find(b"\r\n\r\n")
    return original[:end + 2] if end >= 0 else original


def _status(reporting: str, recipient: str, action: str, status: str, diagnostic: str, remote: str | None,
            envid: str | None = None) -> bytes:
    per_message = [f"Reporting-MTA: dns; {reporting}"] + ([f"Original-Envelope-Id: {envid}"] if envid else []) + \
                  [f"Arrival-Date: {WHEN}"]
    per_recipient = [f"Final-Recipient: rfc822; {recipient}", f"Original-Recipient: rfc822;{recipient}",
                     f"Action: {action}", f"Status: {status}"]
    if remote:
        per_recipient.append(f"Remote-MTA: dns; {remote}")
    per_recipient.append(f"Diagnostic-Code: smtp; {diagnostic}")
    if action == "delayed":
        per_recipient.append("Will-Retry-Until: Sat, 5 Dec 2026 09:02:14 +0000 (GMT)")
    return ("\r\n".join(per_message) + "\r\n\r\n" + "\r\n".join(per_recipient) + "\r\n").encode()


def postfix_dsn(original: bytes, recipient: str, sender: str, diagnostic: str = "550 5.1.1 <{rcpt}>: Recipient "
                "address rejected: User unknown in local recipient table", *, ret: str = "full",
                action: str = "failed", host: str = "mail.plu.example") -> bytes:
    """Postfix's bounce (or delay warning, action="delayed") of `original` for `recipient`, to `sender`."""
    diagnostic = diagnostic.format(rcpt=recipient)
    status = diagnostic.split()[1] if len(diagnostic.split()) > 1 and diagnostic.split()[1][:1] in "45" else "5.0.0"
    b = boundary(recipient + action + original[:200].decode("latin-1"), "{}.1733043734/" + host)[:60]
    if action == "delayed":
        intro = (f"This is the mail system at host {host}.\r\n\r\n####################################################"
                 "################\r\n# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\r\n"
                 "#####################################################################\r\n\r\nYour message could not "
                 "be delivered for 4.0 hours.\r\nIt will be retried until it is 5.0 days old.\r\n")
        subject = "Delayed Mail (still being retried)"
    else:
        intro = (f"This is the mail system at host {host}.\r\n\r\nI'm sorry to have to inform you that your message "
                 "could not\r\nbe delivered to one or more recipients. It's attached below.\r\n\r\n"
                 f"                   The mail system\r\n\r\n<{recipient}>: host mx.erp.example.be[192.0.2.25] said: "
                 f"{diagnostic} (in reply to RCPT TO command)\r\n")
        subject = "Undelivered Mail Returned to Sender"
    notice = entity([("Content-Description", "Notification"), ("Content-Type", "text/plain; charset=us-ascii")],
                    intro.encode())
    report = entity([("Content-Description", "Delivery report"), ("Content-Type", "message/delivery-status")],
                    _status(host, recipient, action, status, diagnostic, "mx.erp.example.be"))
    if ret == "full":
        back = entity([("Content-Description", "Undelivered Message"), ("Content-Type", "message/rfc822"),
                       ("Content-Transfer-Encoding", "8bit")], original)
    else:
        back = entity([("Content-Description", "Undelivered Message Headers"),
                       ("Content-Type", "text/rfc822-headers")], _headers_only(original))
    fields = [("Return-Path", "<>"), ("From", f"MAILER-DAEMON@{host} (Mail Delivery System)"), ("Subject", subject),
              ("To", sender), ("Date", WHEN), ("Message-Id", f"<20261201090214.{b[:10]}@{host}>"),
              ("Auto-Submitted", "auto-replied"), ("MIME-Version", "1.0"),
              ("Content-Type", f'multipart/report; report-type=delivery-status;\r\n\tboundary="{b}"'),
              ("Content-Transfer-Encoding", "8bit")]
    return entity(fields, multipart(b, [notice, report, back],
                                    preamble=b"This is a MIME-encapsulated message."))


def exchange_ndr(original: bytes, recipient: str, sender: str) -> bytes:
    """Microsoft 365's non-delivery report: the original's headers only, "Undeliverable: <subject>"."""
    subject = str(email.message_from_bytes(original, policy=email.policy.compat32).get("Subject", ""))
    b, alt = boundary(recipient + "ndr", "_000_{}_")[:40], boundary(recipient + "ndralt", "_001_{}_")[:40]
    text = entity([("Content-Type", 'text/plain; charset="us-ascii"'), ("Content-Transfer-Encoding", "7bit")],
                  f"Your message to {recipient} couldn't be delivered.\r\n{recipient.split('@')[0]} wasn't found at "
                  f"{recipient.split('@')[1]}.\r\n\r\nRemote Server returned '550 5.1.10 RESOLVER.ADR.RecipientNotFound; "
                  "Recipient not found by SMTP address lookup'\r\n".encode())
    html = entity([("Content-Type", 'text/html; charset="us-ascii"'), ("Content-Transfer-Encoding", "7bit")],
                  f"<html><body><b>Your message to {recipient} couldn't be delivered.</b></body></html>\r\n".encode())
    notice = entity([("Content-Type", f'multipart/alternative; differences=Content-Type;\r\n\tboundary="{alt}"')],
                    multipart(alt, [text, html]))
    report = entity([("Content-Type", "message/delivery-status")],
                    _status("AM0PR01MB1234.eurprd01.prod.exchangelabs.com", recipient, "failed", "5.1.10",
                            "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
                            None))
    back = entity([("Content-Type", "text/rfc822-headers")], _headers_only(original))
    fields = [("From", "Microsoft Outlook <MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@plu.example>"),
              ("To", sender), ("Date", WHEN), ("Subject", f"Undeliverable: {subject}"),
              ("Content-Type", f'multipart/report; report-type=delivery-status;\r\n\tboundary="{b}"'),
              ("Content-Language", "en-US"), ("Message-ID", f"<{b[5:25]}@AM0PR01MB1234.eurprd01.prod.outlook.com>"),
              ("In-Reply-To", str(email.message_from_bytes(original).get("Message-ID", ""))),
              ("X-MS-Exchange-Message-Is-Ndr", ""), ("Auto-Submitted", "auto-replied"), ("MIME-Version", "1.0"),
              ("content-class", "urn:content-classes:dsn")]
    return entity(fields, multipart(b, [notice, report, back]))


def gmail_dsn(original: bytes, recipient: str, sender: str) -> bytes:
    """Gmail's "Delivery Status Notification (Failure)" with the full original."""
    b = boundary(recipient + "gdsn", "00000000000{}")[:28]
    notice = entity([("Content-Type", 'text/plain; charset="UTF-8"')],
                    f"** Address not found **\r\n\r\nYour message wasn't delivered to {recipient} because the address "
                    "couldn't be found, or is unable to receive mail.\r\n\r\nThe response from the remote server "
                    "was:\r\n550 5.1.1 The email account that you tried to reach does not exist.\r\n".encode())
    report = entity([("Content-Type", "message/delivery-status")],
                    _status("googlemail.com", recipient, "failed", "5.1.1", "550 5.1.1 The email account that you "
                            "tried to reach does not exist.", "mx.erp.example.be."))
    back = entity([("Content-Type", "message/rfc822")], original)
    fields = [("Return-Path", "<>"), ("From", "Mail Delivery Subsystem <mailer-daemon@googlemail.com>"),
              ("To", sender), ("Auto-Submitted", "auto-replied"), ("Subject", "Delivery Status Notification (Failure)"),
              ("Date", WHEN), ("Message-ID", f"<{b[11:27]}.gmail@mx.google.com>"), ("MIME-Version", "1.0"),
              ("Content-Type", f'multipart/report; boundary="{b}"; report-type=delivery-status')]
    return entity(fields, multipart(b, [notice, report, back]))


def qmail_bounce(original: bytes, recipient: str, sender: str, host: str = "mail.erp.example.be") -> bytes:
    """qmail-send's QSBMF bounce: plain text, the original after the break paragraph."""
    body = (f"Hi. This is the qmail-send program at {host}.\r\nI'm afraid I wasn't able to deliver your message to "
            "the following addresses.\r\nThis is a permanent error; I've given up. Sorry it didn't work out.\r\n\r\n"
            f"<{recipient}>:\r\nSorry, no mailbox here by that name. (#5.1.1)\r\n\r\n"
            "--- Below this line is a copy of the message.\r\n\r\n").encode() + original
    fields = [("Return-Path", "<>"), ("Date", "1 Dec 2026 09:02:14 -0000"), ("From", f"MAILER-DAEMON@{host}"),
              ("To", sender), ("Subject", "failure notice"), ("Message-ID", f"<20261201090214.4711.qmail@{host}>")]
    return entity(fields, body)
