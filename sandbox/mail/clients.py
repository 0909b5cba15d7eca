"""Replies to the hub's Belgian requests as people at the ERP send them from real mail clients.

Each function writes the MIME a client is documented to produce (the docstring names the behaviour and
where it is described); the corpus (tests/mail_corpus/) and the Belgian ERP simulator (`client=` behaviour)
both use them. Sources, read through the project's search tool:
- Outlook/Exchange put pictures of an HTML mail (a signature logo) in the mail as file attachments
  image001.png ... that recipients outside the organisation see (PoliteMail help, "extra image attachments");
  older Outlook, Lotus Notes and Gmail web write RFC 2047 encoded words inside the quoted file name
  (nmh-workers 2016-09 "RFC 2047 vs RFC 2231"; thunderbird-android PR #3364); Outlook sends Rich Text mail
  as TNEF winmail.dat (Microsoft "TNEF processing", [MS-OXTNEF]); its replies quote "-----Original Message-----".
- Apple Mail marks attachments `Content-Disposition: inline` and splits the text around them
  (paulrobichaux.com 2009 "Snow Leopard Mail.app and multi-part MIME"); RFC 2231 names without continuations.
- Thunderbird: RFC 2047 in Content-Type's name, RFC 2231 with continuations (`filename*0*=`) in
  Content-Disposition (thunderbird-android PR #3364); "Forward as attachment" is message/rfc822.
- Gmail web: multipart/mixed with multipart/alternative, RFC 2047 names in both parameters, X-Attachment-Id.
- Files of a type the Gmail app does not know travel as application/octet-stream (AnkiDroid #8073).
- A scripted sender using Python's MIMEApplication: application/octet-stream, no name, no disposition.
- A whole-message attachment: the single part of the mail is the file (thunderbird-android #5957).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sandbox.mail.tnef import winmail_dat
from sandbox.mail.wire import (b64, boundary, encoded_word, entity, multipart, quoted_printable, rfc2231)


@dataclass(frozen=True)
class ReplyTo:
    """What a person at the ERP answers: the hub's request mail and the reply file they attach."""

    request_id: str            # the request's Message-ID, <token@hub.plu.example>
    request_subject: str
    hub: str                   # the hub's address (the request's From)
    erp: str                   # the person's address
    reply_file: bytes          # the RSP file
    reply_name: str            # PLU_RSP_<token>.txt
    request_file: bytes = b""  # our REQ file, for clients that send the original's attachments back
    request_name: str = ""
    seed: str = "corpus"       # makes boundaries and Message-IDs deterministic
    date: str = "Tue, 01 Dec 2026 10:15:00 +0100"
    request_date: str = "Tue, 01 Dec 2026 09:02:11 +0000"


def _top(r: ReplyTo, subject: str, mailer: tuple[str, str] | None, ctype: str, *extra: tuple[str, str],
         threaded: bool = True, mime: str = "1.0") -> list[tuple[str, str]]:
    fields = [("From", r.erp), ("To", r.hub), ("Subject", subject), ("Date", r.date),
              ("Message-ID", f"<{boundary(r.seed + subject, '{}')[:24]}@erp.example.be>")]
    if threaded:
        fields += [("In-Reply-To", r.request_id), ("References", r.request_id)]
    if mailer:
        fields.append(mailer)
    return fields + list(extra) + [("MIME-Version", mime), ("Content-Type", ctype)]


def _quote(r: ReplyTo) -> str:
    return (f"-----Original Message-----\r\nFrom: {r.hub}\r\nSent: {r.request_date}\r\nTo: {r.erp}\r\n"
            f"Subject: {r.request_subject}\r\n\r\nDemande de changement de tarif en pièce jointe.\r\n")


def _alternative(r: ReplyTo, text: str, charset: str = "iso-8859-1") -> bytes:
    b = boundary(r.seed + "alt", "_000_{}_")[:48]
    plain = entity([("Content-Type", f'text/plain; charset="{charset}"'),
                    ("Content-Transfer-Encoding", "quoted-printable")], quoted_printable(text.encode(charset)))
    html = "<html><body><p>" + text.replace("\r\n", "<br>") + "</p></body></html>"
    rich = entity([("Content-Type", f'text/html; charset="{charset}"'),
                   ("Content-Transfer-Encoding", "quoted-printable")], quoted_printable(html.encode(charset)))
    return entity([("Content-Type", f'multipart/alternative; boundary="{b}"')], multipart(b, [plain, rich]))


