"""How a Belgian flat file travels by mail: the token in the subject, the attachment's name and type.

Both ends agree on these so a reply can be matched even when a mail client drops In-Reply-To and
References: the correlation token is in the subject as `[PLU-BE:<token>]` (a client's "RE: " and
quoting keep it) and in the attached file's header.
"""

from __future__ import annotations

import re

ATTACHMENT_CONTENT_TYPE = "text/plain"
ATTACHMENT_CHARSET = "iso-8859-1"
_TAG = re.compile(r"\[PLU-BE:([A-Za-z0-9._-]{1,40})\]")


def subject_tag(token: str) -> str:
    """The subject fragment that carries a correlation token."""
    return f"[PLU-BE:{token}]"


def token_in_subject(subject: str | None) -> str | None:
    """The correlation token a subject carries (the last tag, if a client stacked several), or None."""
    found = _TAG.findall(subject or "")
    return found[-1] if found else None


def attachment_name(file_type: str, token: str) -> str:
    """The attached file's name, e.g. PLU_REQ_<token>.txt; the file's own header is what counts."""
    return f"PLU_{file_type}_{token}.txt"
