"""The attachments inside an Outlook TNEF stream (winmail.dat, application/ms-tnef), read within bounds.

Outlook and Exchange wrap a mail's attachments in TNEF when the mail is sent in Rich Text format
([MS-OXTNEF]). The stream is a signature, a key, then attributes: level (message or attachment), id,
length, data, a 16-bit checksum of the data. Each attachment starts with attAttachRendData; its file name
is attAttachTitle and its bytes attAttachData (PidTagAttachDataBinary), which is all the hub needs.

Why not tnefparse (PyPI, the one maintained Python decoder, last release 2021): on untrusted mail it is
unsafe. A 30-byte attMAPIProps attribute declaring 2**32-1 properties keeps it looping for minutes (one
logged warning per missing property), and an attachment attribute before attAttachRendData raises
UnboundLocalError. This reader walks the attributes once, every length checked against what is left,
and skips what it does not need (MAPI property blocks included). The tests decode the corpus's TNEF with
tnefparse too, so the shape written there is one an independent reader accepts.
"""

from __future__ import annotations

import struct

SIGNATURE = 0x223E9F78
SIGNATURE_BYTES = struct.pack("<I", SIGNATURE)
LVL_MESSAGE, LVL_ATTACHMENT = 0x01, 0x02
ATT_ATTACH_REND_DATA = 0x00069002
ATT_ATTACH_TITLE = 0x00018010
ATT_ATTACH_DATA = 0x0006800F
ATT_OEM_CODEPAGE = 0x00069007
_HEAD = struct.Struct("<BII")  # level, attribute id, length


class TnefError(ValueError):
    """A TNEF stream that cannot be read; the text says where."""


def is_tnef(data: bytes | None, content_type: str = "", filename: str | None = None) -> bool:
    """A part that is a TNEF stream: by its signature, or by how Outlook labels it."""
    return bool(data and data.startswith(SIGNATURE_BYTES)) or content_type in (
        "application/ms-tnef", "application/vnd.ms-tnef") or (filename or "").lower() == "winmail.dat"


def tnef_attachments(data: bytes) -> list[tuple[str | None, bytes]]:
    """(file name, bytes) of every attachment carried by value; TnefError when the stream is broken."""
    if len(data) < 6 or not data.startswith(SIGNATURE_BYTES):
        raise TnefError(f"not a TNEF stream: it starts with {bytes(data[:4])!r}, not the TNEF signature 78 9F 3E 22")
    offset, codepage = 6, "cp1252"
    found: list[list[bytes | str | None]] = []
    while offset < len(data):
        if len(data) - offset < _HEAD.size + 2:
            if not data[offset:].strip(b"\0"):
                break  # padding at the end
            raise TnefError(f"a TNEF attribute cut short at byte {offset} of {len(data)}")
        level, attribute, length = _HEAD.unpack_from(data, offset)
        start = offset + _HEAD.size
        end = start + length
        if end + 2 > len(data):
            raise TnefError(f"TNEF attribute 0x{attribute:08X} at byte {offset} declares {length} bytes; "
                            f"{max(len(data) - start - 2, 0)} are left")
        value = data[start:end]
        (checksum,) = struct.unpack_from("<H", data, end)
        if sum(value) & 0xFFFF != checksum:
            raise TnefError(f"TNEF attribute 0x{attribute:08X} at byte {offset}: checksum 0x{checksum:04X}, the data "
                            f"sums to 0x{sum(value) & 0xFFFF:04X}")
        if level == LVL_MESSAGE:
            if attribute == ATT_OEM_CODEPAGE and len(value) >= 4:
                codepage = f"cp{struct.unpack_from('<I', value)[0]}"
        elif level == LVL_ATTACHMENT:
            if attribute == ATT_ATTACH_REND_DATA:
                found.append([None, None])
            elif not found:
                raise TnefError(f"TNEF attachment attribute 0x{attribute:08X} at byte {offset} comes before the "
                                "attAttachRendData that must open every attachment")
            elif attribute == ATT_ATTACH_TITLE:
                found[-1][0] = _text(value, codepage)
            elif attribute == ATT_ATTACH_DATA:
                found[-1][1] = value
        else:
            raise TnefError(f"TNEF attribute at byte {offset} has level {level}; expected 1 (message) or 2 (attachment)")
        offset = end + 2
    return [(name, payload) for name, payload in found if isinstance(payload, bytes)]  # type: ignore[misc]


def _text(value: bytes, codepage: str) -> str:
    raw = value.split(b"\0", 1)[0]
    try:
        return raw.decode(codepage, "replace")
    except LookupError:
        return raw.decode("cp1252", "replace")