def _outlook_file(name: str, data: bytes, ctype: str = "text/plain") -> bytes:
    return entity([("Content-Type", f'{ctype}; name="{name}"'), ("Content-Description", name),
                   ("Content-Disposition", f'attachment; filename="{name}"; size={len(data)};\r\n\t'
                                           'creation-date="Tue, 01 Dec 2026 09:10:00 GMT";\r\n\t'
                                           'modification-date="Tue, 01 Dec 2026 09:10:00 GMT"'),
                   ("Content-Transfer-Encoding", "base64")], b64(data))


_OUTLOOK = ("X-Mailer", "Microsoft Outlook 16.0")
_OUTLOOK_HEADERS = (("Thread-Topic", "Tariefwijziging"), ("Thread-Index", "AQHbQ2x1c2VydmljZXM="),
                    ("Content-Language", "fr-BE"))


def outlook_logo_first(r: ReplyTo) -> bytes:
    """Outlook desktop, HTML mail with the company logo of the signature: Exchange hands the logo to outside
    recipients as an attachment image001.png, placed before the file the person attached."""
    b = boundary(r.seed + "mixed", "_004_{}_")[:48]
    logo = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x10\0\0\0\x10\x08\x06\0\0\0\x1f\xf3\xffa" + b"\0" * 40
    parts = [_alternative(r, "Bonjour,\r\n\r\nVoici notre réponse.\r\n\r\nCordialement,\r\nService clients\r\n\r\n"
                             + _quote(r)),
             entity([("Content-Type", 'image/png; name="image001.png"'), ("Content-Description", "image001.png"),
                     ("Content-Disposition", 'attachment; filename="image001.png"; size=70'),
                     ("Content-ID", "<image001.png@01DB43A1.5C2E0F30>"), ("Content-Transfer-Encoding", "base64")],
                    b64(logo)),
             _outlook_file(r.reply_name, r.reply_file)]
    return entity(_top(r, f"RE: {r.request_subject}", _OUTLOOK, f'multipart/mixed;\r\n\tboundary="{b}"',
                       *_OUTLOOK_HEADERS), multipart(b, parts))


def outlook_reply_with_attachments(r: ReplyTo) -> bytes:
    """Outlook "Reply with attachments": the original's attachments (our own REQ file) come back first,
    then the file the person added."""
    b = boundary(r.seed + "rwa", "_005_{}_")[:48]
    parts = [_alternative(r, "Bonjour,\r\n\r\nRéponse ci-jointe.\r\n\r\n" + _quote(r)),
             _outlook_file(r.request_name, r.request_file), _outlook_file(r.reply_name, r.reply_file)]
    return entity(_top(r, f"RE: {r.request_subject}", _OUTLOOK, f'multipart/mixed;\r\n\tboundary="{b}"',
                       *_OUTLOOK_HEADERS), multipart(b, parts))


def outlook_request_only(r: ReplyTo) -> bytes:
    """Outlook "Reply with attachments" sent before the person attached their file: only our request is in it."""
    b = boundary(r.seed + "ronly", "_006_{}_")[:48]
    parts = [_alternative(r, "Bonjour,\r\n\r\nJe vous renvoie la demande.\r\n\r\n" + _quote(r)),
             _outlook_file(r.request_name, r.request_file)]
    return entity(_top(r, f"RE: {r.request_subject}", _OUTLOOK, f'multipart/mixed;\r\n\tboundary="{b}"',
                       *_OUTLOOK_HEADERS), multipart(b, parts))


def outlook_tnef(r: ReplyTo, *, with_file: bool = True) -> bytes:
    """Outlook desktop, Rich Text format to an address it treats as Outlook: the file travels inside TNEF
    winmail.dat (application/ms-tnef); a text body comes first for other readers."""
    b = boundary(r.seed + "tnef", "----_=_NextPart_001_{}")[:52]
    files = [(r.reply_name, r.reply_file)] if with_file else []
    data = winmail_dat(f"RE: {r.request_subject}", "Voici notre réponse.", files)
    parts = [entity([("Content-Type", 'text/plain; charset="iso-8859-1"'),
                     ("Content-Transfer-Encoding", "quoted-printable")],
                    quoted_printable("Voici notre réponse.\r\n".encode("iso-8859-1"))),
             entity([("Content-Type", 'application/ms-tnef; name="winmail.dat"'),
                     ("Content-Disposition", 'attachment; filename="winmail.dat"'),
                     ("Content-Transfer-Encoding", "base64")], b64(data))]
    return entity(_top(r, f"RE: {r.request_subject}", _OUTLOOK, f'multipart/mixed;\r\n\tboundary="{b}"',
                       ("X-MS-TNEF-Correlator", "<00000000A1B2C3D4@erp.example.be>"), *_OUTLOOK_HEADERS),
                  multipart(b, parts, preamble=b"This is a multi-part message in MIME format."))


