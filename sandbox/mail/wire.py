"""Raw MIME written byte by byte, as the mail clients and servers in sandbox/mail/clients.py, gateways.py and
bounces.py write it: the stdlib's generator would normalise exactly the quirks those shapes stand for
(RFC 2047 inside a quoted file name, RFC 2231 continuations, Apple's inline disposition, odd boundaries).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from urllib.parse import quote

CRLF = b"\r\n"


def head(*fields: tuple[str, str]) -> bytes:
    """Header lines; a value may hold CRLF + whitespace (folded) already."""
    return b"".join(f"{name}: {value}".encode("utf-8") + CRLF for name, value in fields)


def entity(fields: Iterable[tuple[str, str]], body: bytes) -> bytes:
    """A MIME entity (or a whole message): header lines, a blank line, the body."""
    return head(*fields) + CRLF + body


def multipart(boundary: str, parts: Iterable[bytes], preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    """A multipart body: optional preamble, each part after its delimiter, the close delimiter."""
    out = preamble + (CRLF if preamble else b"")
    for part in parts:
        out += b"--" + boundary.encode() + CRLF + part + (b"" if part.endswith(CRLF) else CRLF)
    return out + b"--" + boundary.encode() + b"--" + CRLF + epilogue


def b64(data: bytes, width: int = 76) -> bytes:
    """Base64 in lines of `width` (RFC 2045 allows at most 76; Outlook and Gmail write 76, some 72)."""
    text = base64.b64encode(data)
    return b"".join(text[i:i + width] + CRLF for i in range(0, len(text), width))


def quoted_printable(data: bytes) -> bytes:
    """RFC 2045 quoted-printable of a text: each line end a hard CRLF, '=' and 8-bit bytes as =XX, trailing
    blanks encoded, lines soft-broken before 76 characters."""
    lines = data.replace(b"\r\n", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
        ended = True
    else:
        ended = False
    out = []
    for line in lines:
        encoded = []
        for i, byte in enumerate(line):
            plain = 33 <= byte <= 126 and byte != 61 or byte in (9, 32) and i < len(line) - 1
            encoded.append(chr(byte) if plain else f"={byte:02X}")
        text, row = "", ""
        for token in encoded:
            if len(row) + len(token) > 75:
                text += row + "=\r\n"
                row = ""
            row += token
        out.append((text + row).encode("ascii"))
    return CRLF.join(out) + (CRLF if ended else b"")


def encoded_word(text: str, charset: str = "utf-8", encoding: str = "B") -> str:
    """An RFC 2047 encoded word (=?charset?B?...?= or ?Q?)."""
    raw = text.encode(charset)
    if encoding.upper() == "B":
        return f"=?{charset}?B?{base64.b64encode(raw).decode()}?="
    body = "".join(chr(b) if (48 <= b <= 57 or 65 <= b <= 90 or 97 <= b <= 122 or b in b"!*+-/") else
                   "_" if b == 32 else f"={b:02X}" for b in raw)
    return f"=?{charset}?Q?{body}?="


def rfc2231(param: str, text: str, charset: str = "utf-8", chunk: int | None = None) -> str:
    """`param*=charset''pct-encoded`, or split into `param*0*=charset''...; param*1*=...` of about `chunk`
    encoded characters each (never cutting a character's %XX sequence)."""
    encoded = [quote(ch.encode(charset), safe="") for ch in text]
    if chunk is None:
        return f"{param}*={charset}''{''.join(encoded)}"
    pieces, row = [], ""
    for piece in encoded:
        if row and len(row) + len(piece) > chunk:
            pieces.append(row)
            row = ""
        row += piece
    pieces.append(row)
    return ";\r\n\t".join(f"{param}*{n}*={charset}''{p}" if n == 0 else f"{param}*{n}*={p}"
                          for n, p in enumerate(pieces))


def boundary(seed: str, style: str = "{}") -> str:
    """A deterministic boundary in a client's style, so corpus files are stable byte for byte."""
    return style.format(hashlib.sha1(seed.encode()).hexdigest())


def latin1_text(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("iso-8859-1")

