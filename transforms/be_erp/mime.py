"""A received mail as its parts: every leaf with its decoded bytes, its type and its decoded file name.

Readers of the Belgian flat file go by content (docs/belgian-flat-file.md), so this module finds parts
wherever clients put them: attachment or inline, named or not, nested in multipart/*, inside a forwarded
message/rfc822, base64, quoted-printable or 8bit, and inside Outlook's TNEF winmail.dat.

File names: RFC 2231 (Thunderbird's `filename*0*=` continuations, Apple Mail's `filename*=utf-8''...`) is
decoded by the stdlib's get_filename(); RFC 2047 encoded words in a name (Gmail web, old Outlook, Apple
Mail), which get_filename() leaves encoded under compat32, are decoded here with email.header, quoted or
not. `policy.default` does the first two right too but drops an unquoted encoded word (None), and its
header objects cost ~20x compat32's strings: parsing with it made the reader 0.05x of a bare stdlib parse
(bench/mail_parse.py), so the mail is parsed with compat32 and names are decoded explicitly
(tests/test_be_mail_corpus.py checks we agree with policy.default wherever it gives a name).

Hostile mail: the parser and header access are guarded (any failure is an UnparseablePayload naming it),
the walk is iterative with a depth and a part limit, and nothing here trusts a declared length.
"""

from __future__ import annotations

import email
import email.header
import email.policy
import email.utils
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

from engine.errors import UnparseablePayload
from transforms.be_erp.tnef import TnefError, is_tnef, tnef_attachments

MAX_DEPTH = 24     # multipart levels; real clients nest 4 or 5, a forward of a forward 10
MAX_PARTS = 400    # leaf parts looked at in one mail


@dataclass
class Part:
    """One leaf of the mail (or one file inside a TNEF stream), as ops need to hear about it."""

    number: str                      # IMAP-style: "2", "1.2", "3.1.2"; "2/tnef:1" inside a winmail.dat
    content_type: str
    disposition: str | None
    filename: str | None
    data: bytes
    charset: str | None = None
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """`part 2 (text/plain, attachment 'PLU_RSP_x.txt')`."""
        bits = [self.content_type]
        if self.disposition or self.filename:
            bits.append(" ".join(b for b in (self.disposition, repr(self.filename) if self.filename else None) if b))
        return f"part {self.number} ({', '.join(bits)})"

    def opening(self, limit: int = 24) -> str:
        """What the part starts with, as an error message shows it."""
        if not self.data:
            return "nothing (an empty part)"
        head = self.data[:limit]
        return repr(head) + ("..." if len(self.data) > limit else "")


def parse_mail(raw: Any) -> Message:
    """Raw MIME bytes as a Message (compat32); anything else, or a parser failure, is UnparseablePayload."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    if not isinstance(raw, (bytes, bytearray)):
        raise UnparseablePayload(f"expected a raw mail (bytes), got {type(raw).__name__}")
    try:
        return email.message_from_bytes(bytes(raw), policy=email.policy.compat32)
    except RecursionError:
        raise UnparseablePayload("the mail's MIME structure is nested too deep to read") from None
    except Exception as exc:  # the stdlib parser on hostile input: say so, never crash the step
        raise UnparseablePayload(f"the mail cannot be parsed as MIME: {type(exc).__name__}: {exc}") from None


def header(msg: Message, name: str) -> str:
    """A header's text, RFC 2047 words decoded, whitespace folded ('' when absent)."""
    try:
        value = msg.get(name)
    except Exception:
        return ""
    if value is None:
        return ""
    text = str(value)
    return clean(" ".join((_decode_words(text) if "=?" in text else text).split()))


def clean(text: str) -> str:
    """Valid Unicode for JSON and logs: raw 8-bit header bytes (kept as surrogates by the parser) become U+FFFD."""
    try:
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        data = text.encode("utf-8", "replace")
    return data.decode("utf-8", "replace")


def leaves(msg: Message) -> list[Part]:
    """Every leaf part, depth first in mail order, forwarded messages and TNEF attachments included."""
    out: list[Part] = []
    stack: list[tuple[Message, str, int]] = [(msg, "", 0)]
    while stack:
        node, number, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise UnparseablePayload(f"part {number or '1'} is nested {depth} levels deep; the hub reads at most "
                                     f"{MAX_DEPTH} (a mail client nests 4 or 5)")
        children = _children(node)
        if children is not None:
            prefix = f"{number}." if number else ""
            if node.get_content_maintype() == "message":  # an attached mail: its body is its only child
                stack.extend(reversed([(c, number or "1", depth + 1) for c in children]))
            else:
                stack.extend(reversed([(c, f"{prefix}{i}", depth + 1) for i, c in enumerate(children, 1)]))
            continue
        part = _leaf(node, number or "1")
        out.append(part)
        if is_tnef(part.data, part.content_type, part.filename):
            out.extend(_tnef_parts(part))
        if len(out) > MAX_PARTS:
            raise UnparseablePayload(f"the mail has more than {MAX_PARTS} parts; the hub reads at most that many")
    return out


def _children(node: Message) -> list[Message] | None:
    try:
        if not node.is_multipart():
            return None
        payload = node.get_payload()
    except Exception:
        return None
    kids = [p for p in payload if isinstance(p, Message)] if isinstance(payload, list) else []
    if node.get_content_type() in ("message/delivery-status", "message/global-delivery-status"):
        return None  # header blocks, not parts: the bounce reader reads them
    return kids


def _leaf(node: Message, number: str) -> Part:
    try:
        data = node.get_payload(decode=True)
    except Exception:
        data = None
    if not isinstance(data, bytes):
        data = b""
    try:
        disposition = node.get_content_disposition()
    except Exception:
        disposition = None
    try:
        charset = node.get_content_charset()
    except Exception:
        charset = None
    return Part(number, clean(_content_type(node)), clean(disposition) if disposition else None, filename_of(node),
                data, clean(charset) if charset else None)


def _content_type(node: Message) -> str:
    try:
        return node.get_content_type()
    except Exception:
        return "text/plain"


def filename_of(node: Message) -> str | None:
    """The part's file name, decoded (RFC 2231, and RFC 2047 quoted or not); None when it has none."""
    try:
        name = node.get_filename() or node.get_param("name")
    except Exception:
        return None
    if isinstance(name, tuple):  # an RFC 2231 `name*` the stdlib hands back undecoded
        name = email.utils.collapse_rfc2231_value(name)
    if not isinstance(name, str) or not name:
        return None
    return _printable(_decode_words(name) if "=?" in name else name)


def _decode_words(value: str) -> str:
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except Exception:  # an unknown charset, broken base64: show it as it came
        return value


def _printable(name: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in clean(name))[:200]


def _tnef_parts(part: Part) -> list[Part]:
    """The files inside a winmail.dat, as parts of their own; a broken stream is noted on the part."""
    try:
        files = tnef_attachments(part.data)
    except TnefError as exc:
        part.notes.append(str(exc))
        return []
    if not files:
        part.notes.append("the TNEF stream carries no attached file")
    return [Part(f"{part.number}/tnef:{i}", "application/octet-stream", "attachment", name, data,
                 notes=[f"inside the TNEF {part.filename or 'winmail.dat'} of part {part.number}"])
            for i, (name, data) in enumerate(files, 1)]
