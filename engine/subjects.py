"""Subject rules of DESIGN.md: lower-case, dot-separated tokens; wildcards only where a pattern is
allowed; `{field}` placeholders in templates are filled from the payload at run time."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Annotated

from pydantic import AfterValidator

_TOKEN = re.compile(r"^[a-z0-9_-]+$")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)\}")


def subject_problem(subject: str, *, pattern: bool = False, template: bool = False) -> str | None:
    """Why `subject` is malformed, or None. `pattern` allows `*` and a final `>`."""
    if not isinstance(subject, str) or not subject:
        return "a subject must be a non-empty string"
    text = _PLACEHOLDER.sub("x", subject) if template else subject
    if "{" in text or "}" in text:
        return f"malformed subject {subject!r}: braces are only for {{field}} placeholders" + (
            "" if template else " (not allowed here)"
        )
    if text.startswith("$"):
        return f"malformed subject {subject!r}: '$' subjects belong to NATS itself"
    tokens = text.split(".")
    for i, token in enumerate(tokens):
        if pattern and token == "*":
            continue
        if pattern and token == ">" and i == len(tokens) - 1:
            continue
        if not _TOKEN.match(token):
            hint = " (wildcards are not allowed here)" if token in ("*", ">") else ""
            if token.lower() != token:
                hint = " (subjects are lower-case)"
            return f"malformed subject {subject!r}: token {token!r} is not [a-z0-9_-]+{hint}"
    return None


def _checked(*, pattern: bool = False, template: bool = False) -> AfterValidator:
    def check(value: str) -> str:
        if problem := subject_problem(value, pattern=pattern, template=template):
            raise ValueError(problem)
        return value

    return AfterValidator(check)


Subject = Annotated[str, _checked()]
SubjectPattern = Annotated[str, _checked(pattern=True)]     # may hold * and a final >
SubjectTemplate = Annotated[str, _checked(template=True)]   # may hold {field} placeholders


def placeholders(template: str) -> list[str]:
    """Field names used in a `{field}` template."""
    return _PLACEHOLDER.findall(template)


@lru_cache(maxsize=4096)
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts = []
    for token in pattern.split("."):
        if token == ">":
            parts.append(r"[^.]+(?:\.[^.]+)*")
        elif token == "*":
            parts.append(r"[^.]+")
        else:
            parts.append(re.escape(token))
    return re.compile(r"^" + r"\.".join(parts) + r"$")


def matches(pattern: str, subject: str) -> bool:
    """NATS wildcard match of a concrete subject (or a template with placeholders filled)."""
    return bool(_pattern_regex(pattern).match(subject))


def pattern_covers(outer: str, inner: str) -> bool:
    """True when every subject matched by `inner` is matched by `outer` (both may have wildcards)."""
    o, i = outer.split("."), inner.split(".")
    for n, tok in enumerate(o):
        if tok == ">":
            return n < len(i)
        if n >= len(i):
            return False
        if i[n] == ">":
            return False
        if tok != "*" and (tok != i[n]):
            return False
    return len(o) == len(i)


def patterns_overlap(a: str, b: str) -> bool:
    """True when some subject matches both patterns (streams may not overlap in NATS)."""
    x, y = a.split("."), b.split(".")
    for n in range(max(len(x), len(y))):
        tx = x[n] if n < len(x) else None
        ty = y[n] if n < len(y) else None
        if tx == ">" or ty == ">":
            return tx is not None and ty is not None
        if tx is None or ty is None:
            return False
        if tx != ty and tx != "*" and ty != "*":
            return False
    return True


def render(template: str, payload: object, *, lower: bool = True) -> str:
    """Fill `{field}` (dotted for nesting) from a JSON object; KeyError names the missing field.

    Values are lower-cased: subjects and endpoint names are lower-case, payloads say `DE`. Keys
    (`lower=False`) keep their case: `A1` and `a1` are two contracts. The template is split once
    (`_pieces`): a pull renders a subject and an id for every item of every page."""
    if "{" not in template:
        return template
    literals, fields = _pieces(template)
    out = [literals[0]]
    for (name, path), literal in zip(fields, literals[1:]):
        value: object = payload
        for part in path:
            if not isinstance(value, dict) or part not in value:
                raise KeyError(name)
            value = value[part]
        text = str(value)
        out.append(text.lower() if lower else text)
        out.append(literal)
    return "".join(out)


@lru_cache(maxsize=4096)
def _pieces(template: str) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The literal text around the placeholders, and each placeholder's name and path."""
    parts = _PLACEHOLDER.split(template)
    return parts[0::2], [(name, name.split(".")) for name in parts[1::2]]
