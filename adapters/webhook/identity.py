"""An item's identity (its message id seed): the `item_id` template filled from the item, or a hash.

The template means what engine.subjects.render(..., lower=False) means (`{field}`, dotted for
nesting, case kept, KeyError naming a missing field), compiled once per flow: render() runs a regex
per item, which cost a third of a 500-reading batch's handling in bench/webhook_ingest.py.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

import orjson

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)\}")  # as engine.subjects


def content_hash(item: Any) -> str:
    """The same for the same JSON value whatever its key order: blake2b of its canonical (sorted-key) form."""
    return hashlib.blake2b(orjson.dumps(item, option=orjson.OPT_SORT_KEYS), digest_size=16).hexdigest()


def compile_identity(template: str | None) -> Callable[[Any], str]:
    """A function item → identity; raises KeyError(field) when the item lacks a field of the template."""
    if template is None:
        return content_hash
    parts: list[str | tuple[str, tuple[str, ...]]] = []
    at = 0
    for m in _PLACEHOLDER.finditer(template):
        if m.start() > at:
            parts.append(template[at:m.start()])
        parts.append((m.group(1), tuple(m.group(1).split("."))))
        at = m.end()
    if at < len(template):
        parts.append(template[at:])

    def identity(item: Any) -> str:
        out = []
        for part in parts:
            if isinstance(part, str):
                out.append(part)
                continue
            name, path = part
            value = item
            for key in path:
                if not isinstance(value, dict) or key not in value:
                    raise KeyError(name)
                value = value[key]
            out.append(str(value))
        return "".join(out)

    return identity
