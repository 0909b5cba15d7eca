"""Pure pieces of the http adapter: path templates, query parameters, error texts and the mapping of
an HTTP status onto the error taxonomy. Other adapters (SOAP, SMTP, Power Sales) reuse `snippet` and
`parse_retry_after`."""

from __future__ import annotations

import codecs
import email.utils
import math
import re
import string
import time
from datetime import timezone
from typing import Any

import aiohttp
from yarl import URL

from engine.errors import TargetRejected, TargetServerError, TargetTimeout, Throttled, ValidationFailed

SNIPPET = 300
URL_KEY = "_url"  # reserved top-level body key: an absolute URL to call as given (a next-page link)


def http_url(text: str) -> str:
    """A URL from config that must be http(s) with a host (a base URL, a token URL); ValueError otherwise."""
    url = URL(text)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"expected an http:// or https:// URL with a host, got {text!r}")
    return text


def template_fields(template: str) -> list[str]:
    """Field names of a path template like `/contracts/{contract_id}`; ValueError if malformed."""
    names = []
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError(f"path template {template!r}: use plain {{field}} names, got {{{name}}}")
        names.append(name)
    return names


def query(endpoint: str, payload: Any, skip: list[str]) -> list[tuple[str, str]] | None:
    """A flat dict as query parameters; fields used in the path (and `_url`) are not repeated."""
    if payload is None:
        return None
    if not isinstance(payload, dict):
        raise ValidationFailed(
            f"{endpoint}: GET/DELETE sends the payload as query parameters; got {type(payload).__name__}")
    params = []
    for key, value in payload.items():
        if key in skip or key == URL_KEY or value is None:
            continue
        for item in value if isinstance(value, list) else (value,):
            if isinstance(item, dict | list):
                raise ValidationFailed(f"{endpoint}: query parameter {key!r} is nested; GET/DELETE sends flat ones")
            params.append((key, ("true" if item else "false") if isinstance(item, bool) else str(item)))
    return params


def text_of(resp: aiohttp.ClientResponse, body: bytes) -> str:
    return body.decode(resp.charset or "utf-8", errors="replace")


def is_xml(media_type: str) -> bool:
    """application/xml, text/xml and every +xml type (RFC 7303), e.g. application/atom+xml."""
    return media_type in ("application/xml", "text/xml") or media_type.endswith("+xml")


_BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"), (codecs.BOM_UTF8, "utf-8"),
         (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
_DECLARED = re.compile(rb"""\A\s*<\?xml\s[^>]*?\bencoding\s*=\s*["']([A-Za-z][A-Za-z0-9._-]*)["']""")
_DECLARATION = re.compile(r"\A\s*<\?xml\s[^>]*?\?>")


def xml_encoding(body: bytes, charset: str | None) -> tuple[str, int]:
    """(encoding, bytes to skip) of an XML answer: a byte order mark, else the Content-Type charset,
    else the XML declaration's encoding, else UTF-8 (RFC 7303 §3, XML 1.0 §4.3.3 and Appendix F)."""
    for bom, encoding in _BOMS:
        if body.startswith(bom):
            return encoding, len(bom)
    if charset:
        return charset, 0
    declared = _DECLARED.match(body[:512])
    return (declared.group(1).decode("ascii") if declared else "utf-8"), 0


def xml_text(body: bytes, charset: str | None) -> str:
    """An XML answer as text in the encoding it declares (see xml_encoding), without its XML
    declaration: the text is no longer bytes in that encoding, and lxml refuses a str that still says
    `encoding=…`. ValueError (LookupError, UnicodeDecodeError) when it is not what it declares."""
    encoding, skip = xml_encoding(body, charset)
    text = body[skip:].decode(encoding)  # strict: a wrong byte is the target's error, not ours to guess
    return _DECLARATION.sub("", text, count=1)


def snippet(text: str, limit: int = SNIPPET) -> str:
    """The start of a body for error texts, one line, at most about `limit` characters (see `bounded`)."""
    return bounded(" ".join(text.split()), limit)


_TRAIL = " \t\n;,|"  # separators left dangling at a cut
_BREAKS = frozenset(" \t\n<>;,|()[]{}\"'")  # not "=": a `key=value` pair stays whole


def bounded(text: str, limit: int) -> str:
    """`text` when it fits in `limit` characters; else its start, cut where a word or markup ends (never
    inside an identifier such as a transaction id) and told how much is left out, all within `limit`.
    Only a single word longer than most of `limit` is cut inside itself."""
    if len(text) <= limit:
        return text
    room = max(limit - len(f"… (+{len(text)} chars)"), 1)
    floor = room // 4
    at = room
    while at > floor and not (text[at - 1] in _BREAKS or text[at] in _BREAKS):
        at -= 1
    if at <= floor:
        at = room
    return f"{text[:at].rstrip(_TRAIL)}… (+{len(text) - at} chars)"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


def status_error(where: str, resp: aiohttp.ClientResponse, body: bytes) -> Exception:
    """Map a non-2xx answer onto the taxonomy."""
    status = resp.status
    text = f"{where} -> {status} {resp.reason or ''}".rstrip()
    detail = snippet(text_of(resp, body)) if body else ""
    if detail:
        text = f"{text}: {detail}"
    if status in (429, 503):
        return Throttled(text, retry_after=parse_retry_after(resp.headers.get("Retry-After")))
    if status == 408:
        return TargetTimeout(text)
    if status >= 500:
        return TargetServerError(text)
    if status < 400:
        location = resp.headers.get("Location")
        hint = f"redirect to {location}" if location else "redirect"
        return TargetRejected(f"{text} ({hint}; fix base_url or path)", status=status)
    return TargetRejected(text, status=status)
