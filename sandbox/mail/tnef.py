"""A TNEF stream (winmail.dat) as Outlook writes one for a Rich Text mail ([MS-OXTNEF] 2.1.3): signature,
legacy key, attTnefVersion, attOemCodepage, attMessageClass, the body, then per attachment attAttachRendData,
attAttachTitle and attAttachData. Each attribute: level, id, length, data, 16-bit sum of the data.
The corpus's TNEF is also read by tnefparse in the tests, so this writer is checked by a reader we did not write.
"""

from __future__ import annotations

import struct

SIGNATURE = 0x223E9F78
LVL_MESSAGE, LVL_ATTACHMENT = 0x01, 0x02
ATT_TNEF_VERSION = 0x00089006
ATT_OEM_CODEPAGE = 0x00069007
ATT_MESSAGE_CLASS = 0x00078008
ATT_SUBJECT = 0x00018004
ATT_BODY = 0x0002800C
ATT_ATTACH_REND_DATA = 0x00069002
ATT_ATTACH_TITLE = 0x00018010
ATT_ATTACH_DATA = 0x0006800F


def attribute(level: int, attribute_id: int, data: bytes) -> bytes:
    return struct.pack("<BII", level, attribute_id, len(data)) + data + struct.pack("<H", sum(data) & 0xFFFF)


def winmail_dat(subject: str, body: str, attachments: list[tuple[str, bytes]], key: int = 0x0A3E) -> bytes:
    """The stream Outlook attaches as winmail.dat (application/ms-tnef) for a Rich Text mail."""
    out = struct.pack("<IH", SIGNATURE, key)
    out += attribute(LVL_MESSAGE, ATT_TNEF_VERSION, struct.pack("<I", 0x00010000))
    out += attribute(LVL_MESSAGE, ATT_OEM_CODEPAGE, struct.pack("<II", 1252, 0))
    out += attribute(LVL_MESSAGE, ATT_MESSAGE_CLASS, b"IPM.Microsoft Mail.Note\0")
    out += attribute(LVL_MESSAGE, ATT_SUBJECT, subject.encode("cp1252", "replace") + b"\0")
    out += attribute(LVL_MESSAGE, ATT_BODY, body.encode("cp1252", "replace") + b"\0")
    for name, data in attachments:
        # RENDDATA: atyp 1 (file), position 0xFFFFFFFF (not rendered in the text), no width/height, flags 0
        out += attribute(LVL_ATTACHMENT, ATT_ATTACH_REND_DATA, struct.pack("<HIHHI", 1, 0xFFFFFFFF, 0, 0, 0))
        out += attribute(LVL_ATTACHMENT, ATT_ATTACH_TITLE, name.encode("cp1252", "replace") + b"\0")
        out += attribute(LVL_ATTACHMENT, ATT_ATTACH_DATA, data)
    return out