def outlook_2047_name(r: ReplyTo) -> bytes:
    """Outlook 2003/2007 style: a non-ASCII file name as an RFC 2047 encoded word inside the quoted
    parameter (what RFC 2047 section 5 forbids and compat32's get_filename() leaves encoded)."""
    b = boundary(r.seed + "o2047", "_007_{}_")[:48]
    name = encoded_word("Réponse ERP.txt", "iso-8859-1", "Q")
    part = entity([("Content-Type", f'text/plain;\r\n\tname="{name}"'),
                   ("Content-Disposition", f'attachment;\r\n\tfilename="{name}"'),
                   ("Content-Transfer-Encoding", "base64")], b64(r.reply_file))
    return entity(_top(r, f"RE: {r.request_subject}", ("X-Mailer", "Microsoft Office Outlook 12.0"),
                       f'multipart/mixed;\r\n\tboundary="{b}"'),
                  multipart(b, [_alternative(r, "Voir pièce jointe.\r\n\r\n" + _quote(r)), part]))


def outlook_web(r: ReplyTo) -> bytes:
    """Outlook on the web (Microsoft 365): alternative text and HTML, the file with Content-Description,
    size and dates in Content-Disposition, base64; no X-Mailer, Exchange's own headers."""
    b = boundary(r.seed + "owa", "_002_{}_")[:48]
    return entity(_top(r, f"RE: {r.request_subject}", None, f'multipart/mixed;\r\n\tboundary="{b}"',
                       ("x-ms-has-attach", "yes"), ("x-ms-exchange-organization-scl", "-1"), *_OUTLOOK_HEADERS),
                  multipart(b, [_alternative(r, "Bonjour,\r\nCi-joint.\r\n\r\n" + _quote(r)),
                                _outlook_file(r.reply_name, r.reply_file)]))


_APPLE = ("X-Mailer", "Apple Mail (2.3774.600.62)")


def apple_mail_inline(r: ReplyTo) -> bytes:
    """Apple Mail: the file inline (Content-Disposition: inline) with an RFC 2047 name in quotes, x-unix-mode,
    quoted-printable, and the text split into a part before and a part after it."""
    b = boundary(r.seed + "apple", "Apple-Mail={}")[:47]
    name = encoded_word("réponse ERP.txt", "utf-8", "Q")
    before = entity([("Content-Transfer-Encoding", "7bit"), ("Content-Type", "text/plain;\r\n\tcharset=us-ascii")],
                    b"Bonjour,\r\n\r\nVoici le fichier:\r\n")
    file = entity([("Content-Disposition", f'inline;\r\n\tfilename="{name}"'),
                   ("Content-Type", f'text/plain;\r\n\tx-unix-mode=0644;\r\n\tname="{name}"'),
                   ("Content-Transfer-Encoding", "quoted-printable")], quoted_printable(r.reply_file))
    after = entity([("Content-Transfer-Encoding", "quoted-printable"), ("Content-Type", "text/plain;\r\n\tcharset=utf-8")],
                   quoted_printable(f"\r\nCordialement\r\n\r\n> On 1 Dec 2026, at 10:02, {r.hub} wrote:\r\n"
                                    "> Demande de changement de tarif en pièce jointe.\r\n".encode()))
    return entity(_top(r, f"Re: {r.request_subject}", _APPLE, f'multipart/mixed;\r\n\tboundary="{b}"',
                       mime="1.0 (Mac OS X Mail 16.0 \\(3774.600.62\\))"), multipart(b, [before, file, after]))


