"""A received mail as its parts: every leaf with its decoded bytes, its type and its decoded file name.

Readers of the Belgian flat file go by content (docs/belgian-flat-file.md), so this module finds parts
wherever clients put them: attachment or inline, named or not, nested in multipart/*, inside a forwarded
message/rfc822, base64, quoted-printable or 8bit, and inside Outlook's TNEF winmail.dat.

File names: the stdlib parser with `policy.default` decodes RFC 2231 names, continuations included
(Thunderbird's `filename*0*=`), and RFC 2047 encoded words inside quotes (Gmail web, old Outlook, Apple
Mail), which `compat32`'s `get_filename()` leaves encoded. An encoded word *without* quotes is dropped by
`policy.default` (the name comes back None); that one is decoded here from the raw header.

Hostile mail: the parser and header access are guarded (any failure is an UnparseablePayload naming it),
the walk is iterative with a depth and a part limit, and nothing here trusts a declared length.
"""

from __future__ import annotations

import email
import email.header
import email.policy
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
    """Raw MIME bytes as a Message (policy.default); anything else, or a parser failure, is UnparseablePayload."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    if not isinstance(raw, (bytes, bytearray)):
        raise UnparseablePayload(f"expected a raw mail (bytes), got {type(raw).__name__}")
    try:
        return email.message_from_bytes(bytes(raw), policy=email.policy.default)
    except RecursionError:
        raise UnparseablePayload("the mail's MIME structure is nested too deep to read") from None
    except Exception as exc:  # the stdlib parser on hostile input: say so, never crash the step
        raise UnparseablePayload(f"the mail cannot be parsed as MIME: {type(exc).__name__}: {exc}") from None


def header(msg: Message, name: str) -> str:
    """A header's decoded text ('' when absent); the raw text when policy.default cannot parse it."""
    try:
        value = msg.get(name)
        return "" if value is None else " ".join(str(value).split())
    except Exception:
        for key, raw in msg.raw_items():
            if key.lower() == name.lower():
                return " ".join(str(raw).split())
        return ""


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
    return Part(number, _content_type(node), disposition, filename_of(node), data, charset)


def _content_type(node: Message) -> str:
    try:
        return node.get_content_type()
    except Exception:
        return "text/plain"


def filename_of(node: Message) -> str | None:
    """The part's file name, decoded (RFC 2231 and RFC 2047, quoted or not); None when it has none."""
    try:
        name = node.get_filename()
    except Exception:
        name = None
    if name:
        return _printable(str(name))
    for header_name, param in (("content-disposition", "filename"), ("content-type", "name")):
        raw = next((str(v) for k, v in node.raw_items() if k.lower() == header_name), None)
        if raw and "=?" in raw:
            legacy = email.message_from_string(f"Content-Type: text/plain; {raw.split(';', 1)[-1]}\n\n",
                                               policy=email.policy.compat32)
            value = legacy.get_param(param)
            if isinstance(value, str) and value:
                return _printable(_decode_words(value))
    return None


def _decode_words(value: str) -> str:
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except Exception:
        return value


def _printable(name: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in name)[:200]


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
