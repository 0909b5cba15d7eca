"""Blanking secrets and personal data in SOAP bodies before they reach a debug log or an error text.

Well-formed XML is rewritten through lxml; HTML pages and broken XML fall back to a regex over start tags.
"""

from __future__ import annotations

import re

from lxml import etree

LOG_LIMIT = 8000  # characters of a redacted body in one debug line
REDACTED = "***"

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


def element_pattern(names: tuple[str, ...]) -> re.Pattern[str] | None:
    """A regex matching a start tag whose name contains one of `names`, and the text right after it."""
    if not names:
        return None
    alt = "|".join(re.escape(n) for n in names)
    return re.compile(rf"(<(?:[\w.-]+:)?[\w.-]*(?:{alt})[\w.-]*(?:\s[^>]*)?>)([^<]*)", re.IGNORECASE)


def redact(data: bytes | str, names: tuple[str, ...], secrets: tuple[str, ...] = (),
           pattern: re.Pattern[str] | None = None) -> str:
    """Blank the text of every element whose local name contains one of `names` (lowercase), and secrets.

    Well-formed XML is rewritten through lxml (nested text under a matching element is blanked too);
    anything else (HTML, broken XML) goes through a regex over start tags.
    """
    raw = data.encode() if isinstance(data, str) else data
    text: str | None = None
    if names and raw.lstrip().startswith(b"<"):
        try:
            root = etree.fromstring(raw, _PARSER)
        except etree.XMLSyntaxError:
            root = None
        if root is not None:
            for el in root.iter():
                if isinstance(el.tag, str) and any(n in etree.QName(el).localname.lower() for n in names):
                    for sub in el.iter():
                        if sub.text and sub.text.strip():
                            sub.text = REDACTED
                        if sub is not el and sub.tail and sub.tail.strip():
                            sub.tail = REDACTED
            text = etree.tostring(root, encoding="unicode")
    if text is None:
        text = raw.decode("utf-8", errors="replace")
        pattern = pattern or element_pattern(names)
        if pattern is not None:
            text = pattern.sub(lambda m: m.group(1) + (REDACTED if m.group(2).strip() else m.group(2)), text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text