def apple_mail_2231(r: ReplyTo) -> bytes:
    """Apple Mail, newer: the non-ASCII name in RFC 2231 form, in one piece (no continuations), inline."""
    b = boundary(r.seed + "apple2231", "Apple-Mail={}")[:47]
    file = entity([("Content-Disposition", f"inline;\r\n\t{rfc2231('filename', 'réponse ERP.txt')}"),
                   ("Content-Type", f"text/plain;\r\n\tx-unix-mode=0644;\r\n\t{rfc2231('name', 'réponse ERP.txt')}"),
                   ("Content-Transfer-Encoding", "base64")], b64(r.reply_file))
    body = entity([("Content-Transfer-Encoding", "7bit"), ("Content-Type", "text/plain;\r\n\tcharset=us-ascii")],
                  b"Bonjour,\r\n")
    return entity(_top(r, f"Re: {r.request_subject}", _APPLE, f'multipart/mixed;\r\n\tboundary="{b}"',
                       mime="1.0 (Mac OS X Mail 16.0 \\(3774.600.62\\))"), multipart(b, [body, file]))


_THUNDERBIRD = ("User-Agent", "Mozilla Thunderbird")


def thunderbird(r: ReplyTo) -> bytes:
    """Thunderbird: 8-bit flowed text; the file's name RFC 2047 in Content-Type, RFC 2231 with continuations
    in Content-Disposition; base64."""
    b = boundary(r.seed + "tb", "------------{}")[:36]
    long_name = "réponse de l'ERP belge au changement de tarif.txt"
    body = entity([("Content-Type", "text/plain; charset=UTF-8; format=flowed"), ("Content-Transfer-Encoding", "8bit")],
                  f"Bonjour,\r\n\r\nci-joint notre réponse.\r\n\r\nLe 01/12/2026 à 10:02, {r.hub} a écrit :\r\n"
                  f"> Demande de changement de tarif en pièce jointe.\r\n".encode())
    file = entity([("Content-Type", f'text/plain; charset=UTF-8;\r\n name="{encoded_word(long_name, "UTF-8", "Q")}"'),
                   ("Content-Disposition", f"attachment;\r\n {rfc2231('filename', long_name, 'UTF-8', 40)}"),
                   ("Content-Transfer-Encoding", "base64")], b64(r.reply_file))
    return entity(_top(r, f"Re: {r.request_subject}", _THUNDERBIRD, f'multipart/mixed; boundary="{b}"',
                       ("Content-Language", "fr")),
                  multipart(b, [body, file], preamble=b"This is a multi-part message in MIME format."))


def thunderbird_forward_attached(r: ReplyTo, forwarded: bytes) -> bytes:
    """Thunderbird "Forward as attachment": someone at the ERP forwards the ERP's own reply mail (`forwarded`,
    a whole message) to the hub as message/rfc822; the file is inside it."""
    b = boundary(r.seed + "tbfwd", "------------{}")[:36]
    note = entity([("Content-Type", "text/plain; charset=UTF-8; format=flowed"), ("Content-Transfer-Encoding", "7bit")],
                  b"Voir le message ci-joint, que le systeme n'a pas pu envoyer.\r\n")
    attached = entity([("Content-Type", 'message/rfc822; charset=UTF-8; name="Antwoord ERP.eml"'),
                       ("Content-Disposition", 'attachment; filename="Antwoord ERP.eml"'),
                       ("Content-Transfer-Encoding", "7bit")], forwarded)
    return entity(_top(r, f"Fwd: {r.request_subject}", _THUNDERBIRD, f'multipart/mixed; boundary="{b}"',
                       threaded=False), multipart(b, [note, attached], preamble=b"This is a multi-part message in MIME format."))


def gmail_web(r: ReplyTo) -> bytes:
    """Gmail web: multipart/mixed around multipart/alternative, the file's name as an RFC 2047 B-word in
    both name and filename, Content-ID and X-Attachment-Id."""
    outer, inner = boundary(r.seed + "gm1", "0000000000{}")[:28], boundary(r.seed + "gm2", "0000000000{}")[:28]
    name = encoded_word("réponse_ERP.txt", "UTF-8", "B")
    text = entity([("Content-Type", 'text/plain; charset="UTF-8"'), ("Content-Transfer-Encoding", "quoted-printable")],
                  quoted_printable("Bonjour,\r\nci-joint.\r\n".encode()))
    html = entity([("Content-Type", 'text/html; charset="UTF-8"'), ("Content-Transfer-Encoding", "quoted-printable")],
                  quoted_printable('<div dir="ltr">Bonjour,<br>ci-joint.</div>\r\n'.encode()))
    alt = entity([("Content-Type", f'multipart/alternative; boundary="{inner}"')], multipart(inner, [text, html]))
    file = entity([("Content-Type", f'text/plain; charset="ISO-8859-1"; name="{name}"'),
                   ("Content-Disposition", f'attachment; filename="{name}"'), ("Content-Transfer-Encoding", "base64"),
                   ("Content-ID", "<f_m4b9x1q70>"), ("X-Attachment-Id", "f_m4b9x1q70")], b64(r.reply_file))
    return entity(_top(r, f"Re: {r.request_subject}", None, f'multipart/mixed; boundary="{outer}"'),
                  multipart(outer, [alt, file]))


