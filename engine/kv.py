"""The hub's KV buckets (idempotency keys, failure history, fallback answers, breaker state)."""

from __future__ import annotations

from typing import Any

from nats.js.api import KeyValueConfig
from nats.js.errors import BucketNotFoundError

from engine.trace_context import traced_kv


async def bucket(js: Any, name: str, ttl: float | None = None) -> Any:
    """Bind the bucket, creating it on first use (history 1; `ttl` expires keys). No
    limit_marker_ttl: nats-py 2.16 would then return expiry markers from get() (MEASURED.md). No
    allow_direct: in a cluster a direct get may be answered by a lagging replica, and the hub reads
    its claims and compare-and-set records right after writing them."""
    try:
        kv = await js.key_value(name)
    except BucketNotFoundError:
        kv = await js.create_key_value(KeyValueConfig(bucket=name, history=1, ttl=ttl))
    return traced_kv(kv, name)  # once tracing is on: its operations are spans of the current message