def gmail_app_octet_stream(r: ReplyTo) -> bytes:
    """The Gmail app sending a file it has no type for (saved without extension): application/octet-stream,
    attachment disposition, name without extension, base64."""
    outer = boundary(r.seed + "gapp", "0000000000{}")[:28]
    text = entity([("Content-Type", 'text/plain; charset="UTF-8"')], b"Envoye depuis mon telephone\r\n")
    name = r.reply_name.rsplit(".", 1)[0]
    file = entity([("Content-Type", f'application/octet-stream; name="{name}"'),
                   ("Content-Disposition", f'attachment; filename="{name}"'), ("Content-Transfer-Encoding", "base64"),
                   ("X-Attachment-Id", "f_m4b9y2k81"), ("Content-ID", "<f_m4b9y2k81>")], b64(r.reply_file))
    return entity(_top(r, f"Re: {r.request_subject}", None, f'multipart/mixed; boundary="{outer}"'),
                  multipart(outer, [text, file]))


def script_octet_stream(r: ReplyTo) -> bytes:
    """A scripted sender at the ERP built on Python's MIMEApplication defaults: application/octet-stream,
    no name, no Content-Disposition, after a short text part."""
    b = boundary(r.seed + "script", "==============={}==")[:40]
    text = entity([("Content-Type", 'text/plain; charset="us-ascii"'), ("MIME-Version", "1.0"),
                   ("Content-Transfer-Encoding", "7bit")], b"Automatic reply file.\r\n")
    file = entity([("Content-Type", "application/octet-stream"), ("MIME-Version", "1.0"),
                   ("Content-Transfer-Encoding", "base64")], b64(r.reply_file))
    return entity(_top(r, f"Re: {r.request_subject}", None, f'multipart/mixed; boundary="{b}"'),
                  multipart(b, [text, file]))


def whole_message_attachment(r: ReplyTo) -> bytes:
    """The mail is the file: its only part is text/plain with a name and attachment disposition (batch senders)."""
    fields = _top(r, f"RE: {r.request_subject}", None, f'text/plain; charset=iso-8859-1; name="{r.reply_name}"')
    fields += [("Content-Disposition", f'attachment; filename="{r.reply_name}"'), ("Content-Transfer-Encoding", "base64")]
    return entity(fields, b64(r.reply_file))


def eight_bit_inline(r: ReplyTo) -> bytes:
    """A client that sends text attachments as they are: 8bit transfer encoding, ISO-8859-1 bytes, CRLF
    (what an 8BITMIME path delivers unchanged, and a relay without 8BITMIME must re-encode)."""
    b = boundary(r.seed + "8bit", "=_{}")[:34]
    body = entity([("Content-Type", "text/plain; charset=us-ascii"), ("Content-Transfer-Encoding", "7bit")],
                  b"Voir fichier.\r\n")
    file = entity([("Content-Type", f'text/plain; charset=iso-8859-1; name="{r.reply_name}"'),
                   ("Content-Disposition", f'inline; filename="{r.reply_name}"'),
                   ("Content-Transfer-Encoding", "8bit")], r.reply_file)
    return entity(_top(r, f"RE: {r.request_subject}", None, f'multipart/mixed; boundary="{b}"'),
                  multipart(b, [body, file]))


SHAPES: dict[str, Callable[[ReplyTo], bytes]] = {
    "outlook-logo-first": outlook_logo_first, "outlook-reply-with-attachments": outlook_reply_with_attachments,
    "outlook-tnef": outlook_tnef, "outlook-2047-name": outlook_2047_name, "outlook-web": outlook_web,
    "apple-mail-inline": apple_mail_inline, "apple-mail-2231": apple_mail_2231, "thunderbird": thunderbird,
    "gmail-web": gmail_web, "gmail-app-octet-stream": gmail_app_octet_stream,
    "script-octet-stream": script_octet_stream, "whole-message-attachment": whole_message_attachment,
    "eight-bit-inline": eight_bit_inline,
}
